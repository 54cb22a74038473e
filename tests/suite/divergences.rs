//! The divergence family, DKD, logit standardisation, top-k sparse teachers,
//! row masks and vocabulary truncation: against `divergence_torch.json`
//! (`scripts/gen_divergence_fixtures.py`, each written as its source library
//! writes it) and against identities.

use crate::common;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_distill::dkd::DkdLossConfig;
use burn_distill::sparse::SparseTeacher;
use burn_distill::{
    DistillError, Divergence, KdLossConfig, Targets, TeacherOutput, VocabularyRule,
};
use common::{
    EVERY_DIVERGENCE, Normals, Rng, assert_allclose, assert_close, assert_shape_mismatch, devices,
    devices_f64, labels, scalar, soft_loss, soft_rows, tensor2, tensor2_f64, values,
};
use serde::Deserialize;

fn log_softmax(logits: Tensor<2>, temperature: f64, dim: usize) -> Tensor<2> {
    burn_distill::temperature::log_softmax(logits, temperature, dim).unwrap()
}

fn forward_kl(q: Tensor<2>, p: Tensor<2>) -> Tensor<1> {
    Divergence::ForwardKl.rows(q, p).unwrap()
}

fn reverse_kl(q: Tensor<2>, p: Tensor<2>) -> Tensor<1> {
    Divergence::ReverseKl.rows(q, p).unwrap()
}

fn generalized_jsd(q: Tensor<2>, p: Tensor<2>, beta: f64) -> Tensor<1> {
    Divergence::Jsd { beta }.rows(q, p).unwrap()
}

fn skew_forward_kl(q: Tensor<2>, p: Tensor<2>, alpha: f64) -> Tensor<1> {
    Divergence::SkewForwardKl { alpha }.rows(q, p).unwrap()
}

fn skew_reverse_kl(q: Tensor<2>, p: Tensor<2>, alpha: f64) -> Tensor<1> {
    Divergence::SkewReverseKl { alpha }.rows(q, p).unwrap()
}

fn total_variation(q: Tensor<2>, p: Tensor<2>) -> Tensor<1> {
    Divergence::Tvd.rows(q, p).unwrap()
}

#[derive(Deserialize)]
struct Fixtures {
    batch: usize,
    classes: usize,
    temperature: f64,
    student_logits: Vec<f64>,
    teacher_logits: Vec<f64>,
    targets: Vec<i64>,
    masked_targets: Vec<i64>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    params: serde_json::Map<String, serde_json::Value>,
    value: Vec<f64>,
    grad: Vec<f64>,
}

impl Case {
    fn param(&self, key: &str) -> f64 {
        self.params[key].as_f64().unwrap()
    }
}

/// Every fixture case in f64 on flex and ndarray: value and the gradient of its
/// sum with respect to the student within 1e-8 (of the largest entry).
#[test]
fn matches_pytorch_references() {
    check_pytorch_references(devices_f64(), tensor2_f64, 1e-8);
}

/// Every fixture case in f32 on every device (wgpu too, when built with it),
/// through the fused kernel where it serves: within 1e-4.
#[test]
fn matches_pytorch_references_in_f32() {
    check_pytorch_references(devices(), tensor2, 1e-4);
}

fn check_pytorch_references(
    devices: Vec<(&'static str, Device)>,
    make: fn(&[f64], [usize; 2], &Device) -> Tensor<2>,
    rtol: f64,
) {
    let f: Fixtures =
        serde_json::from_str(include_str!("../fixtures/divergence_torch.json")).unwrap();
    assert_eq!(f.cases.len(), 19);
    let shape = [f.batch, f.classes];
    let t = f.temperature;
    for (name, device) in devices {
        let device = device.autodiff();
        for case in &f.cases {
            let z = make(&f.student_logits, shape, &device).require_grad();
            let v = make(&f.teacher_logits, shape, &device);
            let y = labels(&f.targets, &device);
            let log_q = || log_softmax(z.clone(), t, 1);
            let log_p = || log_softmax(v.clone(), t, 1);
            let what = format!("{name} {} {:?}", case.name, case.params);
            // The same divergence through `KdLoss` (soft term per row, no T²).
            let through = |divergence: Divergence, reference: Tensor<1>, teacher: TeacherOutput| {
                assert_close(
                    &format!("{what} (function)"),
                    &values(reference),
                    &case.value,
                    rtol,
                );
                let kd = KdLossConfig::new()
                    .with_temperature(t)
                    .with_scale_by_t_squared(false)
                    .with_divergence(divergence)
                    .init();
                soft_rows(&kd, z.clone(), teacher)
            };
            let through_loss = |divergence, reference| {
                through(divergence, reference, TeacherOutput::Logits(v.clone()))
            };
            let value: Tensor<1> = match case.name.as_str() {
                "jsd" => {
                    let beta = case.param("beta");
                    let reference = generalized_jsd(log_q(), log_p(), beta);
                    through_loss(Divergence::Jsd { beta }, reference)
                }
                "tvd" => through_loss(Divergence::Tvd, total_variation(log_q(), log_p())),
                "jsd_normalized" => {
                    let divergence = Divergence::JsdNormalized {
                        beta: case.param("beta"),
                    };
                    through_loss(divergence, divergence.rows(log_q(), log_p()).unwrap())
                }
                "skew_forward" => {
                    let alpha = case.param("alpha");
                    let reference = skew_forward_kl(log_q(), log_p(), alpha);
                    through_loss(Divergence::SkewForwardKl { alpha }, reference)
                }
                "skew_reverse" => {
                    let alpha = case.param("alpha");
                    let reference = skew_reverse_kl(log_q(), log_p(), alpha);
                    through_loss(Divergence::SkewReverseKl { alpha }, reference)
                }
                "dkd" => DkdLossConfig::new().init().forward(z.clone(), v.clone(), y),
                "dkd_tckd" => {
                    DkdLossConfig::new()
                        .init()
                        .forward_parts(z.clone(), v.clone(), y)
                        .tckd
                }
                "dkd_nckd" => {
                    DkdLossConfig::new()
                        .init()
                        .forward_parts(z.clone(), v.clone(), y)
                        .nckd
                }
                "kd_standardized" => KdLossConfig::new()
                    .with_temperature(t)
                    .with_logit_standardization(true)
                    .init()
                    .forward(z.clone(), v.clone(), y),
                "topk" => {
                    let k = case.param("k") as usize;
                    let sparse = SparseTeacher::top_k(v.clone(), k, t).unwrap();
                    // The burn-ops path of the same loss, as the function.
                    let unfused = KdLossConfig::new()
                        .with_temperature(t)
                        .with_scale_by_t_squared(false)
                        .with_fused_kernel(false)
                        .init();
                    let reference =
                        soft_rows(&unfused, z.clone(), TeacherOutput::TopK(sparse.clone()));
                    through(
                        Divergence::ForwardKl,
                        reference,
                        TeacherOutput::TopK(sparse),
                    )
                }
                "masked_kd" => KdLossConfig::new()
                    .with_temperature(t)
                    .with_ignore_index(Some(-100))
                    .init()
                    .forward(z.clone(), v.clone(), labels(&f.masked_targets, &device)),
                other => panic!("unknown case {other}"),
            };
            assert_close(&what, &values(value.clone()), &case.value, rtol);
            let grad = values(z.grad(&value.sum().backward()).unwrap());
            assert_close(&format!("{what} grad"), &grad, &case.grad, rtol);
        }
    }
}

fn random_pair(seed: u64, rows: usize, classes: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let mut rng = Rng::new(seed);
    (
        log_softmax(
            tensor2(&rng.normals(rows * classes, 3.0), [rows, classes], device),
            1.0,
            1,
        ),
        log_softmax(
            tensor2(&rng.normals(rows * classes, 3.0), [rows, classes], device),
            1.0,
            1,
        ),
    )
}

#[test]
fn jsd_is_symmetric_at_half_and_bounded_by_ln2() {
    for (name, device) in devices() {
        let (q, p) = random_pair(1, 8, 10, &device);
        let ab = values(generalized_jsd(q.clone(), p.clone(), 0.5));
        let ba = values(generalized_jsd(p.clone(), q.clone(), 0.5));
        assert_close(name, &ab, &ba, 1e-6);
        assert!(
            ab.iter().all(|&j| (-1e-7..=2f64.ln() + 1e-7).contains(&j)),
            "{name}: {ab:?}"
        );
        // The endpoints are the two KLs, and reverse KL is forward KL swapped.
        assert_close(
            name,
            &values(generalized_jsd(q.clone(), p.clone(), 0.0)),
            &values(forward_kl(q.clone(), p.clone())),
            1e-7,
        );
        assert_close(
            name,
            &values(generalized_jsd(q.clone(), p.clone(), 1.0)),
            &values(reverse_kl(q.clone(), p.clone())),
            1e-7,
        );
        assert_close(
            name,
            &values(reverse_kl(q.clone(), p.clone())),
            &values(forward_kl(p, q)),
            1e-7,
        );
    }
}

/// −inf (probability 0) in both distributions: finite values and gradients.
#[test]
fn mixtures_stay_finite_with_masked_classes() {
    let ninf = f64::NEG_INFINITY;
    for (name, device) in devices() {
        let device = device.autodiff();
        let z = tensor2(&[1.0, ninf, 0.5, 2.0], [1, 4], &device).require_grad();
        let v = tensor2(&[0.0, ninf, 1.0, 1.5], [1, 4], &device);
        for value in [
            generalized_jsd(
                log_softmax(z.clone(), 2.0, 1),
                log_softmax(v.clone(), 2.0, 1),
                0.5,
            ),
            skew_forward_kl(
                log_softmax(z.clone(), 2.0, 1),
                log_softmax(v.clone(), 2.0, 1),
                0.1,
            ),
            skew_reverse_kl(
                log_softmax(z.clone(), 2.0, 1),
                log_softmax(v.clone(), 2.0, 1),
                0.1,
            ),
        ] {
            assert!(scalar(value.clone()).is_finite(), "{name}");
            let g = values(z.grad(&value.backward()).unwrap());
            assert!(g.iter().all(|x| x.is_finite()), "{name}: {g:?}");
            assert_eq!(g[1], 0.0, "{name}: masked class gradient");
        }
    }
}

/// Logit standardisation in f32, through the fused kernel (the student's
/// standardisation differentiated by autodiff, the KD term by the kernel's
/// node) and through autodiff alone, against the same PyTorch reference.
#[test]
fn standardized_kd_in_f32_on_both_paths() {
    let f: Fixtures =
        serde_json::from_str(include_str!("../fixtures/divergence_torch.json")).unwrap();
    let case = f
        .cases
        .iter()
        .find(|c| c.name == "kd_standardized")
        .unwrap();
    let shape = [f.batch, f.classes];
    for (name, device) in devices() {
        let device = device.autodiff();
        for fused in [true, false] {
            let kd = KdLossConfig::new()
                .with_temperature(f.temperature)
                .with_logit_standardization(true)
                .with_fused_kernel(fused)
                .init();
            let z = tensor2(&f.student_logits, shape, &device).require_grad();
            let v = tensor2(&f.teacher_logits, shape, &device);
            let loss = kd.forward(z.clone(), v, labels(&f.targets, &device));
            let grad = values(z.grad(&loss.clone().backward()).unwrap());
            let what = format!("{name} fused {fused}");
            assert_allclose(&what, &values(loss), &case.value, 1e-5, 0.0);
            assert_allclose(&what, &grad, &case.grad, 1e-4, 1e-7);
        }
    }
}

/// DKD's decomposition: KL(p‖q) = TCKD + (1 − p_t)·NCKD, row by row (T² on both sides).
#[test]
fn dkd_parts_decompose_kd() {
    let mut rng = Rng::new(5);
    let classes = 9;
    for (name, device) in devices() {
        for _ in 0..4 {
            let z = rng.normals(classes, 2.0);
            let v = rng.normals(classes, 2.0);
            let y = rng.below(classes);
            let t = 4.0;
            let parts = DkdLossConfig::new()
                .with_temperature(t)
                .init()
                .forward_parts(
                    tensor2(&z, [1, classes], &device),
                    tensor2(&v, [1, classes], &device),
                    labels(&[y as i64], &device),
                );
            let kd = soft_loss(
                &KdLossConfig::new().with_temperature(t).init(),
                tensor2(&z, [1, classes], &device),
                tensor2(&v, [1, classes], &device),
            );
            let p_t = common::reference_softmax(&v, classes, t)[y];
            let rebuilt = scalar(parts.tckd) + (1.0 - p_t) * scalar(parts.nckd);
            assert_close(name, &[rebuilt], &[scalar(kd)], 1e-5);
        }
    }
}

/// Rows left out by the mask or by `ignore_index` whose logits are not
/// usable (a padding row: the student all `−inf`, the teacher NaN) change
/// nothing: the loss is the kept row's, finite, and their gradient is exactly 0,
/// for every divergence and DKD, fused and not, with logit standardisation too.
#[test]
fn left_out_padding_rows_stay_out() {
    let ninf = f64::NEG_INFINITY;
    #[rustfmt::skip]
    let z = [1.0, 2.0, 0.0, ninf, ninf, ninf, ninf, ninf, ninf];
    #[rustfmt::skip]
    let v = [0.0, 1.0, 2.0, f64::NAN, 0.0, 0.0, f64::NAN, f64::NAN, f64::NAN];
    for (name, device) in devices() {
        let device = device.autodiff();
        // Row 0 kept; row 1 masked; row 2 masked (DKD) or labelled -100 (KD).
        let check =
            |what: String,
             labels_: [i64; 3],
             keep: [bool; 3],
             loss: &dyn Fn(Tensor<2>, Tensor<2>, Targets) -> Tensor<1>| {
                let zt = tensor2(&z, [3, 3], &device).require_grad();
                let keep = Tensor::<1, Bool>::from_data(keep, &device);
                let targets = Targets::new(labels(&labels_, &device)).with_keep_rows(keep);
                let value = loss(zt.clone(), tensor2(&v, [3, 3], &device), targets);
                let g = values(zt.grad(&value.clone().backward()).unwrap());
                let alone = loss(
                    tensor2(&z[..3], [1, 3], &device),
                    tensor2(&v[..3], [1, 3], &device),
                    Targets::new(labels(&labels_[..1], &device)),
                );
                assert_eq!(scalar(value), scalar(alone), "{what}");
                assert!(g[..3].iter().all(|x| x.is_finite()), "{what}: {g:?}");
                assert_eq!(&g[3..], &[0.0; 6], "{what}");
            };
        for fused in [true, false] {
            for (divergence, standardized) in EVERY_DIVERGENCE
                .iter()
                .map(|&d| (d, false))
                .chain([(Divergence::ForwardKl, true)])
            {
                let kd = KdLossConfig::new()
                    .with_divergence(divergence)
                    .with_fused_kernel(fused)
                    .with_logit_standardization(standardized)
                    .with_ignore_index(Some(-100))
                    .init();
                let what =
                    format!("{name} {divergence:?} standardised {standardized} fused {fused}");
                check(what, [1, 0, -100], [true, false, true], &|z, v, t| {
                    kd.forward(z, v, t)
                });
            }
            for standardized in [false, true] {
                let dkd = DkdLossConfig::new()
                    .with_fused_kernel(fused)
                    .with_logit_standardization(standardized)
                    .init();
                let what = format!("{name} DKD standardised {standardized} fused {fused}");
                check(what, [1, 0, 2], [true, false, false], &|z, v, t| {
                    dkd.forward(z, v, t)
                });
            }
        }
    }
}

#[test]
fn all_masked_rows_give_zero_and_zero_gradient() {
    for (name, device) in devices() {
        let device = device.autodiff();
        let z = tensor2(&[1.0, 2.0, 0.0, 0.5, -1.0, 3.0], [2, 3], &device).require_grad();
        let v = tensor2(&[0.0, 1.0, 2.0, 1.0, 0.0, 0.0], [2, 3], &device);
        for analytic in [true, false] {
            let kd = KdLossConfig::new()
                .with_fused_kernel(analytic)
                .with_ignore_index(Some(-100))
                .init();
            let none = Tensor::<1, Bool>::from_data([false, false], &device);
            let masked = Targets::new(labels(&[0, 1], &device)).with_keep_rows(none);
            let loss = kd.forward(z.clone(), v.clone(), masked);
            assert_eq!(scalar(loss.clone()), 0.0, "{name}");
            let g = values(z.grad(&loss.backward()).unwrap());
            assert!(g.iter().all(|&x| x == 0.0), "{name}: {g:?}");

            // Row 1 ignored through its label: zero gradient there, and the loss
            // equals row 0's alone.
            let loss = kd.forward(z.clone(), v.clone(), labels(&[2, -100], &device));
            let g = values(z.grad(&loss.clone().backward()).unwrap());
            assert_eq!(&g[3..], &[0.0, 0.0, 0.0], "{name}");
            assert!(g[..3].iter().any(|&x| x != 0.0), "{name}");
            let row0 = kd.forward(
                z.clone().slice([0..1, 0..3]),
                v.clone().slice([0..1, 0..3]),
                labels(&[2], &device),
            );
            assert_close(name, &[scalar(loss)], &[scalar(row0)], 1e-6);
        }
        // A keep-mask of another length than the rows is refused by name.
        let kd = KdLossConfig::new().init();
        let z = Tensor::<2>::zeros([2, 3], &device);
        let one = Tensor::<1, Bool>::from_data([true], &device);
        let targets = Targets::new(labels(&[0, 1], &device)).with_keep_rows(one);
        let err = kd
            .check(&z, &TeacherOutput::Logits(z.clone()), &targets)
            .unwrap_err();
        assert_shape_mismatch(&err, "keep_rows", &[1], &[2]);
    }
}

/// DKD with a row mask: the mean over kept rows equals DKD on those rows alone;
/// nothing kept gives 0 and a zero gradient.
#[test]
fn dkd_row_mask() {
    let mut rng = Rng::new(12);
    for (name, device) in devices() {
        let device = device.autodiff();
        let z_values = rng.normals(3 * 5, 2.0);
        let v_values = rng.normals(3 * 5, 2.0);
        let dkd = DkdLossConfig::new().init();
        let keep = Tensor::<1, Bool>::from_data([true, false, true], &device);
        let masked = dkd.forward_parts(
            tensor2(&z_values, [3, 5], &device),
            tensor2(&v_values, [3, 5], &device),
            Targets::new(labels(&[0, 1, 4], &device)).with_keep_rows(keep),
        );
        let pick = |x: &[f64]| -> Vec<f64> { x[..5].iter().chain(&x[10..]).copied().collect() };
        let kept = dkd.forward_parts(
            tensor2(&pick(&z_values), [2, 5], &device),
            tensor2(&pick(&v_values), [2, 5], &device),
            labels(&[0, 4], &device),
        );
        assert_close(name, &[scalar(masked.total)], &[scalar(kept.total)], 1e-6);
        let z = tensor2(&z_values, [3, 5], &device).require_grad();
        let none = Tensor::<1, Bool>::from_data([false, false, false], &device);
        let total = dkd
            .forward_parts(
                z.clone(),
                tensor2(&v_values, [3, 5], &device),
                Targets::new(labels(&[0, 1, 4], &device)).with_keep_rows(none),
            )
            .total;
        assert_eq!(scalar(total.clone()), 0.0, "{name}");
        assert!(
            values(z.grad(&total.backward()).unwrap())
                .iter()
                .all(|&g| g == 0.0),
            "{name}"
        );
    }
}

#[test]
fn topk_with_all_classes_equals_dense() {
    let mut rng = Rng::new(9);
    for (name, device) in devices() {
        let z = tensor2(&rng.normals(12, 2.0), [3, 4], &device);
        let v = tensor2(&rng.normals(12, 2.0), [3, 4], &device);
        let kd = KdLossConfig::new()
            .with_temperature(3.0)
            .with_scale_by_t_squared(false)
            .init();
        let top_all = SparseTeacher::top_k(v.clone(), 4, 3.0).unwrap();
        let sparse = values(soft_rows(&kd, z.clone(), TeacherOutput::TopK(top_all)));
        let dense = values(forward_kl(log_softmax(z, 3.0, 1), log_softmax(v, 3.0, 1)));
        assert_close(name, &sparse, &dense, 1e-6);
    }
}

#[test]
fn vocabulary_mismatch_error_or_explicit_truncation() {
    let mut rng = Rng::new(10);
    for (name, device) in devices() {
        let z = tensor2(&rng.normals(2 * 5, 2.0), [2, 5], &device);
        let v_wide = rng.normals(2 * 7, 2.0);
        let v = tensor2(&v_wide, [2, 7], &device);
        let err = KdLossConfig::new()
            .init()
            .check(
                &z,
                &TeacherOutput::Logits(v.clone()),
                &Targets::unlabelled(),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("[2, 5]") && err.to_string().contains("[2, 7]"),
            "{err}"
        );
        let truncating = KdLossConfig::new()
            .with_vocabulary(VocabularyRule::TruncateTeacher)
            .init();
        let cut: Vec<f64> = v_wide.chunks(7).flat_map(|r| r[..5].to_vec()).collect();
        let expected = values(soft_loss(
            &KdLossConfig::new().init(),
            z.clone(),
            tensor2(&cut, [2, 5], &device),
        ));
        assert_close(name, &values(soft_loss(&truncating, z, v)), &expected, 1e-6);
    }
}

#[test]
fn bad_divergence_inputs() {
    let device = Device::flex();
    let (q, p) = random_pair(11, 2, 3, &device);
    for beta in [-0.1, 1.5, f64::NAN] {
        let err = Divergence::Jsd { beta }.check().unwrap_err();
        let rows_err = Divergence::Jsd { beta }
            .rows(q.clone(), p.clone())
            .unwrap_err();
        // (NaN ≠ NaN: the errors are compared by their messages.)
        assert_eq!(rows_err.to_string(), err.to_string());
        assert!(
            matches!(
                err,
                DistillError::OutOfUnitInterval {
                    argument: "beta",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let err = Divergence::SkewForwardKl { alpha: 1.0 }
        .check()
        .unwrap_err();
    assert!(err.to_string().starts_with("alpha must lie in"), "{err}");
    let z = tensor2(&[0.0; 6], [2, 3], &device);
    let kd = KdLossConfig::new().with_temperature(1.0).init();
    let top_k_error = |teacher: SparseTeacher| {
        kd.check(&z, &TeacherOutput::TopK(teacher), &Targets::unlabelled())
            .unwrap_err()
    };
    let bad = SparseTeacher::new(
        Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 5], [2, 1]), &device),
        tensor2(&[-0.1, -0.2], [2, 1], &device),
    )
    .unwrap();
    let err = top_k_error(bad);
    assert!(
        matches!(
            err,
            DistillError::LabelOutOfRange {
                label: 5,
                num_classes: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let too_many = SparseTeacher::new(
        Tensor::<2, Int>::from_data(TensorData::new(vec![0i64; 8], [2, 4]), &device),
        tensor2(&[-1.0; 8], [2, 4], &device),
    )
    .unwrap();
    let err = top_k_error(too_many);
    assert!(err.to_string().contains("k = 4"), "{err}");
    let err = SparseTeacher::new(
        Tensor::<2, Int>::from_data(TensorData::new(vec![0i64; 2], [2, 1]), &device),
        tensor2(&[-1.0; 4], [2, 2], &device),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::ShapeMismatch {
                left_argument: "indices",
                ..
            }
        ),
        "{err:?}"
    );
}
