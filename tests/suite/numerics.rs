//! Finite input gives finite output, and the numbers are right where plain
//! formulas lose them: half precision, extreme logits and temperatures,
//! standardisation of huge or constant rows, DKD's small target probability,
//! the fused kernel's multi-threaded path, the JSD's limits, and a batch split
//! into micro-batches.

use crate::common;

use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_distill::temperature::standardize;
use burn_distill::{
    Divergence, DkdLossConfig, KdLossConfig, Reduction, SparseTeacher, Targets, TeacherOutput,
};
use common::{
    EVERY_DIVERGENCE, Normals, Rng, assert_allclose, devices, devices_f64, kernel_serves, labels,
    reference_softmax, tensor2, tensor2_f64, values,
};

/// f16 and bf16 logits are computed in f32 inside and returned in their own
/// dtype: ±4000 at T = 0.05 (a scaled logit of 8·10⁴, far past f16's 65504)
/// gives the f32 loss and gradient of the same values, rounded.
#[test]
fn half_precision_is_computed_in_f32() {
    let device = Device::flex().autodiff();
    let z = [4000.0, -4000.0, 1000.0, 0.0, -2.0, 3.0];
    let v = [3999.0, -4000.0, 1001.0, 1.0, -2.5, 2.0];
    for dtype in [DType::F16, DType::BF16] {
        if !device.supports_dtype(dtype) {
            eprintln!("{device:?} has no {dtype:?}; skipped");
            continue;
        }
        for fused in [true, false] {
            let kd = KdLossConfig::new()
                .with_temperature(0.05)
                .with_fused_kernel(fused)
                .init();
            let half = |x: &[f64]| {
                Tensor::<2>::from_data(TensorData::new(x.to_vec(), [2, 3]), (&device, dtype))
            };
            let zh = half(&z).require_grad();
            let y = || labels(&[0, 2], &device);
            let loss = kd.forward(zh.clone(), half(&v), y());
            assert_eq!(loss.dtype(), dtype);
            let grad = zh.grad(&loss.clone().backward()).expect("gradient");
            assert_eq!(grad.dtype(), dtype);
            // The same (rounded) inputs in f32.
            let as_f32 = |t: Tensor<2>| t.cast(DType::F32);
            let z32 = as_f32(half(&z)).require_grad();
            let loss32 = kd.forward(z32.clone(), as_f32(half(&v)), y());
            let grad32 = values(z32.grad(&loss32.clone().backward()).expect("gradient"));
            let (l, l32) = (values(loss), values(loss32));
            assert!(l[0].is_finite() && l32[0].is_finite(), "{dtype:?}: {l:?}");
            let rounding = if dtype == DType::F16 { 1e-3 } else { 8e-3 };
            assert_allclose(&format!("{dtype:?} loss"), &l, &l32, rounding, 0.0);
            let g = values(grad);
            assert!(g.iter().all(|g| g.is_finite()), "{dtype:?}: {g:?}");
            assert_allclose(&format!("{dtype:?} gradient"), &g, &grad32, rounding, 1e-3);
        }
    }
}

/// A loss of (student, teacher) logits, the labels bound in.
type LossFn = Box<dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<1>>;

/// Every divergence and DKD with f16 and bf16 logits, on flex and ndarray
/// (where they have the dtype): computed in f32 inside — so through the fused
/// kernel — and returned in the input dtype, equal to the f32 loss and
/// gradient of the same (rounded) values.
#[test]
fn every_loss_in_half_precision_is_computed_in_f32() {
    let z = [2.0, -1.5, 0.25, 3.0, -0.5, 1.0, 0.0, 4.0, -2.0, 0.5];
    let v = [1.5, -1.0, 0.5, 2.0, 0.0, 1.25, -0.5, 3.5, -1.0, 0.0];
    let y = [3i64, 1];
    for (_, device) in devices_f64() {
        let device = device.autodiff();
        for dtype in [DType::F16, DType::BF16] {
            if !device.supports_dtype(dtype) {
                eprintln!("{device:?} has no {dtype:?}; skipped");
                continue;
            }
            let half = |x: &[f64]| {
                Tensor::<2>::from_data(TensorData::new(x.to_vec(), [2, 5]), (&device, dtype))
            };
            let losses: Vec<(String, LossFn)> = EVERY_DIVERGENCE
                .iter()
                .map(|&divergence| {
                    let kd = KdLossConfig::new()
                        .with_temperature(2.0)
                        .with_divergence(divergence)
                        .init();
                    let device = device.clone();
                    let loss: LossFn = Box::new(move |z, v| kd.forward(z, v, labels(&y, &device)));
                    (format!("{divergence:?}"), loss)
                })
                .chain(std::iter::once({
                    let dkd = DkdLossConfig::new().with_temperature(2.0).init();
                    let device = device.clone();
                    let loss: LossFn = Box::new(move |z, v| dkd.forward(z, v, labels(&y, &device)));
                    ("DKD".to_string(), loss)
                }))
                .collect();
            for (name, loss) in &losses {
                let zh = half(&z).require_grad();
                let value = loss(zh.clone(), half(&v));
                assert_eq!(value.dtype(), dtype, "{name}");
                let grad = zh.grad(&value.clone().backward()).expect("gradient");
                assert_eq!(grad.dtype(), dtype, "{name}");
                let as_f32 = |t: Tensor<2>| t.cast(DType::F32);
                let z32 = as_f32(half(&z)).require_grad();
                let value32 = loss(z32.clone(), as_f32(half(&v)));
                let grad32 = values(z32.grad(&value32.clone().backward()).expect("gradient"));
                let rounding = if dtype == DType::F16 { 2e-3 } else { 1.6e-2 };
                let what = format!("{name} {dtype:?} {device:?}");
                assert_allclose(&what, &values(value), &values(value32), rounding, 1e-4);
                let scale = grad32.iter().fold(0.0f64, |m, g| m.max(g.abs()));
                assert_allclose(&what, &values(grad), &grad32, rounding, rounding * scale);
            }
        }
    }
}

/// Logits at ±f32::MAX at T = 0.5 (their difference overflows f32) on both
/// paths: finite loss and gradient. The teacher agrees with the student, so
/// the soft term is 0.
#[test]
fn extreme_logits_stay_finite() {
    for (_, device) in devices() {
        let device = device.autodiff();
        for fused in [true, false] {
            let kd = KdLossConfig::new()
                .with_temperature(0.5)
                .with_fused_kernel(fused)
                .init();
            let big = f32::MAX as f64;
            let z = tensor2(&[big, -big, 0.0, -big, big, big], [2, 3], &device).require_grad();
            let v = tensor2(&[big, -big, 0.0, -big, big, big], [2, 3], &device);
            let parts = kd.forward_parts(z.clone(), v, labels(&[0, 1], &device));
            let grad = values(z.grad(&parts.total.clone().backward()).expect("gradient"));
            let (total, soft) = (values(parts.total), values(parts.soft));
            assert!(total[0].is_finite(), "{device:?} fused {fused}: {total:?}");
            assert!(soft[0].abs() < 1e-6, "{device:?} fused {fused}: {soft:?}");
            assert!(
                grad.iter().all(|g| g.is_finite()),
                "{device:?} fused {fused}: {grad:?}"
            );
        }
    }
}

/// Standardisation of rows whose variance overflows f32, and of constant rows
/// (whose standard deviation is 0): the z-scores of the definition, and a
/// finite gradient.
#[test]
fn standardization_of_huge_and_constant_rows() {
    for (_, device) in devices() {
        let s = values(standardize(tensor2(&[1e30, 0.0, -1e30], [1, 3], &device)));
        // mean 0, unbiased std 1e30.
        assert_allclose("huge row", &s, &[1.0, 0.0, -1.0], 1e-6, 1e-6);

        let device = device.autodiff();
        let kd = KdLossConfig::new().with_logit_standardization(true).init();
        let z = tensor2(&[2.0, 2.0, 2.0, 1.0, 0.0, -1.0], [2, 3], &device).require_grad();
        let v = tensor2(&[1.0, 1.0, 1.0, 0.5, 0.0, 3.0], [2, 3], &device);
        let loss = kd.forward(z.clone(), v, labels(&[0, 2], &device));
        let grad = values(z.grad(&loss.clone().backward()).expect("gradient"));
        assert!(values(loss)[0].is_finite());
        assert!(grad.iter().all(|g| g.is_finite()), "{device:?}: {grad:?}");
    }
}

/// DKD's target-class term when the target's probability is ~5e-6: against the
/// binary KL written out in f64 (a difference of two log-sum-exps for
/// `log(1 − p_t)` was off by 20% at such sizes in f32).
#[test]
fn dkd_target_term_with_a_small_target_probability() {
    let z = [-8.0, 2.0, 1.0, -9.5, 0.0, 3.0];
    let v = [-9.0, 1.0, 3.0, -10.0, 2.0, 1.0];
    let y = [0usize, 0];
    let t = 1.0;
    // TCKD per row = KL([p_t, 1 − p_t] ‖ [q_t, 1 − q_t]), batch mean, × T².
    let (p, q) = (reference_softmax(&v, 3, t), reference_softmax(&z, 3, t));
    let mut expected = 0.0;
    for (row, &target) in y.iter().enumerate() {
        let (pt, qt) = (p[row * 3 + target], q[row * 3 + target]);
        let (pr, qr) = ((-pt).ln_1p(), (-qt).ln_1p());
        expected += pt * (pt.ln() - qt.ln()) + (1.0 - pt) * (pr - qr);
    }
    expected *= t * t / 2.0;
    assert!(expected > 0.0 && expected < 1e-3, "{expected}");
    for (_, device) in devices() {
        let dkd = DkdLossConfig::new().with_temperature(t).init();
        let parts = dkd.forward_parts(
            tensor2(&z, [2, 3], &device),
            tensor2(&v, [2, 3], &device),
            labels(&[0, 0], &device),
        );
        assert_allclose(
            &format!("{device:?} tckd"),
            &values(parts.tckd),
            &[expected],
            1e-3,
            0.0,
        );
    }
}

/// A teacher in another float dtype is cast to the student's: an f64 teacher
/// with an f32 student gives the all-f32 loss.
#[test]
fn teacher_dtype_is_converted_to_the_students() {
    for (_, device) in devices_f64() {
        let kd = KdLossConfig::new().init();
        let z = [0.5, -1.0, 2.0, 0.0];
        let v = [1.0, 0.0, -1.0, 0.5];
        let mixed = kd.forward(
            tensor2(&z, [2, 2], &device),
            tensor2_f64(&v, [2, 2], &device),
            labels(&[0, 1], &device),
        );
        assert_eq!(mixed.dtype(), DType::F32);
        let same = kd.forward(
            tensor2(&z, [2, 2], &device),
            tensor2(&v, [2, 2], &device),
            labels(&[0, 1], &device),
        );
        assert_allclose("mixed dtypes", &values(mixed), &values(same), 1e-6, 0.0);
    }
}

/// A student on an autodiff device with a teacher computed without autodiff
/// (an inference-mode model): the usual training step works, on both paths.
#[test]
fn teacher_without_autodiff() {
    for (_, device) in devices() {
        for fused in [true, false] {
            let kd = KdLossConfig::new().with_fused_kernel(fused).init();
            let z =
                tensor2(&[0.5, -1.0, 2.0, 0.0], [2, 2], &device.clone().autodiff()).require_grad();
            let v = tensor2(&[1.0, 0.0, -1.0, 0.5], [2, 2], &device);
            let loss = kd.forward(z.clone(), v, labels(&[0, 1], &device.clone().autodiff()));
            assert!(
                z.grad(&loss.backward()).is_some(),
                "{device:?} fused {fused}"
            );
        }
    }
}

/// The fused kernel's multi-threaded path (≥ 65,536 elements, rows that do
/// not divide between threads) against the closed form in f64, with
/// `forward_parts` and `ignore_index`, element by element.
#[test]
fn fused_kernel_multithreaded_matches_the_closed_form() {
    let mut rng = Rng::new(31);
    for [rows, classes] in [[7usize, 10007usize], [3, 65537]] {
        let z = rng.normals(rows * classes, 3.0);
        let v = rng.normals(rows * classes, 3.0);
        let mut y: Vec<i64> = (0..rows).map(|_| rng.below(classes) as i64).collect();
        y[1] = -100;
        let (t, ws, wh) = (2.5, 0.8, 0.2);
        // Closed form: rows kept = all but row 1; gradient (ws·T(q − p) + wh(q1 − onehot)) / kept.
        let (p, q, q1) = (
            reference_softmax(&v, classes, t),
            reference_softmax(&z, classes, t),
            reference_softmax(&z, classes, 1.0),
        );
        let kept = (rows - 1) as f64;
        let mut soft = 0.0;
        let mut hard = 0.0;
        let mut grad = vec![0.0; rows * classes];
        for r in (0..rows).filter(|&r| r != 1) {
            let range = r * classes..(r + 1) * classes;
            soft += t
                * t
                * range
                    .clone()
                    .map(|i| {
                        if p[i] > 0.0 {
                            p[i] * (p[i].ln() - q[i].ln())
                        } else {
                            0.0
                        }
                    })
                    .sum::<f64>();
            hard -= q1[r * classes + y[r] as usize].ln();
            for i in range {
                let onehot = if i == r * classes + y[r] as usize {
                    1.0
                } else {
                    0.0
                };
                grad[i] = (ws * t * (q[i] - p[i]) + wh * (q1[i] - onehot)) / kept;
            }
        }
        let (soft, hard) = (soft / kept, hard / kept);
        for (_, device) in devices_f64() {
            let device = device.autodiff();
            let kd = KdLossConfig::new()
                .with_temperature(t)
                .with_soft_weight(ws)
                .with_hard_weight(wh)
                .with_ignore_index(Some(-100))
                .init();
            let zt = tensor2(&z, [rows, classes], &device).require_grad();
            let parts = kd.forward_parts(
                zt.clone(),
                tensor2(&v, [rows, classes], &device),
                labels(&y, &device),
            );
            let what = |s: &str| format!("{rows}×{classes} {s} {device:?}");
            assert_allclose(&what("soft"), &values(parts.soft), &[soft], 1e-5, 0.0);
            assert_allclose(&what("hard"), &values(parts.hard), &[hard], 1e-5, 0.0);
            let total = kd.forward(
                zt.clone(),
                tensor2(&v, [rows, classes], &device),
                labels(&y, &device),
            );
            let g = values(zt.grad(&total.backward()).expect("gradient"));
            assert_allclose(&what("gradient"), &g, &grad, 1e-4, 1e-8);
            let sums: Vec<f64> = g.chunks(classes).map(|row| row.iter().sum()).collect();
            // f32 rounding of a sum of `classes` entries (the autodiff path, without
            // the kernel, reaches 1e-6 at 10007 classes).
            let rounding = 1e-9 * classes as f64;
            assert_allclose(&what("row sums"), &sums, &vec![0.0; rows], 0.0, rounding);
        }
    }
}

/// A row mask that also drops `near_tie` (a row where student and teacher
/// agree to within f32 rounding at high T) for TVD: its gradient is
/// `½ sign(q − p)`, which rounding decides there, on either path.
fn keep_rows<const N: usize>(
    keep: [bool; N],
    divergence: Divergence,
    near_tie: usize,
) -> TensorData {
    let mut keep = keep;
    if divergence == Divergence::Tvd {
        keep[near_tie] = false;
    }
    TensorData::new(keep.to_vec(), [N])
}

/// The absolute error f32 allows in a soft-term gradient: 1e-5 of its
/// largest entry, plus the rounding of `(T²/T)·(h − q Σh)` when `p` and `q`
/// are near-uniform at high T (entries of size ~1/C, held to f32's 6e-8
/// relative, whose differences are the gradient). At T = 100 the f32 autodiff
/// path is off by as much (measured: 1e-6 on entries of 1e-4).
fn f32_gradient_floor(reference: &[f64], t: f64) -> f64 {
    let scale = reference.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    1e-5 * scale + 2e-8 * t
}

/// A loss's values and student gradients, on the device and dtype `make` gives.
type Make = fn(&[f64], [usize; 2], &Device) -> Tensor<2>;

/// `run(fused, make)` in f32 — on each path of `paths` (the fused kernel,
/// autodiff) — against the autodiff path in f64: values to 1e-4 relative and
/// 1e-6 absolute, each gradient to 1e-4 relative and [`f32_gradient_floor`].
fn assert_f32_matches_f64(
    what: &str,
    t: f64,
    paths: &[bool],
    run: impl Fn(bool, Make) -> (Vec<f64>, Vec<Vec<f64>>),
) {
    let (want, want_grads) = run(false, tensor2_f64);
    for &fused in paths {
        let (got, grads) = run(fused, tensor2);
        let what = |s: &str| format!("{what} T={t} {s} fused {fused}");
        assert_allclose(&what("values"), &got, &want, 1e-4, 1e-6);
        for (k, (grad, want_grad)) in grads.iter().zip(&want_grads).enumerate() {
            let atol = f32_gradient_floor(want_grad, t);
            assert_allclose(&what(&format!("gradient {k}")), grad, want_grad, 1e-4, atol);
        }
    }
}

/// Every divergence in f32, through the fused kernel and through autodiff,
/// against the reference functions (burn ops, autodiff) in f64, on rows that break plain formulas:
/// logits up to ±1e4, classes both models rule out (`−inf`), a near-match, at
/// T = 0.05, 1 and 100, with a row mask and an ignored label: value and
/// gradient, element by element.
#[test]
fn every_divergence_fused_matches_f64_reference_at_extremes() {
    let ninf = f64::NEG_INFINITY;
    let classes = 6;
    #[rustfmt::skip]
    let z = [
        1e4, -1e4, 9999.5, 3.0, -2.0, 9998.0,
        2.0, 0.5, ninf, -1.0, 0.0, ninf,
        0.3, -0.2, 0.1, 0.0, -0.4, 0.25,
        -3.0, 4.0, 1.5, -0.5, 2.5, 0.0,
        5.0, -1e4, 0.0, 2.0, 1e4, -5.0,
    ];
    #[rustfmt::skip]
    let v = [
        9999.0, -9999.0, 1e4, 2.0, -1.0, 9997.0,
        1.0, 1.5, ninf, 0.0, -0.5, ninf,
        0.3, -0.2, 0.1, 0.0, -0.4, 0.2501,
        -2.0, 3.0, 2.5, -1.5, 0.5, 1.0,
        -1e4, 4.0, 1e4, 9999.0, 3.0, -2.0,
    ];
    let rows = z.len() / classes;
    let y = [0i64, 3, -100, 1, 4];
    for (_, device) in devices_f64() {
        let device = device.autodiff();
        for divergence in EVERY_DIVERGENCE {
            let keep = keep_rows([true, true, true, false, true], divergence, 2);
            let targets = || {
                let keep = Tensor::<1, burn::tensor::Bool>::from_data(keep.clone(), &device);
                Targets::new(labels(&y, &device)).with_keep_rows(keep)
            };
            for t in [0.05, 1.0, 100.0] {
                let kd = |fused: bool| {
                    KdLossConfig::new()
                        .with_temperature(t)
                        .with_divergence(divergence)
                        .with_ignore_index(Some(-100))
                        .with_fused_kernel(fused)
                        .init()
                };
                let run = |fused: bool, make: Make| {
                    let zt = make(&z, [rows, classes], &device).require_grad();
                    let vt = make(&v, [rows, classes], &device);
                    let loss = kd(fused).forward(zt.clone(), vt, targets());
                    let grad = values(zt.grad(&loss.clone().backward()).expect("gradient"));
                    (values(loss), vec![grad])
                };
                let what = format!("{divergence:?} {device:?}");
                assert_f32_matches_f64(&what, t, &[true, false], run);
            }
        }
    }
}

/// A top-k teacher (k = 3 of 6) in f32, through the fused kernel and through
/// autodiff, against the reference in f64 (the autodiff JSD once sent a class's
/// whole mixture gradient one way where student and teacher tie in f32), every divergence, T = 0.05, 1 and 100: a student whose
/// tail lies 1e4 below its top classes (its tail's exponentials underflow f32
/// and are rescaled), a class both models rule out, a near-match. The
/// teacher's logits are close together so that its tail mass, `1 − Σ p_top`,
/// stays far above f32 rounding at every temperature.
#[test]
fn top_k_fused_matches_f64_reference_at_extremes() {
    let ninf = f64::NEG_INFINITY;
    let (classes, k) = (6, 3);
    #[rustfmt::skip]
    let z = [
        1e4, 9999.0, 9998.5, -1e4, -9990.0, -9995.0,
        2.0, 0.5, ninf, -1.0, 0.0, 1.0,
        0.3, -0.2, 0.1, 0.0, -0.4, 0.25,
    ];
    #[rustfmt::skip]
    let v = [
        3.0, 2.95, 2.9, 2.85, 2.8, 2.75,
        1.0, 1.02, ninf, 0.98, 0.96, 1.01,
        0.3, -0.2, 0.1, 0.0, -0.4, 0.2501,
    ];
    let rows = z.len() / classes;
    let y = [0i64, 3, 1];
    for (_, device) in devices_f64() {
        let device = device.autodiff();
        for divergence in EVERY_DIVERGENCE {
            let keep = keep_rows([true; 3], divergence, 2);
            for t in [0.05, 1.0, 100.0] {
                let run = |fused: bool, make: Make| {
                    let kd = KdLossConfig::new()
                        .with_temperature(t)
                        .with_divergence(divergence)
                        .with_fused_kernel(fused)
                        .init();
                    let teacher =
                        SparseTeacher::top_k(make(&v, [rows, classes], &device), k, t).unwrap();
                    let zt = make(&z, [rows, classes], &device).require_grad();
                    let keep = Tensor::<1, burn::tensor::Bool>::from_data(keep.clone(), &device);
                    let targets = Targets::new(labels(&y, &device)).with_keep_rows(keep);
                    let loss = kd.forward(zt.clone(), teacher, targets);
                    let grad = values(zt.grad(&loss.clone().backward()).expect("gradient"));
                    (values(loss), vec![grad])
                };
                let what = format!("top-{k} {divergence:?} {device:?}");
                assert_f32_matches_f64(&what, t, &[true, false], run);
            }
        }
    }
}

/// DKD through the fused f32 kernel against its reference (burn ops,
/// autodiff) in f64: a teacher sure of the target (`1 − p_y` below f32's
/// resolution), a target the student gives ~e⁻²⁰, logits ±1e4, a class both
/// rule out, two models that nearly agree (row 3), at T = 0.05, 1 and 100,
/// total, both parts and every row, with a row mask.
#[test]
fn dkd_fused_matches_f64_reference_at_extremes() {
    let ninf = f64::NEG_INFINITY;
    let classes = 5;
    #[rustfmt::skip]
    let z = [
        1e4, -1e4, 9999.0, 0.0, 9998.5,
        -20.0, 0.0, 1.0, -0.5, 0.2,
        0.5, ninf, 0.25, -1.0, 2.0,
        1.0, 0.9, 1.1, 0.95, 1.05,
    ];
    #[rustfmt::skip]
    let v = [
        9999.0, 1e4, -1e4, 2.0, 9990.0,
        30.0, 1.0, 2.0, 0.0, -1.0,
        0.4, ninf, 0.3, -1.2, 1.5,
        1.0, 0.9, 1.1, 0.95, 1.0501,
    ];
    let rows = z.len() / classes;
    let y = [2i64, 0, 4, 1];
    let keep = [true, true, true, false];
    for (name, device) in devices_f64() {
        // Where the crate's feature compiles the kernel in for this backend;
        // without it `fused` takes burn ops, whose f32 rows are not this precise.
        let kernel = kernel_serves(name);
        let device = device.autodiff();
        for t in [0.05, 1.0, 100.0] {
            let run = |fused: bool, make: Make| {
                let dkd = DkdLossConfig::new()
                    .with_temperature(t)
                    .with_alpha(1.0)
                    .with_beta(8.0)
                    .with_fused_kernel(fused)
                    .init();
                let keep_rows = Tensor::<1, burn::tensor::Bool>::from_data(
                    TensorData::new(keep.to_vec(), [rows]),
                    &device,
                );
                let targets =
                    || Targets::new(labels(&y, &device)).with_keep_rows(keep_rows.clone());
                let zt = make(&z, [rows, classes], &device).require_grad();
                let vt = || make(&v, [rows, classes], &device);
                let total = dkd.forward(zt.clone(), vt(), targets());
                let grad = values(zt.grad(&total.clone().backward()).expect("gradient"));
                let parts = dkd.forward_parts(zt.clone(), vt(), targets());
                let tckd_grad = values(zt.grad(&parts.tckd.clone().backward()).expect("gradient"));
                // Each row too, by the kernel: the means hide row 2 (its terms
                // nearly cancel at T = 100).
                let rows = match kernel {
                    true => values(dkd.forward_no_reduction(zt.clone(), vt(), targets())),
                    false => Vec::new(),
                };
                let values = [values(total), values(parts.tckd), values(parts.nckd), rows].concat();
                (values, vec![grad, tckd_grad])
            };
            assert_f32_matches_f64(&format!("DKD {device:?}"), t, &[true], run);
        }
    }
}

/// The normalised JSD tends to forward KL as β → 0 and to reverse KL as β → 1,
/// continuously; TRL's form tends to 0 there (and jumps at the ends).
#[test]
fn normalized_jsd_limits() {
    for (_, device) in devices_f64() {
        let mut rng = Rng::new(4);
        let z = tensor2_f64(&rng.normals(12, 2.0), [3, 4], &device);
        let v = tensor2_f64(&rng.normals(12, 2.0), [3, 4], &device);
        let kd = |divergence: Divergence| {
            let kd = KdLossConfig::new().with_divergence(divergence).init();
            values(
                kd.forward_parts(z.clone(), v.clone(), Targets::unlabelled())
                    .soft,
            )[0]
        };
        let (forward, reverse) = (kd(Divergence::ForwardKl), kd(Divergence::ReverseKl));
        for eps in [1e-3, 1e-5] {
            let near_zero = kd(Divergence::JsdNormalized { beta: eps });
            let near_one = kd(Divergence::JsdNormalized { beta: 1.0 - eps });
            assert!(
                (near_zero - forward).abs() < 10.0 * eps * forward,
                "{near_zero} vs {forward}"
            );
            assert!(
                (near_one - reverse).abs() < 10.0 * eps * reverse,
                "{near_one} vs {reverse}"
            );
            assert!(kd(Divergence::Jsd { beta: eps }) < 10.0 * eps * forward);
        }
        assert_eq!(kd(Divergence::JsdNormalized { beta: 0.0 }), forward);
        assert_eq!(kd(Divergence::JsdNormalized { beta: 1.0 }), reverse);
        // At β = ½ the normalised JSD is 4 × the symmetric JSD.
        let half = kd(Divergence::Jsd { beta: 0.5 });
        let normalized = kd(Divergence::JsdNormalized { beta: 0.5 });
        assert!((normalized - 4.0 * half).abs() < 1e-12 * normalized);
    }
}

/// Any split of a batch into micro-batches, each normalised by the global count
/// of kept rows, sums to the full batch's loss and gradient (to 1e-6), for
/// every divergence, with masks and ignored labels.
#[test]
fn micro_batches_sum_to_the_full_batch() {
    let (rows, classes) = (10, 6);
    let mut rng = Rng::new(77);
    let z = rng.normals(rows * classes, 2.0);
    let v = rng.normals(rows * classes, 2.0);
    let mut y: Vec<i64> = (0..rows).map(|_| rng.below(classes) as i64).collect();
    y[3] = -100;
    y[8] = -100;
    let keep: Vec<bool> = (0..rows).map(|r| r != 5).collect();
    let kept = (0..rows).filter(|&r| keep[r] && y[r] != -100).count();
    for (_, device) in devices_f64() {
        let device = device.autodiff();
        for divergence in [
            Divergence::ForwardKl,
            Divergence::ReverseKl,
            Divergence::Jsd { beta: 0.5 },
            Divergence::Tvd,
        ] {
            for fused in [true, false] {
                let kd = KdLossConfig::new()
                    .with_divergence(divergence)
                    .with_fused_kernel(fused)
                    .with_ignore_index(Some(-100))
                    .init();
                let run = |range: std::ops::Range<usize>, reduction: Reduction| {
                    let n = range.len();
                    let zt = tensor2_f64(
                        &z[range.start * classes..range.end * classes],
                        [n, classes],
                        &device,
                    )
                    .require_grad();
                    let vt = tensor2_f64(
                        &v[range.start * classes..range.end * classes],
                        [n, classes],
                        &device,
                    );
                    let mask = Tensor::<1, burn::tensor::Bool>::from_data(
                        TensorData::new(keep[range.clone()].to_vec(), [n]),
                        &device,
                    );
                    let targets = Targets::new(labels(&y[range], &device))
                        .with_keep_rows(mask)
                        .with_reduction(reduction);
                    let loss = kd.forward(zt.clone(), TeacherOutput::Logits(vt), targets);
                    let grad = values(zt.grad(&loss.clone().backward()).expect("gradient"));
                    (values(loss)[0], grad)
                };
                let (whole, whole_grad) = run(0..rows, Reduction::Mean);
                for cuts in [vec![0, 4, 10], vec![0, 1, 2, 7, 10], vec![0, 3, 6, 9, 10]] {
                    let mut sum = 0.0;
                    let mut grad = Vec::new();
                    for pair in cuts.windows(2) {
                        let (loss, g) = run(pair[0]..pair[1], Reduction::GlobalCount(kept));
                        sum += loss;
                        grad.extend(g);
                    }
                    let what = format!("{divergence:?} fused {fused} cuts {cuts:?}");
                    assert_allclose(&what, &[sum], &[whole], 1e-6, 1e-12);
                    assert_allclose(&what, &grad, &whole_grad, 1e-6, 1e-12);
                }
            }
        }
    }
}

/// Top-k with `k = C` is the dense loss for every divergence.
#[test]
fn top_k_with_every_class_is_dense() {
    for (_, device) in devices_f64() {
        let mut rng = Rng::new(8);
        let z = tensor2_f64(&rng.normals(15, 2.0), [3, 5], &device);
        let v = tensor2_f64(&rng.normals(15, 2.0), [3, 5], &device);
        for divergence in [
            Divergence::ForwardKl,
            Divergence::ReverseKl,
            Divergence::Jsd { beta: 0.3 },
            Divergence::SkewReverseKl { alpha: 0.2 },
            Divergence::Tvd,
        ] {
            let kd = KdLossConfig::new()
                .with_divergence(divergence)
                .with_temperature(2.0)
                .init();
            let y = || labels(&[0, 4, 2], &device);
            let sparse = burn_distill::SparseTeacher::top_k(v.clone(), 5, 2.0).unwrap();
            let a = values(kd.forward(z.clone(), sparse, y()));
            let b = values(kd.forward(z.clone(), v.clone(), y()));
            assert_allclose(&format!("{divergence:?}"), &a, &b, 1e-12, 1e-14);
        }
    }
}

/// Central finite differences (f64) of every loss's value against its student
/// gradient: each divergence with a dense and a top-k teacher, with masks and
/// `ignore_index`, logit standardisation, and DKD.
#[test]
fn finite_differences_match_every_gradient() {
    let (rows, classes) = (3, 5);
    let mut rng = Rng::new(123);
    let z = rng.normals(rows * classes, 2.0);
    let v = rng.normals(rows * classes, 2.0);
    let y = [1i64, -100, 4];
    let keep = [true, true, false];
    let device = Device::flex().autodiff();
    type Loss = Box<dyn Fn(Tensor<2>) -> Tensor<1>>;
    let mut losses: Vec<(String, Loss)> = Vec::new();
    for divergence in [
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::Jsd { beta: 0.3 },
        Divergence::JsdNormalized { beta: 0.7 },
        Divergence::SkewForwardKl { alpha: 0.2 },
        Divergence::SkewReverseKl { alpha: 0.2 },
        Divergence::Tvd,
    ] {
        for top_k in [None, Some(3)] {
            let kd = KdLossConfig::new()
                .with_temperature(1.5)
                .with_divergence(divergence)
                .with_ignore_index(Some(-100))
                .init();
            let (v, device) = (v.clone(), device.clone());
            losses.push((
                format!("{divergence:?} top-k {top_k:?}"),
                Box::new(move |z| {
                    let vt = tensor2_f64(&v, [rows, classes], &device);
                    let teacher: TeacherOutput = match top_k {
                        Some(k) => burn_distill::SparseTeacher::top_k(vt, k, 1.5)
                            .unwrap()
                            .into(),
                        None => vt.into(),
                    };
                    let mask = Tensor::<1, burn::tensor::Bool>::from_data(keep, &device);
                    let targets = Targets::new(labels(&y, &device)).with_keep_rows(mask);
                    kd.forward(z, teacher, targets)
                }),
            ));
        }
    }
    let standardized = KdLossConfig::new().with_logit_standardization(true).init();
    let (vs, ds) = (v.clone(), device.clone());
    losses.push((
        "standardised".into(),
        Box::new(move |z| {
            let vt = tensor2_f64(&vs, [rows, classes], &ds);
            standardized.forward(z, vt, labels(&[0, 2, 4], &ds))
        }),
    ));
    let dkd = DkdLossConfig::new().init();
    let (vd, dd) = (v.clone(), device.clone());
    losses.push((
        "dkd".into(),
        Box::new(move |z| {
            let vt = tensor2_f64(&vd, [rows, classes], &dd);
            dkd.forward(z, vt, labels(&[0, 2, 4], &dd))
        }),
    ));
    for (name, loss) in &losses {
        let zt = tensor2_f64(&z, [rows, classes], &device).require_grad();
        let value = loss(zt.clone());
        let grad = values(zt.grad(&value.backward()).expect("gradient"));
        let eps = 1e-6;
        let numeric: Vec<f64> = (0..z.len())
            .map(|i| {
                let at = |delta: f64| {
                    let mut shifted = z.clone();
                    shifted[i] += delta;
                    values(loss(tensor2_f64(&shifted, [rows, classes], &device)))[0]
                };
                (at(eps) - at(-eps)) / (2.0 * eps)
            })
            .collect();
        assert_allclose(name, &grad, &numeric, 1e-5, 1e-8);
    }
}

/// Every divergence and DKD between two nearly agreeing models (the teacher's
/// logits the student's plus noise of 0.05: a student close to its teacher),
/// row by row, through the fused kernels in f32 against burn ops in f64, at
/// T = 1, 4, 20 and 100: within 2e-6 of each row on the CPU, 1e-5 on wgpu.
/// The plain per-class terms `p (ln p − ln q)`, or `p (ln p − ln m)` with a
/// mixture `m`, cancel here in f32 (the CPU kernel's rows with them were, at
/// T = 4 / 100: KL 2e-3 / 0.7, the JSDs 6e-3–3e-2 / 6–18 times the value,
/// the skews 2e-3–6e-3 / 2–3 times; burn ops' f32 rows alike); the kernels sum
/// terms of their share's size from the logits' difference.
#[test]
fn nearly_agreeing_models_keep_every_divergence_precise_at_every_temperature() {
    let mut rng = Rng::new(5);
    let (rows, classes) = (3, 1000);
    let z = rng.normals(rows * classes, 2.0);
    let noise = rng.normals(rows * classes, 0.05);
    let v: Vec<f64> = z.iter().zip(&noise).map(|(a, b)| a + b).collect();
    let y = [3i64, 500, 999];
    let flex = Device::flex();
    for (name, device) in devices() {
        if !kernel_serves(name) {
            continue;
        }
        for t in [1.0, 4.0, 20.0, 100.0] {
            let losses = EVERY_DIVERGENCE.iter().copied().map(Some).chain([None]);
            for loss in losses {
                let run = |fused: bool, make: Make, device: &Device| {
                    let (zt, vt) = (
                        make(&z, [rows, classes], device),
                        make(&v, [rows, classes], device),
                    );
                    let kd = |divergence| {
                        KdLossConfig::new()
                            .with_temperature(t)
                            .with_divergence(divergence)
                            .with_soft_weight(1.0)
                            .with_hard_weight(0.0)
                            .with_fused_kernel(fused)
                            .init()
                    };
                    let targets = Targets::new(labels(&y, device));
                    values(match loss {
                        Some(divergence) => kd(divergence).forward_no_reduction(zt, vt, targets),
                        None => DkdLossConfig::new()
                            .with_temperature(t)
                            .with_fused_kernel(fused)
                            .init()
                            .forward_no_reduction(zt, vt, targets),
                    })
                };
                let want = run(false, tensor2_f64, &flex);
                let got = run(true, tensor2, &device);
                let what = format!("{loss:?} {name} T={t}");
                // f32's rounding of the result on the CPU kernel; lavapipe's
                // sums round more.
                let rtol = if name == "wgpu" { 1e-5 } else { 2e-6 };
                assert_allclose(&what, &got, &want, rtol, 0.0);
            }
        }
    }
}
