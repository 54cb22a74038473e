//! The fused CPU kernel of the KD loss: values and analytic gradients of every
//! row in three passes over the row, with no `[batch, classes]` temporaries
//! besides the gradients it returns.
//!
//! Per row, with `a = (v − max v)/T`, `b = (z − max z)/T`, `c = z − max z`:
//! - pass 1: `max z`, `max v`;
//! - pass 2: `e^a`, `e^b`, `e^c` into per-thread scratch, their sums, and
//!   `Σ e^a·(a − b)` (skipping classes the teacher gives probability 0);
//! - then `KL = Σ e^a(a − b)/Σe^a − log Σe^a + log Σe^b`,
//!   `CE = log Σe^c − c_y`;
//! - pass 3: each requested gradient `w_s·(f/T)(q − p) + w_h·(softmax(z) − onehot)`
//!   with `f` the soft factor (T² or 1).
//!
//! `exp` is a branch-free polynomial (Cephes' `expf`, about 1 ulp on the range
//! used here) that the compiler vectorises; sums are accumulated in f64.

/// Rows below this many elements in total are done on the calling thread: a
/// thread costs more than the work.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

use super::FusedSpec;

/// What one call of the kernel works on: the settings, the labels, and the
/// gradients asked for.
#[derive(Clone, Copy)]
struct Job<'a> {
    classes: usize,
    spec: &'a FusedSpec,
    /// Labels, one per row, already checked to lie in `0..classes`; `None` when
    /// there is no hard term.
    targets: Option<&'a [i64]>,
    /// For each gradient to produce, the weights `(w_soft, w_hard)` of
    /// `∂soft_row/∂z` and `∂hard_row/∂z` in it: `spec.weights`, or none when
    /// no gradient is needed.
    gradient_weights: &'a [(f64, f64)],
}

/// The kernel's results for a block of rows.
pub(crate) struct KernelOutput {
    /// `soft_factor · KL(p‖q)` per row.
    pub soft_rows: Vec<f32>,
    /// Cross-entropy per row (empty without targets).
    pub hard_rows: Vec<f32>,
    /// One `[rows × classes]` buffer per entry of `gradient_weights`.
    pub gradients: Vec<Vec<f32>>,
}

/// Runs the kernel over row-major `student` and `teacher` logits; the
/// gradients of `spec.weights`' columns too when `with_gradients`.
pub(crate) fn kd_rows(
    student: &[f32],
    teacher: &[f32],
    classes: usize,
    targets: Option<&[i64]>,
    spec: &FusedSpec,
    with_gradients: bool,
) -> KernelOutput {
    let spec = &Job {
        classes,
        spec,
        targets,
        gradient_weights: if with_gradients { &spec.weights } else { &[] },
    };
    let rows = student.len() / classes;
    let n_grads = spec.gradient_weights.len();
    let mut out = KernelOutput {
        soft_rows: vec![0.0; rows],
        hard_rows: if spec.targets.is_some() {
            vec![0.0; rows]
        } else {
            Vec::new()
        },
        gradients: (0..n_grads).map(|_| vec![0.0; rows * classes]).collect(),
    };
    let rows_per_thread = rows.div_ceil(thread_count(rows, classes));

    // Split every output into per-thread blocks of whole rows.
    let mut soft_blocks: Vec<&mut [f32]> = out.soft_rows.chunks_mut(rows_per_thread).collect();
    let mut hard_blocks: Vec<&mut [f32]> = if out.hard_rows.is_empty() {
        Vec::new()
    } else {
        out.hard_rows.chunks_mut(rows_per_thread).collect()
    };
    let mut grad_blocks: Vec<Vec<&mut [f32]>> =
        (0..soft_blocks.len()).map(|_| Vec::new()).collect();
    for gradient in out.gradients.iter_mut() {
        for (block, chunk) in gradient.chunks_mut(rows_per_thread * classes).enumerate() {
            grad_blocks[block].push(chunk);
        }
    }

    let single_block = soft_blocks.len() == 1;
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let mut hard_iter = hard_blocks.iter_mut();
        for (block, (soft, grads)) in soft_blocks
            .iter_mut()
            .zip(grad_blocks.iter_mut())
            .enumerate()
        {
            let first = block * rows_per_thread;
            let count = soft.len();
            let range = first * classes..(first + count) * classes;
            let job = RowBlock {
                student: &student[range.clone()],
                teacher: &teacher[range],
                targets: spec.targets.map(|t| &t[first..first + count]),
                soft,
                hard: hard_iter.next().map(|h| &mut **h),
                grads: grads.iter_mut().map(|g| &mut **g).collect(),
            };
            if single_block {
                job.run(spec);
            } else {
                handles.push(scope.spawn(move || job.run(spec)));
            }
        }
        for handle in handles {
            handle.join().expect("kd kernel thread panicked");
        }
    });
    out
}

/// Threads for `rows × classes` elements: one below [`PARALLEL_MIN_ELEMENTS`],
/// else every core (at most one per row).
fn thread_count(rows: usize, classes: usize) -> usize {
    if rows * classes < PARALLEL_MIN_ELEMENTS {
        return 1;
    }
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, rows.max(1))
}

/// The backward pass: `Σ_k upstream[b, k] · G_k[b, :]` for row-major
/// `[rows, classes]` buffers `G_k` and `upstream` `[rows, K]`, written over the
/// first buffer (no new `[rows, classes]` allocation).
pub(crate) fn weighted_gradient(
    mut buffers: Vec<Vec<f32>>,
    upstream: &[f32],
    classes: usize,
) -> Vec<f32> {
    let columns = buffers.len();
    let rows = upstream.len() / columns;
    let mut out = buffers.remove(0);
    let rows_per_thread = rows.div_ceil(thread_count(rows, classes)).max(1);
    std::thread::scope(|scope| {
        for (block, chunk) in out.chunks_mut(rows_per_thread * classes).enumerate() {
            let others = &buffers;
            let first_row = block * rows_per_thread;
            let mut job = move || {
                for (r, g) in chunk.chunks_mut(classes).enumerate() {
                    let row = first_row + r;
                    let weights = &upstream[row * columns..(row + 1) * columns];
                    let range = row * classes..(row + 1) * classes;
                    g.iter_mut().for_each(|x| *x *= weights[0]);
                    for (other, &w) in others.iter().zip(&weights[1..]) {
                        for (x, &y) in g.iter_mut().zip(&other[range.clone()]) {
                            *x += w * y;
                        }
                    }
                }
            };
            if rows_per_thread >= rows {
                job();
            } else {
                scope.spawn(job);
            }
        }
    });
    out
}

/// A block of consecutive rows and the output slices they write.
struct RowBlock<'a> {
    student: &'a [f32],
    teacher: &'a [f32],
    targets: Option<&'a [i64]>,
    soft: &'a mut [f32],
    hard: Option<&'a mut [f32]>,
    grads: Vec<&'a mut [f32]>,
}

impl RowBlock<'_> {
    /// Processes every row of the block, with the widest vector instructions
    /// this CPU has. The variants differ only in how the compiler vectorises the
    /// same code (it contracts nothing into FMAs), so their results are identical.
    fn run(self, spec: &Job) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F, checked just above.
                return unsafe { self.run_avx512(spec) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { self.run_avx2(spec) };
            }
        }
        self.run_rows(spec)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn run_avx512(self, spec: &Job) {
        self.run_rows(spec)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn run_avx2(self, spec: &Job) {
        self.run_rows(spec)
    }

    #[inline(always)]
    fn run_rows(mut self, spec: &Job) {
        let classes = spec.classes;
        let settings = spec.spec;
        let inv_t = (1.0 / settings.temperature) as f32;
        let inv_t_teacher = (1.0 / settings.teacher_temperature) as f32;
        let unit_temperature = settings.temperature == 1.0;
        let want_hard = spec.targets.is_some();
        let mut exp_teacher = vec![0.0f32; classes];
        let mut exp_student = vec![0.0f32; classes];
        let mut cross_terms = vec![0.0f32; classes];
        let mut exp_student_t1 = vec![
            0.0f32;
            if want_hard && !unit_temperature {
                classes
            } else {
                0
            }
        ];

        for row in 0..self.soft.len() {
            let z = &self.student[row * classes..(row + 1) * classes];
            let v = &self.teacher[row * classes..(row + 1) * classes];
            let max_z = max(z);
            let max_v = max(v);

            // Pass 2: exponentials (element-wise, so it vectorises), then the sums
            // in independent lanes (a single running sum would serialise the loop).
            for ((((&zi, &vi), ep), eq), term) in z
                .iter()
                .zip(v)
                .zip(exp_teacher.iter_mut())
                .zip(exp_student.iter_mut())
                .zip(cross_terms.iter_mut())
            {
                let a = (vi - max_v) * inv_t_teacher;
                let b = (zi - max_z) * inv_t;
                let ea = exp(a);
                *ep = ea;
                *eq = exp(b);
                // 0·log 0 = 0: a class the teacher rules out contributes nothing.
                *term = if ea > 0.0 { ea * (a - b) } else { 0.0 };
            }
            let sum_p = sum(&exp_teacher);
            let sum_q = sum(&exp_student);
            let cross = sum(&cross_terms);
            let kl = cross / sum_p - sum_p.ln() + sum_q.ln();
            self.soft[row] = (settings.soft_factor * kl) as f32;

            let mut sum_1 = sum_q;
            if want_hard && !unit_temperature {
                for (&zi, e1) in z.iter().zip(exp_student_t1.iter_mut()) {
                    *e1 = exp(zi - max_z);
                }
                sum_1 = sum(&exp_student_t1);
            }
            let label = self.targets.map(|t| t[row] as usize);
            if let (Some(hard), Some(y)) = (self.hard.as_deref_mut(), label) {
                hard[row] = (sum_1.ln() - (z[y] - max_z) as f64) as f32;
            }

            // Pass 3: gradients.
            let rp = (1.0 / sum_p) as f32;
            let rq = (1.0 / sum_q) as f32;
            let r1 = (1.0 / sum_1) as f32;
            let exp_t1: &[f32] = if unit_temperature {
                &exp_student
            } else {
                &exp_student_t1
            };
            for (grad, &(ws, wh)) in self.grads.iter_mut().zip(spec.gradient_weights) {
                let g = &mut grad[row * classes..(row + 1) * classes];
                let soft_coef = (ws * settings.soft_factor / settings.temperature) as f32;
                let hard_coef = wh as f32;
                if want_hard && hard_coef != 0.0 {
                    for (((gi, &ep), &eq), &e1) in
                        g.iter_mut().zip(&exp_teacher).zip(&exp_student).zip(exp_t1)
                    {
                        *gi = soft_coef * (eq * rq - ep * rp) + hard_coef * e1 * r1;
                    }
                    if let Some(y) = label {
                        g[y] -= hard_coef;
                    }
                } else {
                    for ((gi, &ep), &eq) in g.iter_mut().zip(&exp_teacher).zip(&exp_student) {
                        *gi = soft_coef * (eq * rq - ep * rp);
                    }
                }
            }
        }
    }
}

/// Sum of a slice in f64, accumulated in 8 independent lanes so it vectorises.
fn sum(x: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += v as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    lanes.iter().sum::<f64>() + tail
}

/// Largest value of a slice (`−inf` if empty), in 8 independent lanes so that
/// the loop vectorises.
fn max(x: &[f32]) -> f32 {
    let pick = |a: f32, b: f32| if b > a { b } else { a };
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = pick(*l, v);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| pick(m, v));
    lanes.iter().fold(tail, |m, &v| pick(m, v))
}

/// `e^x` for `x ≤ 0` (the kernel only exponentiates shifted logits), `−inf` → 0.
///
/// Cephes `expf`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-5 polynomial
/// for `e^r`, and `2^n` built in the exponent bits. Rounding uses the 1.5·2²³
/// trick instead of `floor`, which baseline x86-64 cannot vectorise. Below
/// `−87.3` (where f32 goes subnormal) it returns 0.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    const LOWEST: f32 = -87.336_55;
    let clamped = if x < LOWEST { LOWEST } else { x };
    let shifted = clamped * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r2 + r + 1.0;
    // `shifted` holds n in its low mantissa bits (offset by 2^22): reading n from
    // the bits avoids a float-to-int conversion, which does not vectorise.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    // NaN compares false and stays NaN through the polynomial.
    if x < LOWEST { 0.0 } else { e_r * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial exp against the standard library over the range it serves.
    #[test]
    fn exp_is_accurate_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "relative error {worst:e}"
        );
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
    }

    /// One row, checked against the definitions in f64.
    #[test]
    fn single_row_matches_definition() {
        let z = [1.0f32, -0.5, 2.0, 0.25];
        let v = [0.5f32, 1.5, -1.0, 0.0];
        let t = 2.0;
        let spec = FusedSpec {
            temperature: t,
            teacher_temperature: t,
            soft_factor: t * t,
            weights: vec![(0.9, 0.1)],
        };
        let out = kd_rows(&z, &v, 4, Some(&[2]), &spec, true);
        let softmax = |x: &[f32], t: f64| -> Vec<f64> {
            let e: Vec<f64> = x.iter().map(|&x| (x as f64 / t).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|e| e / s).collect()
        };
        let (p, q, q1) = (softmax(&v, t), softmax(&z, t), softmax(&z, 1.0));
        let kl: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
        assert!((out.soft_rows[0] as f64 - t * t * kl).abs() < 1e-6);
        assert!((out.hard_rows[0] as f64 + q1[2].ln()).abs() < 1e-6);
        for i in 0..4 {
            let onehot = if i == 2 { 1.0 } else { 0.0 };
            let want = 0.9 * t * (q[i] - p[i]) + 0.1 * (q1[i] - onehot);
            assert!((out.gradients[0][i] as f64 - want).abs() < 1e-6, "{i}");
        }
    }

    /// Runs one block of rows through `variant`; returns (soft, hard, gradient).
    fn run_block(
        variant: impl FnOnce(RowBlock, &Job),
        z: &[f32],
        v: &[f32],
        spec: &Job,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let rows = z.len() / spec.classes;
        let (mut soft, mut hard, mut grad) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; z.len()]);
        let block = RowBlock {
            student: z,
            teacher: v,
            targets: spec.targets,
            soft: &mut soft,
            hard: Some(&mut hard),
            grads: vec![&mut grad],
        };
        variant(block, spec);
        (soft, hard, grad)
    }

    /// The AVX2 and AVX-512 builds of the row loop give exactly the baseline
    /// build's bits (when this CPU has them; the baseline always runs).
    #[test]
    fn vector_widths_agree_bitwise() {
        // 37 classes: not a multiple of any vector width, so tails are exercised;
        // one teacher row rules a class out (−inf).
        let (rows, classes) = (5, 37);
        let z: Vec<f32> = (0..rows * classes)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) * 0.37)
            .collect();
        let mut v: Vec<f32> = (0..rows * classes)
            .map(|i| ((i * 104_729 % 97) as f32 - 48.0) * 0.21)
            .collect();
        v[3] = f32::NEG_INFINITY;
        let targets = [0, 36, 5, 17, 2];
        let settings = FusedSpec {
            temperature: 3.0,
            teacher_temperature: 3.0,
            soft_factor: 9.0,
            weights: vec![(0.7, 0.3)],
        };
        let spec = Job {
            classes,
            spec: &settings,
            targets: Some(&targets),
            gradient_weights: &settings.weights,
        };
        let baseline = run_block(|b, s| b.run_rows(s), &z, &v, &spec);
        assert!(baseline.2.iter().all(|g| g.is_finite()));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present (checked).
                let avx2 = run_block(|b, s| unsafe { b.run_avx2(s) }, &z, &v, &spec);
                assert_eq!(avx2, baseline);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is present (checked).
                let avx512 = run_block(|b, s| unsafe { b.run_avx512(s) }, &z, &v, &spec);
                assert_eq!(avx512, baseline);
            }
        }
    }

    /// The backward pass against a hand-worked case: two rows, two columns.
    #[test]
    fn weighted_gradient_combines_columns_per_row() {
        let g0 = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let g1 = vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0];
        // Row 0: 0.5·g0 + 0.1·g1; row 1: 2·g0 − 1·g1.
        let upstream = [0.5, 0.1, 2.0, -1.0];
        let got = weighted_gradient(vec![g0, g1], &upstream, 3);
        assert_eq!(got, vec![1.5, 3.0, 4.5, -32.0, -40.0, -48.0]);
    }
}
