//! The fused CPU kernel of the losses: values and analytic gradients of every
//! row, for every divergence (dense or top-k teacher) and for DKD, with no
//! `[batch, classes]` temporaries besides the gradients it returns.
//!
//! One row loop serves every divergence: the divergence is a plug-in
//! ([`super::pointwise`]) giving per class its value term `t` and gradient
//! factor `h = q·∂D/∂q`; the loop does the rest. Per row, with
//! `a = (v − max v)/T_v`, `b = (z − max z)/T`:
//! - pass 1: `max z`, `max v`;
//! - pass 2: `e^a`, `e^b` into per-thread scratch and their sums `S_p`, `S_q`;
//! - pass 3: `p = e^a/S_p`, `log p = a − ln S_p` (and the same for `q`), the
//!   plug-in's `t` and `h`; the soft value is `f · Σ t` (`f` = T² or 1);
//! - the hard term `CE = ln Σ e^{z − max z} − (z_y − max z)` (at T = 1);
//! - pass 4: each requested gradient
//!   `w_s·(f/T)(h − q Σh) + w_h·(softmax(z) − onehot)`.
//!
//! A top-k teacher runs the plug-in over its `k + 1` buckets instead
//! ([`top_k_terms`]); DKD has its own row ([`dkd_row`]). `exp` and `ln` are
//! branch-free polynomials ([`super::math`]) that the compiler vectorises; sums
//! are accumulated in f64.

/// Rows below this many elements in total are done on the calling thread: a
/// thread costs more than the work.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

use super::math::exp;
use super::pointwise::{Plugin, Pointwise, kl_term, with_plugin};
use super::{FusedLoss, FusedSpec};

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
    /// The soft term's divergence.
    plugin: Plugin,
}

/// The kernel's results for a block of rows.
pub(crate) struct KernelOutput {
    /// `soft_factor · D(p‖q)` per row (DKD: `soft_factor · TCKD`).
    pub soft_rows: Vec<f32>,
    /// Cross-entropy per row (DKD: `soft_factor · NCKD`; empty without targets).
    pub hard_rows: Vec<f32>,
    /// One `[rows × classes]` buffer per entry of `gradient_weights`.
    pub gradients: Vec<Vec<f32>>,
}

/// The teacher's rows as the kernel reads them, row-major.
#[derive(Clone, Copy)]
pub(crate) enum TeacherRows<'a> {
    /// `[rows × classes]` logits (or log-probabilities) at `teacher_temperature`.
    Dense(&'a [f32]),
    /// The stored top-k: `[rows × k]` classes (checked to lie in
    /// `0..classes`) and their log-probabilities at the distillation
    /// temperature, normalised over the whole vocabulary.
    TopK {
        indices: &'a [i64],
        log_probs: &'a [f32],
        k: usize,
    },
}

impl<'a> TeacherRows<'a> {
    /// Values per row.
    fn width(&self, classes: usize) -> usize {
        match self {
            Self::Dense(_) => classes,
            Self::TopK { k, .. } => *k,
        }
    }

    /// Rows `first..first + count`.
    fn rows(&self, first: usize, count: usize, classes: usize) -> Self {
        let w = self.width(classes);
        let range = first * w..(first + count) * w;
        match *self {
            Self::Dense(values) => Self::Dense(&values[range]),
            Self::TopK {
                indices,
                log_probs,
                k,
            } => Self::TopK {
                indices: &indices[range.clone()],
                log_probs: &log_probs[range],
                k,
            },
        }
    }
}

/// Runs the kernel over row-major `student` logits and the `teacher`'s rows;
/// the gradients of `spec.weights`' columns too when `with_gradients`.
pub(crate) fn kd_rows(
    student: &[f32],
    teacher: TeacherRows,
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
        plugin: Plugin::of(spec.loss.divergence()),
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
    // Rayon's global pool — the one burn-flex's and gemm's threads are — so
    // that the loss and the model's matmuls never oversubscribe the cores.
    rayon::scope(|scope| {
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
                student: &student[range],
                teacher: teacher.rows(first, count, classes),
                targets: spec.targets.map(|t| &t[first..first + count]),
                soft,
                hard: hard_iter.next().map(|h| &mut **h),
                grads: grads.iter_mut().map(|g| &mut **g).collect(),
            };
            if single_block {
                job.run(spec);
            } else {
                scope.spawn(move |_| job.run(spec));
            }
        }
    });
    out
}

/// Blocks for `rows × classes` elements: one below [`PARALLEL_MIN_ELEMENTS`],
/// else one per thread of rayon's pool (at most one per row).
fn thread_count(rows: usize, classes: usize) -> usize {
    if rows * classes < PARALLEL_MIN_ELEMENTS {
        return 1;
    }
    rayon::current_num_threads().clamp(1, rows.max(1))
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
    rayon::scope(|scope| {
        for (block, chunk) in out.chunks_mut(rows_per_thread * classes).enumerate() {
            let others = &buffers;
            let first_row = block * rows_per_thread;
            let mut job = move || {
                for (r, g) in chunk.chunks_mut(classes).enumerate() {
                    let row = first_row + r;
                    let weights = &upstream[row * columns..(row + 1) * columns];
                    let range = row * classes..(row + 1) * classes;
                    // A zero weight (a row masked out, a part not trained on)
                    // contributes exactly 0, even where the row's own gradient
                    // is not finite (a padding row of −inf logits): 0·NaN would
                    // be NaN.
                    match weights[0] {
                        0.0 => g.fill(0.0),
                        w => g.iter_mut().for_each(|x| *x *= w),
                    }
                    for (other, &w) in others.iter().zip(&weights[1..]) {
                        if w == 0.0 {
                            continue;
                        }
                        for (x, &y) in g.iter_mut().zip(&other[range.clone()]) {
                            *x += w * y;
                        }
                    }
                }
            };
            if rows_per_thread >= rows {
                job();
            } else {
                scope.spawn(move |_| job());
            }
        }
    });
    out
}

/// A block of consecutive rows and the output slices they write.
struct RowBlock<'a> {
    student: &'a [f32],
    teacher: TeacherRows<'a>,
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

    /// The row loop with the job's divergence plugged in.
    #[inline(always)]
    fn run_rows(self, spec: &Job) {
        match spec.spec.loss {
            FusedLoss::Kd(_) => with_plugin!(spec.plugin, |divergence| self
                .run_rows_with(spec, divergence)),
            FusedLoss::Dkd => self.run_dkd_rows(spec),
        }
    }

    /// DKD's rows (see [`dkd_row`]): `T²·TCKD` into `soft`, `T²·NCKD` into
    /// `hard`, and each column's gradient.
    #[inline(always)]
    fn run_dkd_rows(mut self, spec: &Job) {
        let classes = spec.classes;
        let mut scratch = Scratch::new(classes);
        let labels = spec.targets.expect("DKD has labels (checked by the loss)");
        let hard = self.hard.as_deref_mut().expect("DKD has labels");
        for row in 0..self.soft.len() {
            let range = row * classes..(row + 1) * classes;
            let v = match self.teacher {
                TeacherRows::Dense(values) => &values[range.clone()],
                TeacherRows::TopK { .. } => {
                    unreachable!("DKD refuses a top-k teacher in its check")
                }
            };
            let y = labels[row] as usize;
            let (tckd, nckd) = dkd_row(&self.student[range.clone()], v, y, spec, &mut scratch);
            self.soft[row] = (spec.spec.soft_factor * tckd.value) as f32;
            hard[row] = (spec.spec.soft_factor * nckd) as f32;
            for (grad, &(wa, wb)) in self.grads.iter_mut().zip(spec.gradient_weights) {
                let coef = spec.spec.soft_factor / spec.spec.temperature;
                let (a, b) = ((coef * wa) as f32, (coef * wb) as f32);
                let g = &mut grad[range.clone()];
                // q̂ − p̂ sits in `factors`, q̂ in `exp_student` (both 0 at y).
                let d = a * tckd.target_gap;
                for ((gi, &gap), &q_hat) in
                    g.iter_mut().zip(&scratch.factors).zip(&scratch.exp_student)
                {
                    *gi = b * gap - d * q_hat;
                }
                g[y] = d;
            }
        }
    }

    /// Every row of the block, in four passes over the row (see the module docs).
    #[inline(always)]
    fn run_rows_with<D: Pointwise>(mut self, spec: &Job, divergence: D) {
        let classes = spec.classes;
        let settings = spec.spec;
        let inv_t = (1.0 / settings.temperature) as f32;
        let unit_temperature = settings.temperature == 1.0;
        let want_hard = spec.targets.is_some();
        let mut scratch = Scratch::new(classes);
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
            let max_z = max(z);
            for (&zi, eq) in z.iter().zip(scratch.exp_student.iter_mut()) {
                *eq = exp((zi - max_z) * inv_t);
            }
            let sum_q = sum(&scratch.exp_student);
            let student = StudentRow {
                z,
                max_z,
                inv_t,
                rq: (1.0 / sum_q) as f32,
                ln_sum_q: sum_q.ln(),
            };
            // The divergence's Σt and Σh; the factors h per class in `scratch.factors`.
            let (value, sum_h) = match self.teacher {
                TeacherRows::Dense(values) => {
                    let v = &values[row * classes..(row + 1) * classes];
                    dense_terms(&student, v, settings, &mut scratch, divergence)
                }
                TeacherRows::TopK {
                    indices,
                    log_probs,
                    k,
                } => {
                    let top = &indices[row * k..(row + 1) * k];
                    let lp = &log_probs[row * k..(row + 1) * k];
                    top_k_terms(&student, top, lp, &mut scratch, divergence)
                }
            };
            self.soft[row] = (settings.soft_factor * value) as f32;

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
            if self.grads.is_empty() {
                continue;
            }

            // Pass 4: gradients, (f/T)(h − q Σh) for the soft term.
            let sum_h = sum_h as f32;
            let rq = student.rq;
            let r1 = (1.0 / sum_1) as f32;
            let (exp_q, factors) = (&scratch.exp_student, &scratch.factors);
            let exp_t1: &[f32] = if unit_temperature {
                exp_q
            } else {
                &exp_student_t1
            };
            for (grad, &(ws, wh)) in self.grads.iter_mut().zip(spec.gradient_weights) {
                let g = &mut grad[row * classes..(row + 1) * classes];
                let soft_coef = (ws * settings.soft_factor / settings.temperature) as f32;
                let hard_coef = wh as f32;
                if want_hard && hard_coef != 0.0 {
                    for (((gi, &h), &eq), &e1) in g.iter_mut().zip(factors).zip(exp_q).zip(exp_t1) {
                        *gi = soft_coef * (h - eq * rq * sum_h) + hard_coef * e1 * r1;
                    }
                    if let Some(y) = label {
                        g[y] -= hard_coef;
                    }
                } else {
                    for ((gi, &h), &eq) in g.iter_mut().zip(factors).zip(exp_q) {
                        *gi = soft_coef * (h - eq * rq * sum_h);
                    }
                }
            }
        }
    }
}

/// Per-thread buffers of one row's length, reused from row to row.
struct Scratch {
    /// `e^b`, `b = (z − max z)/T`.
    exp_student: Vec<f32>,
    /// The divergence's gradient factor per class (`h`, see [`super::pointwise`]).
    factors: Vec<f32>,
    /// Dense: `e^a`, then the value terms. Top-k: `e^b` outside the teacher's classes.
    other: Vec<f32>,
    /// Top-k: the bucket probabilities and log-probabilities.
    buckets: Vec<[f32; 4]>,
    /// Top-k: each bucket's gradient factor `h_b`.
    bucket_factors: Vec<f32>,
}

impl Scratch {
    /// Buffers for rows of `classes` (the top-k ones grow to `k + 1` once).
    fn new(classes: usize) -> Self {
        Self {
            exp_student: vec![0.0; classes],
            factors: vec![0.0; classes],
            other: vec![0.0; classes],
            buckets: Vec::new(),
            bucket_factors: Vec::new(),
        }
    }
}

/// One row of the student: its logits, `max z`, `1/T`, `1/S_q` and `ln S_q`.
struct StudentRow<'a> {
    z: &'a [f32],
    max_z: f32,
    inv_t: f32,
    rq: f32,
    ln_sum_q: f64,
}

/// A dense teacher row: pass 2 for the teacher (`e^a` and `S_p`), pass 3
/// (`t` and `h` per class); returns `(Σt, Σh)` with `h` in `scratch.factors`.
#[inline(always)]
fn dense_terms<D: Pointwise>(
    student: &StudentRow,
    v: &[f32],
    settings: &FusedSpec,
    scratch: &mut Scratch,
    divergence: D,
) -> (f64, f64) {
    let inv_t_teacher = (1.0 / settings.teacher_temperature) as f32;
    let max_v = max(v);
    let exp_teacher = &mut scratch.other;
    for (&vi, ep) in v.iter().zip(exp_teacher.iter_mut()) {
        *ep = exp((vi - max_v) * inv_t_teacher);
    }
    let sum_p = sum(exp_teacher);
    let rp = (1.0 / sum_p) as f32;
    let (ln_sum_p, ln_sum_q) = (sum_p.ln() as f32, student.ln_sum_q as f32);
    let (max_z, inv_t, rq) = (student.max_z, student.inv_t, student.rq);
    // `ln p − ln q` from the logits' difference where both share the
    // temperature: rounded relative to `v − z`, not to each log-probability
    // (the KLs' terms are of its size where p ≈ q).
    let same_temperature = inv_t_teacher == inv_t;
    let shift = (sum_p.ln() - student.ln_sum_q) as f32 + (max_v - max_z) * inv_t;
    for ((((&zi, &vi), ep_t), &eq), h) in student
        .z
        .iter()
        .zip(v)
        .zip(exp_teacher.iter_mut())
        .zip(&scratch.exp_student)
        .zip(scratch.factors.iter_mut())
    {
        let log_p = (vi - max_v) * inv_t_teacher - ln_sum_p;
        let log_q = (zi - max_z) * inv_t - ln_sum_q;
        let log_ratio = if same_temperature {
            (vi - zi) * inv_t - shift
        } else {
            log_p - log_q
        };
        let (term, factor) = divergence.terms(*ep_t * rp, eq * rq, log_ratio);
        // e^a is not needed past this point: its slot takes the value term.
        *ep_t = term;
        *h = factor;
    }
    let sum_h = match divergence.sum_h_is_minus_one() {
        true => -1.0,
        false => sum(&scratch.factors),
    };
    (sum(exp_teacher), sum_h)
}

/// A top-k teacher row: the divergence over the `k` stored classes and the
/// tail bucket ("everything else"); returns `(Σt, Σh)` with, in
/// `scratch.factors`, each class's share of `h`.
///
/// With bucket probabilities `Q_b` and `H = Σ_b h_b` (`h_b = Q_b ∂D/∂Q_b`),
/// the chain rule through `Q_b = Σ_{i∈b} q_i` gives
/// `∂D/∂z_i = (1/T)(Σ_{b∋i} q_i h_b/Q_b − q_i H)`: a stored class gets
/// `h_b` of its bucket (the classes are distinct: `check` refuses a row that
/// stores one twice, and a CPU forward checks), a tail class
/// `q_i · h_tail/Q_tail`. So the same gradient pass as the dense teacher
/// applies, with these as the factors. The student's tail is summed over the
/// classes outside the teacher's (exact, no `1 − Σ q` cancellation); the
/// teacher's is `1 − Σ p`, clamped at 0; with `k = C` both tails are empty.
#[inline(always)]
fn top_k_terms<D: Pointwise>(
    student: &StudentRow,
    indices: &[i64],
    log_probs: &[f32],
    scratch: &mut Scratch,
    divergence: D,
) -> (f64, f64) {
    let classes = student.z.len();
    let (max_z, inv_t, rq) = (student.max_z, student.inv_t, student.rq);
    let ln_sum_q = student.ln_sum_q;
    // e^b outside the teacher's classes.
    let outside = &mut scratch.other;
    outside.copy_from_slice(&scratch.exp_student);
    for &i in indices {
        outside[i as usize] = 0.0;
    }
    let buckets = &mut scratch.buckets;
    buckets.clear();
    let mut teacher_mass = 0.0f64;
    for (&i, &lp) in indices.iter().zip(log_probs) {
        let i = i as usize;
        let p = lp.exp();
        teacher_mass += p as f64;
        let q = scratch.exp_student[i] * rq;
        let lq = ((student.z[i] - max_z) * inv_t) as f64 - ln_sum_q;
        buckets.push([p, lp, q, lq as f32]);
    }
    // The student's tail as `s_out · e^{shift} / S_q`: the sum of the outside
    // classes' e^b, rescaled by their own maximum when it underflows (a tail far
    // below the top classes still has a gradient, spread by its own softmax).
    let mut s_out = sum(outside);
    let mut shift = 0.0f64;
    if s_out < 1e-30 && indices.len() < classes {
        for (o, &zi) in outside.iter_mut().zip(student.z) {
            *o = zi;
        }
        for &i in indices {
            outside[i as usize] = f32::NEG_INFINITY;
        }
        let max_out = max(outside);
        if max_out > f32::NEG_INFINITY {
            for o in outside.iter_mut() {
                *o = exp((*o - max_out) * inv_t);
            }
            s_out = sum(outside);
            shift = ((max_out - max_z) * inv_t) as f64;
        } else {
            outside.fill(0.0);
            s_out = 0.0;
        }
    }
    let tail = if indices.len() == classes {
        [0.0, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY]
    } else {
        let p_tail = (1.0 - teacher_mass).max(0.0);
        let ln_q_tail = s_out.ln() + shift - ln_sum_q;
        [
            p_tail as f32,
            p_tail.ln() as f32,
            ln_q_tail.exp() as f32,
            ln_q_tail as f32,
        ]
    };
    buckets.push(tail);

    let (mut value, mut sum_h) = (0.0f64, 0.0f64);
    let bucket_factors = &mut scratch.bucket_factors;
    bucket_factors.clear();
    for &[p, lp, q, lq] in buckets.iter() {
        let (t, h) = divergence.terms(p, q, lp - lq);
        value += t as f64;
        sum_h += h as f64;
        bucket_factors.push(h);
    }
    // Tail classes: q_i · h_tail/Q_tail = outside_i · h_tail/s_out (0 when the
    // tail is empty); stored classes, whose `outside` entry is 0: their
    // buckets' h.
    let h_tail = bucket_factors[indices.len()];
    let scale = if s_out > 0.0 {
        (h_tail as f64 / s_out) as f32
    } else {
        0.0
    };
    for (f, &e) in scratch.factors.iter_mut().zip(outside.iter()) {
        *f = e * scale;
    }
    for (&i, &h) in indices.iter().zip(bucket_factors.iter()) {
        scratch.factors[i as usize] += h;
    }
    (value, sum_h)
}

/// DKD's target-class term for one row.
struct Tckd {
    /// `KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y])`.
    value: f64,
    /// `q_y − p_y`.
    target_gap: f32,
}

/// DKD (Zhao et al. 2022) for one row with label `y`: TCKD, the binary KL of
/// target vs the rest, and NCKD, `KL(p̂ ‖ q̂)` over the non-target classes
/// renormalised. Leaves `q̂ − p̂` in `scratch.factors` and `q̂` in
/// `scratch.exp_student` (both 0 at `y`) for the gradient, which is, per unit
/// of `T²` (derived with `u_y = z_y/T`, `u_rest = logsumexp_{i≠y}(z_i/T)` the
/// binary logits, `∂u_rest/∂z_i = q̂_i/T`):
///
/// ```text
/// ∂TCKD/∂z_i = (1/T)(q_y − p_y)(δ_iy − q̂_i),    ∂NCKD/∂z_i = (1/T)(q̂_i − p̂_i)
/// ```
///
/// (`q̂_y = p̂_y = 0`). The non-target classes are exponentiated against their
/// own maximum, so `q̂` and `log(1 − q_y) = u_rest − logsumexp(u_y, u_rest)`
/// stay exact however confident either model is (no `1 − q_y` cancellation).
#[inline(always)]
fn dkd_row(z: &[f32], v: &[f32], y: usize, spec: &Job, scratch: &mut Scratch) -> (Tckd, f64) {
    let settings = spec.spec;
    let inv_t = (1.0 / settings.temperature) as f32;
    let inv_t_teacher = (1.0 / settings.teacher_temperature) as f32;
    // The non-target distribution of one model into `out`: returns its
    // log-sum-exp u_rest and the target's u_y, both relative to the same shift.
    let rest = |x: &[f32], inv_t: f32, out: &mut [f32]| -> (f64, f64, f32, f32) {
        let max_rest = max(&x[..y]).max(max(&x[y + 1..]));
        if max_rest == f32::NEG_INFINITY {
            out.fill(0.0);
            return (f64::NEG_INFINITY, 0.0, max_rest, 0.0);
        }
        for (&xi, e) in x.iter().zip(out.iter_mut()) {
            *e = exp((xi - max_rest) * inv_t);
        }
        out[y] = 0.0;
        let sum_rest = sum(out);
        let u_rest = sum_rest.ln();
        let u_y = ((x[y] - max_rest) * inv_t) as f64;
        (u_rest, u_y, max_rest, (1.0 / sum_rest) as f32)
    };
    let (q_rest, q_y, max_rest_z, rq) = rest(z, inv_t, &mut scratch.exp_student);
    let (p_rest, p_y, max_rest_v, rp) = rest(v, inv_t_teacher, &mut scratch.other);
    // Binary log-probabilities [log b_y, log b_rest] = u − logaddexp(u_y, u_rest).
    let binary = |u_y: f64, u_rest: f64| {
        let top = u_y.max(u_rest);
        let all = top + ((u_y - top).exp() + (u_rest - top).exp()).ln();
        (u_y - all, u_rest - all)
    };
    let (lq_y, lq_rest) = binary(q_y, q_rest);
    let (lp_y, lp_rest) = binary(p_y, p_rest);
    let xlog = |w: f64, log_ratio: f64| if w > 0.0 { w * log_ratio } else { 0.0 };
    let tckd = Tckd {
        value: xlog(lp_y.exp(), lp_y - lq_y) + xlog(lp_rest.exp(), lp_rest - lq_rest),
        target_gap: (lq_y.exp() - lp_y.exp()) as f32,
    };

    // NCKD over the non-target classes; q̂, then q̂ − p̂, in place.
    // log q̂_i = (z_i − max_rest)/T − u_rest; their difference from the
    // logits' where both share the temperature (see `dense_terms`).
    let (ln_rq, ln_rp) = (-q_rest as f32, -p_rest as f32);
    let same_temperature = inv_t_teacher == inv_t;
    let shift = (p_rest - q_rest) as f32 + (max_rest_v - max_rest_z) * inv_t;
    for ((((&zi, &vi), eq), ep), gap) in z
        .iter()
        .zip(v)
        .zip(scratch.exp_student.iter_mut())
        .zip(scratch.other.iter_mut())
        .zip(scratch.factors.iter_mut())
    {
        let q_hat = *eq * rq;
        let p_hat = *ep * rp;
        let log_q = (zi - max_rest_z) * inv_t + ln_rq;
        let log_p = (vi - max_rest_v) * inv_t_teacher + ln_rp;
        // Forward KL's term, each of its share's size (no cancellation where
        // the models nearly agree); 0 where p̂ = q̂ = 0 (the target).
        let log_ratio = if same_temperature {
            (vi - zi) * inv_t - shift
        } else {
            log_p - log_q
        };
        *ep = kl_term(p_hat, q_hat, log_ratio);
        *eq = q_hat;
        *gap = q_hat - p_hat;
    }
    // A teacher that rules out every non-target class has no p̂: NCKD 0 (the
    // terms would sum q̂ to 1), and its gradient 0.
    let nckd = match p_rest == f64::NEG_INFINITY {
        true => {
            scratch.factors.fill(0.0);
            0.0
        }
        false => sum(&scratch.other),
    };
    (tckd, nckd)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::divergence::Divergence;

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
            loss: FusedLoss::Kd(Divergence::ForwardKl),
        };
        let out = kd_rows(&z, TeacherRows::Dense(&v), 4, Some(&[2]), &spec, true);
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
            teacher: TeacherRows::Dense(v),
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
            loss: FusedLoss::Kd(Divergence::Jsd { beta: 0.3 }),
        };
        let spec = Job {
            classes,
            spec: &settings,
            targets: Some(&targets),
            gradient_weights: &settings.weights,
            plugin: Plugin::of(settings.loss.divergence()),
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
