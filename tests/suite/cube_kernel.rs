//! The Cube kernel (feature `cube-kernel`) on wgpu — in CI Mesa's lavapipe, a
//! software Vulkan driver: values and student gradients against the CPU
//! engine (flex, f32) and against burn ops with autodiff in f64 on flex (an
//! independent reference), for every divergence, odd class counts, large
//! logits, masked rows and classes, labels and none; half precision; and a
//! count of the kernel's launches proving the loss took it (a silent fall-back
//! to the tensor-op path cannot pass).

use crate::common;

use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};
use burn_distill::diagnostics::cube_kernel_launches;
use burn_distill::{
    Divergence, DkdLoss, DkdLossConfig, KdLoss, KdLossConfig, SparseTeacher, Targets, TeacherOutput,
};
use common::{EVERY_DIVERGENCE, Normals, Rng, assert_allclose, devices, labels, values};

/// The wgpu device, if the tests were built with it and found an adapter.
fn wgpu() -> Option<Device> {
    let device = devices().into_iter().find(|(name, _)| *name == "wgpu");
    if device.is_none() {
        eprintln!("cube kernel: no wgpu device, nothing to check");
    }
    device.map(|(_, device)| device)
}

/// f32 against f32 and f64: the GPU's `exp` and `ln` are allowed a few ulp
/// more than the CPU's (Vulkan's precision rules), and the normalised JSD
/// multiplies its terms' rounding by 1/(β(1−β)) (11 at β = 0.9).
const TOLERANCE: (f64, f64) = (1e-4, 1e-6);

fn kd(divergence: Divergence, temperature: f64, fused: bool) -> KdLoss {
    KdLossConfig::new()
        .with_temperature(temperature)
        .with_soft_weight(0.7)
        .with_hard_weight(0.3)
        .with_divergence(divergence)
        .with_fused_kernel(fused)
        .init()
}

/// One problem: logits, labels (or none), an optional row mask.
struct Problem {
    rows: usize,
    classes: usize,
    student: Vec<f64>,
    teacher: Vec<f64>,
    labels: Option<Vec<i64>>,
    keep: Option<Vec<bool>>,
    /// A top-k teacher instead of the dense one: `(k, classes, their
    /// log-probabilities)`, row-major `[rows, k]`.
    top_k: Option<(usize, Vec<i64>, Vec<f64>)>,
}

impl Problem {
    fn random(rows: usize, classes: usize, scale: f64, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        Self {
            rows,
            classes,
            student: rng.normals(rows * classes, scale),
            teacher: rng.normals(rows * classes, scale),
            labels: Some(
                (0..rows)
                    .map(|r| ((r * 7919 + seed as usize) % classes) as i64)
                    .collect(),
            ),
            keep: None,
            top_k: None,
        }
    }

    /// The teacher as its `k` largest logits at `temperature`: classes and
    /// log-probabilities computed here in f64 (sorted by value, ties to the
    /// smaller class), not by the crate.
    fn with_top_k(mut self, k: usize, temperature: f64) -> Self {
        let (mut indices, mut log_probs) = (Vec::new(), Vec::new());
        for row in self.teacher.chunks(self.classes) {
            let scaled: Vec<f64> = row.iter().map(|v| v / temperature).collect();
            let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = max + scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
            let mut order: Vec<usize> = (0..self.classes).collect();
            order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]).then(a.cmp(&b)));
            for &c in &order[..k] {
                indices.push(c as i64);
                log_probs.push(scaled[c] - log_sum);
            }
        }
        self.top_k = Some((k, indices, log_probs));
        self
    }

    fn teacher(&self, device: &Device, dtype: DType) -> TeacherOutput {
        let shape = [self.rows, self.classes];
        let tensor = |v: &[f64], shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), (device, DType::F64))
                .cast(dtype)
        };
        match &self.top_k {
            None => TeacherOutput::Logits(tensor(&self.teacher, shape)),
            Some((k, indices, log_probs)) => {
                let shape = [self.rows, *k];
                let indices =
                    Tensor::<2, Int>::from_data(TensorData::new(indices.clone(), shape), device);
                TeacherOutput::TopK(SparseTeacher::new(indices, tensor(log_probs, shape)).unwrap())
            }
        }
    }

    fn targets(&self, device: &Device) -> Targets {
        let mut targets = match &self.labels {
            Some(y) => Targets::new(labels(y, device)),
            None => Targets::unlabelled(),
        };
        if let Some(keep) = &self.keep {
            let mask = TensorData::new(keep.clone(), [keep.len()]);
            targets = targets.with_keep_rows(Tensor::<1, Bool>::from_data(mask, device));
        }
        targets
    }

    /// `(total, soft, hard, per-row totals, gradient of the total)` on
    /// `device` in `dtype`.
    fn run(&self, loss: &KdLoss, device: &Device, dtype: DType) -> Outcome {
        let device = device.clone().autodiff();
        let shape = [self.rows, self.classes];
        let tensor = |v: &[f64]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), (&device, DType::F64))
                .cast(dtype)
        };
        let z = tensor(&self.student).require_grad();
        let teacher = || self.teacher(&device, dtype);
        let parts = loss.forward_parts(z.clone(), teacher(), self.targets(&device));
        let gradient = z.grad(&parts.total.backward()).expect("student gradient");
        assert_eq!(
            gradient.dtype(),
            dtype,
            "the gradient comes back in the logits' dtype"
        );
        let rows = loss.forward_no_reduction(z, teacher(), self.targets(&device));
        Outcome {
            total: values(parts.total)[0],
            soft: values(parts.soft)[0],
            hard: values(parts.hard)[0],
            rows: values(rows),
            gradient: values(gradient),
        }
    }
}

fn dkd(temperature: f64, fused: bool) -> DkdLoss {
    DkdLossConfig::new()
        .with_temperature(temperature)
        .with_alpha(1.0)
        .with_beta(8.0)
        .with_fused_kernel(fused)
        .init()
}

impl Problem {
    /// DKD's `(total, TCKD, NCKD, per-row totals, gradients)` on `device` in
    /// `dtype`: the gradients of `forward` (one output column) and of
    /// `forward_parts`' TCKD (two columns, the NCKD one weighted 0),
    /// concatenated.
    fn run_dkd(&self, loss: &DkdLoss, device: &Device, dtype: DType) -> Outcome {
        let device = device.clone().autodiff();
        let shape = [self.rows, self.classes];
        let tensor = |v: &[f64]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), (&device, DType::F64))
                .cast(dtype)
        };
        let z = tensor(&self.student).require_grad();
        let teacher = || self.teacher(&device, dtype);
        let total = loss.forward(z.clone(), teacher(), self.targets(&device));
        let gradient = z.grad(&total.backward()).expect("student gradient");
        let parts = loss.forward_parts(z.clone(), teacher(), self.targets(&device));
        let tckd_gradient = z.grad(&parts.tckd.backward()).expect("student gradient");
        let rows = loss.forward_no_reduction(z, teacher(), self.targets(&device));
        Outcome {
            total: values(parts.total)[0],
            soft: values(parts.tckd)[0],
            hard: values(parts.nckd)[0],
            rows: values(rows),
            gradient: [values(gradient), values(tckd_gradient)].concat(),
        }
    }
}

struct Outcome {
    total: f64,
    soft: f64,
    hard: f64,
    rows: Vec<f64>,
    gradient: Vec<f64>,
}

impl Outcome {
    /// The scalars (total, soft, hard) and the per-row values within `rtol`, `atol`.
    #[track_caller]
    fn assert_values(&self, reference: &Outcome, what: &str, rtol: f64, atol: f64) {
        let scalars = [self.total, self.soft, self.hard];
        let expected = [reference.total, reference.soft, reference.hard];
        assert_allclose(
            &format!("{what}: total, soft, hard"),
            &scalars,
            &expected,
            rtol,
            atol,
        );
        assert_allclose(
            &format!("{what}: rows"),
            &self.rows,
            &reference.rows,
            rtol,
            atol,
        );
    }

    /// Values within `rtol` 1e-4 and `atol` 2e-5 (the f32 rounding of a
    /// row's per-class terms, about 1e-7 of each, times `T²` and the
    /// normalised JSD's 1/(β(1−β)) — 9 × 11 at T = 3, β = 0.9); every
    /// gradient entry within 1e-4 of itself plus 1e-6 (the same rounding
    /// times `T`, the factor and the weights), not relative to the largest
    /// entry. TVD's gradient is judged as a whole, as in [`Self::assert_matches`].
    #[track_caller]
    fn assert_matches_per_entry(&self, reference: &Outcome, what: &str) {
        self.assert_matches_per_entry_within(reference, what, 1e-6);
    }

    /// [`Self::assert_matches_per_entry`] with the gradient entries' absolute
    /// tolerance `gradient_atol`.
    #[track_caller]
    fn assert_matches_per_entry_within(&self, reference: &Outcome, what: &str, gradient_atol: f64) {
        let (rtol, atol) = (1e-4, 2e-5);
        self.assert_values(reference, what, rtol, atol);
        if what.starts_with("Tvd") {
            return self.assert_matches(reference, what, TOLERANCE);
        }
        assert_allclose(
            &format!("{what}: gradient"),
            &self.gradient,
            &reference.gradient,
            rtol,
            gradient_atol,
        );
    }

    #[track_caller]
    fn assert_matches(&self, reference: &Outcome, what: &str, (rtol, atol): (f64, f64)) {
        self.assert_values(reference, what, rtol, atol);
        assert!(
            self.gradient.iter().all(|g| g.is_finite()),
            "{what}: finite gradient"
        );
        if what.starts_with("Tvd") {
            // TVD's gradient jumps where q = p: for a class within rounding of
            // a tie, f32 decides the side. Judged as a whole (L1) instead.
            let l1 = |g: &[f64]| g.iter().map(|x| x.abs()).sum::<f64>();
            let difference: Vec<f64> = self
                .gradient
                .iter()
                .zip(&reference.gradient)
                .map(|(a, b)| a - b)
                .collect();
            let relative = l1(&difference) / l1(&reference.gradient).max(f64::MIN_POSITIVE);
            assert!(relative < 1e-3, "{what}: gradient L1 error {relative:.2e}");
            return;
        }
        // Gradient entries are judged against the largest (probabilities
        // times weights: tiny entries carry absolute, not relative, error).
        let scale = reference
            .gradient
            .iter()
            .fold(0.0f64, |m, g| m.max(g.abs()));
        let gradient_atol = atol + rtol * scale;
        assert_allclose(
            &format!("{what}: gradient"),
            &self.gradient,
            &reference.gradient,
            rtol,
            gradient_atol,
        );
    }
}

/// Every divergence, at T = 1 and T = 3, with labels and without, for class
/// counts that are not multiples of any workgroup (1, 3, 1000, 32001) and
/// batch sizes down to 1: the kernel equals the CPU engine and the f64
/// reference; each forward launches it once.
#[test]
fn every_divergence_and_odd_class_counts_match_the_cpu_engine_and_f64() {
    let Some(gpu) = wgpu() else { return };
    let flex = Device::flex();
    for (rows, classes) in [(4, 1), (3, 3), (5, 1000), (2, 32001), (1, 37)] {
        for (d, &divergence) in EVERY_DIVERGENCE.iter().enumerate() {
            for temperature in [1.0, 3.0] {
                for labelled in [true, false] {
                    let mut problem = Problem::random(rows, classes, 2.0, 17 + d as u64);
                    if !labelled {
                        problem.labels = None;
                    }
                    let what = format!(
                        "{divergence:?} T={temperature} {rows}x{classes} labels {labelled}"
                    );
                    let before = cube_kernel_launches();
                    let kernel = problem.run(&kd(divergence, temperature, true), &gpu, DType::F32);
                    // forward_parts and forward_no_reduction: one launch each.
                    assert_eq!(
                        cube_kernel_launches() - before,
                        2,
                        "{what}: kernel launches"
                    );
                    let cpu = problem.run(&kd(divergence, temperature, true), &flex, DType::F32);
                    let f64_reference =
                        problem.run(&kd(divergence, temperature, false), &flex, DType::F64);
                    kernel.assert_matches(&f64_reference, &format!("{what} vs f64"), TOLERANCE);
                    kernel.assert_matches(&cpu, &format!("{what} vs CPU engine"), TOLERANCE);
                }
            }
        }
    }
}

/// More rows than one grid dimension holds (65,535 cubes on most devices):
/// the rows spill into the grid's second dimension, each still computed once.
/// (It also caught burn 0.22.1's `mean()` on wgpu going wrong past 65,535
/// elements, which the losses no longer use.)
#[test]
fn more_rows_than_one_grid_dimension() {
    let Some(gpu) = wgpu() else { return };
    let problem = Problem::random(70_001, 3, 2.0, 29);
    let loss = kd(Divergence::Jsd { beta: 0.3 }, 2.0, true);
    let kernel = problem.run(&loss, &gpu, DType::F32);
    let cpu = problem.run(&loss, &Device::flex(), DType::F32);
    kernel.assert_matches(&cpu, "70001 rows vs CPU engine", TOLERANCE);
}

/// Logits up to |1e4| (far past where a naive softmax overflows): finite,
/// and equal to the CPU engine and the f64 reference.
#[test]
fn large_logits_match() {
    let Some(gpu) = wgpu() else { return };
    let flex = Device::flex();
    for divergence in EVERY_DIVERGENCE {
        let mut problem = Problem::random(3, 1000, 1.0, 5);
        // Spread to ±1e4: a few huge logits per row, the rest moderate.
        for (i, z) in problem.student.iter_mut().enumerate() {
            *z = if i % 97 == 0 {
                (*z * 3e3).clamp(-1e4, 1e4)
            } else {
                *z * 30.0
            };
        }
        for (i, v) in problem.teacher.iter_mut().enumerate() {
            *v = if i % 89 == 0 {
                (*v * 3e3).clamp(-1e4, 1e4)
            } else {
                *v * 30.0
            };
        }
        for temperature in [1.0, 4.0] {
            let what = format!("{divergence:?} T={temperature} |logits| ≤ 1e4");
            let loss = kd(divergence, temperature, true);
            let kernel = problem.run(&loss, &gpu, DType::F32);
            let cpu = problem.run(&loss, &flex, DType::F32);
            let f64_reference = problem.run(&kd(divergence, temperature, false), &flex, DType::F64);
            kernel.assert_matches(&cpu, &format!("{what} vs CPU engine"), (1e-4, 1e-5));
            kernel.assert_matches(&f64_reference, &format!("{what} vs f64"), (1e-4, 1e-5));
        }
    }
}

/// Masked rows (a row mask, `ignore_index`) and masked classes (`−inf` in
/// both models, including a padding row that is `−inf` everywhere and
/// masked out): finite values, zero gradient where masked, equal to the CPU
/// engine.
#[test]
fn masked_rows_and_classes_match() {
    let Some(gpu) = wgpu() else { return };
    let flex = Device::flex();
    for divergence in EVERY_DIVERGENCE {
        let (rows, classes) = (6, 301);
        let mut problem = Problem::random(rows, classes, 2.0, 11);
        // Classes 0, 150 and the last ruled out in every row of both models.
        for r in 0..rows {
            for c in [0, 150, classes - 1] {
                problem.student[r * classes + c] = f64::NEG_INFINITY;
                problem.teacher[r * classes + c] = f64::NEG_INFINITY;
            }
        }
        // Row 4 is padding: −inf everywhere; it and row 1 are masked out.
        for c in 0..classes {
            problem.student[4 * classes + c] = f64::NEG_INFINITY;
            problem.teacher[4 * classes + c] = f64::NEG_INFINITY;
        }
        problem.labels = Some(vec![3, 5, 7, 9, 11, 13]);
        problem.keep = Some(vec![true, false, true, true, false, true]);
        for temperature in [1.0, 2.0] {
            let what = format!("{divergence:?} T={temperature} masked");
            let loss = kd(divergence, temperature, true);
            let kernel = problem.run(&loss, &gpu, DType::F32);
            let cpu = problem.run(&loss, &flex, DType::F32);
            kernel.assert_matches(&cpu, &format!("{what} vs CPU engine"), TOLERANCE);
            for r in [1, 4] {
                let row = &kernel.gradient[r * classes..(r + 1) * classes];
                assert!(row.iter().all(|&g| g == 0.0), "{what}: masked row {r}");
            }
            for r in [0, 2, 3, 5] {
                for c in [0, 150, classes - 1] {
                    assert_eq!(kernel.gradient[r * classes + c], 0.0, "{what}: class {c}");
                }
            }
        }
    }
}

/// A top-k teacher on the Cube kernel (k + 1 buckets: the stored classes
/// and the tail), every divergence, T = 1 and 3, labels and none: equal to
/// the CPU engine and to the f64 burn-ops reference, per gradient entry;
/// `k = classes` (an empty tail) and `k = 1` included; each forward launches
/// the kernel once.
#[test]
fn top_k_teacher_matches_the_cpu_engine_and_f64() {
    let Some(gpu) = wgpu() else { return };
    let flex = Device::flex();
    for (rows, classes, k) in [
        (5, 1000, 8),
        (3, 37, 37),
        (2, 32001, 64),
        (4, 3, 1),
        (1, 300, 129),
    ] {
        for (d, &divergence) in EVERY_DIVERGENCE.iter().enumerate() {
            for temperature in [1.0, 3.0] {
                for labelled in [true, false] {
                    let mut problem = Problem::random(rows, classes, 2.0, 31 + d as u64)
                        .with_top_k(k, temperature);
                    if !labelled {
                        problem.labels = None;
                    }
                    let what = format!(
                        "{divergence:?} T={temperature} {rows}x{classes} top-{k} labels {labelled}"
                    );
                    let loss = kd(divergence, temperature, true);
                    let before = cube_kernel_launches();
                    let kernel = problem.run(&loss, &gpu, DType::F32);
                    assert_eq!(
                        cube_kernel_launches() - before,
                        2,
                        "{what}: kernel launches"
                    );
                    let cpu = problem.run(&loss, &flex, DType::F32);
                    let f64_reference =
                        problem.run(&kd(divergence, temperature, false), &flex, DType::F64);
                    kernel.assert_matches_per_entry(&f64_reference, &format!("{what} vs f64"));
                    kernel.assert_matches_per_entry(&cpu, &format!("{what} vs CPU engine"));
                }
            }
        }
    }
}

/// The top-k kernel's hard cases: a student whose tail lies 200 nats below
/// its top classes (the tail's mass underflows f32 against the row's sum, but
/// not against its own maximum: its gradient is still its own softmax times
/// the tail factor), `−inf` logits among the tail, and masked rows: equal to
/// the CPU engine and the f64 reference, and, for forward KL, the far tail's
/// gradient equal to its closed form.
#[test]
fn top_k_teacher_hard_cases_match_the_cpu_engine() {
    let Some(gpu) = wgpu() else { return };
    let flex = Device::flex();
    let (rows, classes, k) = (4, 257, 5);
    for divergence in EVERY_DIVERGENCE {
        let mut problem = Problem::random(rows, classes, 2.0, 47).with_top_k(k, 2.0);
        let (_, indices, log_probs) = problem.top_k.clone().expect("a top-k teacher");
        // Row 1: the student's tail 200 nats (at T = 2) below its top classes.
        for c in 0..classes {
            if !indices[k..2 * k].contains(&(c as i64)) {
                problem.student[classes + c] -= 400.0;
            }
        }
        // Row 2: a few tail classes ruled out in the student.
        for c in (0..classes).step_by(50) {
            if !indices[2 * k..3 * k].contains(&(c as i64)) {
                problem.student[2 * classes + c] = f64::NEG_INFINITY;
            }
        }
        problem.keep = Some(vec![true, true, true, false]);
        let what = format!("{divergence:?} top-k hard cases");
        let loss = kd(divergence, 2.0, true);
        let kernel = problem.run(&loss, &gpu, DType::F32);
        let cpu = problem.run(&loss, &flex, DType::F32);
        let f64_reference = problem.run(&kd(divergence, 2.0, false), &flex, DType::F64);
        kernel.assert_matches_per_entry(&cpu, &format!("{what} vs CPU engine"));
        kernel.assert_matches_per_entry(&f64_reference, &format!("{what} vs f64"));
        let masked = &kernel.gradient[3 * classes..];
        assert!(masked.iter().all(|&g| g == 0.0), "{what}: masked row");
        if divergence == Divergence::ForwardKl {
            // The far tail's gradient in closed form: the soft term's
            // `(T²/T)·(q_i − p_tail·q_i/Q_tail)` with `q_i ≈ 0`, times the soft
            // weight over the 3 kept rows — `−0.7/3 · 2 · p_tail · s_i`, `s`
            // the softmax of the tail's own logits at T = 2 (the hard term's
            // softmax there is 0 in f32 too, so the label's entry is −0.3/3).
            let tail: Vec<usize> = (0..classes)
                .filter(|c| !indices[k..2 * k].contains(&(*c as i64)))
                .collect();
            let p_tail = 1.0 - log_probs[k..2 * k].iter().map(|lp| lp.exp()).sum::<f64>();
            let scaled: Vec<f64> = tail
                .iter()
                .map(|&c| problem.student[classes + c] / 2.0)
                .collect();
            let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scaled.iter().map(|s| (s - max).exp()).sum();
            let label = problem.labels.as_ref().expect("labels")[1] as usize;
            let expected: Vec<f64> = scaled
                .iter()
                .zip(&tail)
                .map(|(s, &c)| {
                    let hard = if c == label { -0.3 / 3.0 } else { 0.0 };
                    -0.7 / 3.0 * 2.0 * p_tail * (s - max).exp() / sum + hard
                })
                .collect();
            let got: Vec<f64> = tail.iter().map(|&c| kernel.gradient[classes + c]).collect();
            assert_allclose(&format!("{what}: far tail"), &got, &expected, 1e-4, 1e-9);
        }
    }
}

/// DKD on the Cube kernel, at T = 1 and 4, for class counts from 2 (one
/// non-target class) to 32001 and batch sizes down to 1: values (total, TCKD,
/// NCKD, rows) and every entry of the total's and TCKD's gradients equal to
/// the CPU engine and the f64 burn-ops reference; each forward launches the
/// kernel once.
#[test]
fn dkd_matches_the_cpu_engine_and_f64() {
    let Some(gpu) = wgpu() else { return };
    let flex = Device::flex();
    for (rows, classes) in [(4, 2), (3, 3), (5, 1000), (2, 32001), (1, 37)] {
        for temperature in [1.0, 4.0] {
            let problem = Problem::random(rows, classes, 2.0, 61 + classes as u64);
            let what = format!("DKD T={temperature} {rows}x{classes}");
            let before = cube_kernel_launches();
            let kernel = problem.run_dkd(&dkd(temperature, true), &gpu, DType::F32);
            assert_eq!(
                cube_kernel_launches() - before,
                3,
                "{what}: kernel launches"
            );
            let cpu = problem.run_dkd(&dkd(temperature, true), &flex, DType::F32);
            let f64_reference = problem.run_dkd(&dkd(temperature, false), &flex, DType::F64);
            kernel.assert_matches_per_entry(&f64_reference, &format!("{what} vs f64"));
            kernel.assert_matches_per_entry(&cpu, &format!("{what} vs CPU engine"));
        }
    }
}

/// DKD's hard cases on the Cube kernel: a teacher sure of the target (`1 −
/// p_y` below f32's resolution), a target the student gives ~e⁻²⁰, logits
/// ±1e4, a class both models rule out (`−inf`), two models that nearly agree
/// (row 2: at T = 100 its TCKD and NCKD are ~10⁻⁶ of their terms `p ln(p/q)`),
/// a masked row, at T = 0.05, 1 and 100: every row's value and gradient entry
/// equal to the CPU engine and the f64 reference, and the masked row's
/// gradient exactly 0.
#[test]
fn dkd_hard_cases_match_the_cpu_engine() {
    let Some(gpu) = wgpu() else { return };
    let flex = Device::flex();
    let ninf = f64::NEG_INFINITY;
    #[rustfmt::skip]
    let student = vec![
        1e4, -1e4, 9999.0, 0.0, 9998.5,
        -20.0, 0.0, 1.0, -0.5, 0.2,
        0.5, ninf, 0.25, -1.0, 2.0,
        1.0, 0.9, 1.1, 0.95, 1.05,
    ];
    #[rustfmt::skip]
    let teacher = vec![
        9999.0, 1e4, -1e4, 2.0, 9990.0,
        30.0, 1.0, 2.0, 0.0, -1.0,
        0.4, ninf, 0.3, -1.2, 1.5,
        1.0, 0.9, 1.1, 0.95, 1.0501,
    ];
    let problem = Problem {
        rows: 4,
        classes: 5,
        student,
        teacher,
        labels: Some(vec![2, 0, 4, 1]),
        keep: Some(vec![true, true, true, false]),
        top_k: None,
    };
    for temperature in [0.05, 1.0, 100.0] {
        let what = format!("DKD hard cases T={temperature}");
        let kernel = problem.run_dkd(&dkd(temperature, true), &gpu, DType::F32);
        let cpu = problem.run_dkd(&dkd(temperature, true), &flex, DType::F32);
        let f64_reference = problem.run_dkd(&dkd(temperature, false), &flex, DType::F64);
        eprintln!(
            "DEBUG {what} rows {:?} {:?} {:?}",
            kernel.rows, cpu.rows, f64_reference.rows
        );
        eprintln!(
            "DEBUG {what} tckd {:?} {:?} {:?} nckd {:?} {:?} {:?}",
            kernel.soft, cpu.soft, f64_reference.soft, kernel.hard, cpu.hard, f64_reference.hard
        );
        // Gradient entries `T·β·(q̂ − p̂)/rows` of near-equal probabilities:
        // their f32 rounding grows with T (the floor of the CPU engine's own
        // f64 check, `numerics.rs`).
        let atol = 1e-6 + 2e-8 * temperature;
        kernel.assert_matches_per_entry_within(&cpu, &format!("{what} vs CPU engine"), atol);
        kernel.assert_matches_per_entry_within(&f64_reference, &format!("{what} vs f64"), atol);
        for copy in 0..2 {
            let masked = &kernel.gradient[copy * 20 + 15..copy * 20 + 20];
            assert!(masked.iter().all(|&g| g == 0.0), "{what}: masked row");
        }
    }
}

/// With the fused kernel off nothing launches; with it on, every forward
/// launches it once.
#[test]
fn the_kernel_is_what_runs_on_wgpu() {
    let Some(gpu) = wgpu() else { return };
    let problem = Problem::random(2, 10, 1.0, 3);
    let before = cube_kernel_launches();
    problem.run(&kd(Divergence::ReverseKl, 2.0, false), &gpu, DType::F32);
    assert_eq!(
        cube_kernel_launches(),
        before,
        "fused_kernel(false) took the kernel"
    );
    problem.run(&kd(Divergence::ReverseKl, 2.0, true), &gpu, DType::F32);
    assert_eq!(
        cube_kernel_launches() - before,
        2,
        "fused_kernel(true) did not"
    );
}

/// f16 (and bf16 where the device has it) logits, read by the kernel as
/// they are: computed in f32 inside, the gradient returned in the logits'
/// dtype, within the half type's rounding of the f32 result on the logits
/// rounded to it.
#[test]
fn half_precision_is_computed_in_f32() {
    let Some(gpu) = wgpu() else { return };
    for (dtype, epsilon) in [(DType::F16, 2f64.powi(-11)), (DType::BF16, 2f64.powi(-8))] {
        if !gpu.supports_dtype(dtype) {
            eprintln!("cube kernel: this wgpu adapter has no {dtype:?}; skipped");
            continue;
        }
        let mut problem = Problem::random(3, 1000, 2.0, 23);
        // The logits as the half type holds them, so both runs see the same input.
        let round = |v: &mut Vec<f64>| {
            let t = Tensor::<1>::from_data(
                TensorData::new(v.clone(), [v.len()]),
                (&Device::flex(), DType::F64),
            );
            *v = values(t.cast(dtype));
        };
        round(&mut problem.student);
        round(&mut problem.teacher);
        for divergence in [Divergence::ForwardKl, Divergence::Jsd { beta: 0.5 }] {
            let loss = kd(divergence, 2.0, true);
            let before = cube_kernel_launches();
            let half = problem.run(&loss, &gpu, dtype);
            // The kernel read the half-precision logits itself (one launch per forward).
            assert_eq!(
                cube_kernel_launches() - before,
                2,
                "{dtype:?}: kernel launches"
            );
            let full = problem.run(&loss, &gpu, DType::F32);
            // Outputs are rounded once to the half type: a few units of its epsilon.
            let what = format!("{divergence:?} {dtype:?}");
            half.assert_matches(&full, &what, (4.0 * epsilon, 4.0 * epsilon * 1e-3));
        }
    }
}

/// A teacher that rules out every class but the target (probabilities one-hot,
/// log-probabilities `−inf` elsewhere) has no non-target distribution: both
/// kernels take NCKD as 0 with no gradient, and TCKD as the closed form
/// `T²·(−ln q_y)` with gradient `T·(q_y − 1)(δ_iy − q̂_i)`, per row and entry,
/// beside an ordinary row that matches the f64 reference (whose burn ops give
/// NaN for the first row: its `p̂` is `0/0`).
#[test]
fn dkd_teacher_without_non_target_mass() {
    let Some(gpu) = wgpu() else { return };
    let ninf = f64::NEG_INFINITY;
    let (t, classes) = (2.0, 4);
    let problem = Problem {
        rows: 2,
        classes,
        student: vec![0.5, -1.0, 2.0, 0.1, 1.0, 0.0, -1.0, 0.3],
        teacher: vec![ninf, ninf, 0.0, ninf, 0.2, 1.0, 0.5, -0.5],
        labels: Some(vec![2, 1]),
        keep: None,
        top_k: None,
    };
    // Row 0 in closed form (f64), per row (not averaged), α = 1, β = 8.
    let z = &problem.student[..classes];
    let scaled: Vec<f64> = z.iter().map(|x| x / t).collect();
    let log_sum = scaled.iter().map(|s| s.exp()).sum::<f64>().ln();
    let q_y = (scaled[2] - log_sum).exp();
    let rest: f64 = [0, 1, 3].iter().map(|&i| scaled[i].exp()).sum();
    let row0 = t * t * -q_y.ln();
    let gradient0: Vec<f64> = (0..classes)
        .map(|i| {
            let q_hat = if i == 2 { 0.0 } else { scaled[i].exp() / rest };
            let delta = if i == 2 { 1.0 } else { 0.0 };
            // The total's gradient averages over the 2 rows.
            t * (q_y - 1.0) * (delta - q_hat) / 2.0
        })
        .collect();
    let f64_reference = problem.run_dkd(&dkd(t, false), &Device::flex(), DType::F64);
    for (name, device) in [("wgpu", gpu), ("flex", Device::flex())] {
        let got = problem.run_dkd(&dkd(t, true), &device, DType::F32);
        let what = format!("DKD without non-target mass on {name}");
        assert_allclose(
            &format!("{what}: row 0"),
            &got.rows[..1],
            &[row0],
            1e-5,
            1e-6,
        );
        assert_allclose(
            &format!("{what}: row 0's gradient"),
            &got.gradient[..classes],
            &gradient0,
            1e-5,
            1e-6,
        );
        assert_allclose(
            &format!("{what}: row 1"),
            &got.rows[1..],
            &f64_reference.rows[1..],
            1e-5,
            1e-6,
        );
        assert_allclose(
            &format!("{what}: row 1's gradient"),
            &got.gradient[classes..2 * classes],
            &f64_reference.gradient[classes..2 * classes],
            1e-4,
            1e-6,
        );
    }
}
