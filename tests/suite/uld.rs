//! `Divergence::Uld` (Boizard et al. 2024) between vocabularies of different
//! sizes: TRL's `ULDLoss` (GOLD) and the paper's formula by hand in numpy
//! float64 (`tests/fixtures/uld_trl.json`, written by
//! `scripts/gen_uld_fixtures.py`), value and gradient per element; closed
//! forms; the settings it refuses. (In the fused linear loss: `vocabulary.rs`.)

use crate::common;

use burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use burn_distill::{
    DistillError, Divergence, KdLossConfig, Reduction, SparseTeacher, Targets, TeacherOutput,
    VocabularyRule,
};
use common::{
    Normals, Rng, assert_allclose, devices, devices_f64, scalar, tensor2, tensor2_f64, tensor3,
    values,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixtures {
    trl_version: String,
    batch: usize,
    seq: usize,
    temperature: f64,
    labels: Vec<i64>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    student_classes: usize,
    teacher_classes: usize,
    student_logits: Vec<f64>,
    teacher_logits: Vec<f64>,
    value: f64,
    grad: Vec<f64>,
    paper_per_token: Vec<f64>,
}

fn fixtures() -> Fixtures {
    let text = include_str!("../fixtures/uld_trl.json");
    let fixtures: Fixtures = serde_json::from_str(text).expect("parse uld_trl.json");
    assert!(!fixtures.trl_version.is_empty());
    assert_eq!(fixtures.cases.len(), 3);
    fixtures
}

fn uld(temperature: f64) -> burn_distill::KdLoss {
    KdLossConfig::new()
        .with_divergence(Divergence::Uld)
        .with_temperature(temperature)
        .with_scale_by_t_squared(false)
        .with_soft_weight(1.0)
        .with_hard_weight(0.0)
        .init()
}

#[test]
fn matches_trl_and_the_paper_in_f64() {
    check_fixtures(devices_f64(), DType::F64, 1e-9, 1e-12);
}

#[test]
fn matches_trl_and_the_paper_in_f32() {
    check_fixtures(devices(), DType::F32, 1e-4, 1e-6);
}

/// `[batch, seq, vocab]` logits, the prompt (label −100) as padding, each
/// sequence's mean then the mean over sequences (TRL's reduction): the
/// value and the gradient per element against TRL's, and the per-token
/// values against the paper's formula.
fn check_fixtures(devices: Vec<(&'static str, Device)>, dtype: DType, rtol: f64, atol: f64) {
    let f = fixtures();
    let (b, s) = (f.batch, f.seq);
    let kd = uld(f.temperature);
    for (name, device) in devices {
        let device = device.autodiff();
        let padding: Vec<bool> = f.labels.iter().map(|&l| l == -100).collect();
        let mask =
            || Tensor::<2, Bool>::from_data(TensorData::new(padding.clone(), [b, s]), &device);
        for case in &f.cases {
            let what = format!("{name} {}→{}", case.teacher_classes, case.student_classes);
            let z = tensor3(
                &case.student_logits,
                [b, s, case.student_classes],
                &device,
                dtype,
            )
            .require_grad();
            let v = tensor3(
                &case.teacher_logits,
                [b, s, case.teacher_classes],
                &device,
                dtype,
            );
            let targets = Targets::unlabelled()
                .with_padding_mask(mask())
                .with_reduction(Reduction::SequenceMean);
            kd.check(&z, &TeacherOutput::Logits(v.clone()), &targets)
                .unwrap();
            let loss = kd.forward(z.clone(), v.clone(), targets);
            let grad = values(z.grad(&loss.clone().backward()).unwrap());
            assert_allclose(&what, &[scalar(loss)], &[case.value], rtol, atol);
            assert_allclose(&format!("{what} grad"), &grad, &case.grad, rtol, atol);
            // Per token, every position (padding too) against the paper's.
            let rows = kd.forward_no_reduction(z.clone(), v, Targets::unlabelled());
            assert_allclose(&what, &values(rows), &case.paper_per_token, rtol, atol);
        }
    }
}

/// Closed forms: identical distributions give 0 whatever the vocabularies'
/// order (a permuted teacher), disjoint one-hot rows give 2, and a uniform
/// student of `n` classes against a one-hot teacher of `m ≥ n` classes gives
/// `(1 − 1/n) + (n − 1)/n = 2(n − 1)/n`.
#[test]
fn closed_forms() {
    for (name, device) in devices() {
        let kd = uld(1.0);
        let soft = |z: &[f64], zc: usize, v: &[f64], vc: usize| {
            let z = tensor2(z, [1, zc], &device);
            let v = TeacherOutput::LogProbs(tensor2(v, [1, vc], &device));
            scalar(kd.forward(z, v, Targets::unlabelled()))
        };
        let (a, b, c) = (0.2f64.ln(), 0.3f64.ln(), 0.5f64.ln());
        // The same distribution, permuted and padded with a class of mass 0.
        let permuted = soft(&[a, b, c], 3, &[c, f64::NEG_INFINITY, a, b], 4);
        assert!(permuted.abs() < 1e-6, "{name}: {permuted}");
        let n = 4;
        let uniform = soft(&[0.0; 4], n, &[0.0, -1e4, -1e4, -1e4, -1e4, -1e4], 6);
        let want = 2.0 * (n as f64 - 1.0) / n as f64;
        assert!((uniform - want).abs() < 1e-5, "{name}: {uniform} vs {want}");
        let peaked = soft(&[30.0, 0.0], 2, &[0.0], 1);
        assert!(
            peaked.abs() < 1e-5,
            "{name}: one-hot vs one class: {peaked}"
        );
    }
}

/// The rows pair up whatever the widths; a different number of rows, a
/// top-k teacher and an f16 student (computed in f32) are handled by name.
#[test]
fn widths_rows_and_teachers() {
    let mut rng = Rng::new(40);
    let device = Device::flex();
    let kd = uld(2.0);
    let z = tensor2(&rng.normals(3 * 5, 2.0), [3, 5], &device);
    // Any vocabulary rule: ULD ignores it.
    for vocabulary in [VocabularyRule::Same, VocabularyRule::SharedIds] {
        let kd = KdLossConfig::new()
            .with_divergence(Divergence::Uld)
            .with_vocabulary(vocabulary)
            .init();
        let v = TeacherOutput::Logits(tensor2(&rng.normals(3 * 8, 2.0), [3, 8], &device));
        kd.check(&z, &v, &Targets::unlabelled()).unwrap();
    }
    let v = TeacherOutput::Logits(tensor2(&rng.normals(2 * 8, 2.0), [2, 8], &device));
    let error = kd.check(&z, &v, &Targets::unlabelled()).unwrap_err();
    assert!(
        error.to_string().contains("[2, 8]") && error.to_string().contains("[3, 5]"),
        "{error}"
    );
    let top =
        SparseTeacher::top_k(tensor2(&rng.normals(3 * 5, 2.0), [3, 5], &device), 2, 2.0).unwrap();
    let error = kd
        .check(&z, &TeacherOutput::TopK(top), &Targets::unlabelled())
        .unwrap_err();
    assert!(
        matches!(error, DistillError::UnsupportedTeacher { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("ULD"), "{error}");
    // The fused linear loss's check refuses it too, before its chunks would.
    let linear = burn_distill::FusedLinearKdLossConfig::new(
        KdLossConfig::new().with_divergence(Divergence::Uld),
    )
    .init();
    let top =
        SparseTeacher::top_k(tensor2(&rng.normals(3 * 5, 2.0), [3, 5], &device), 2, 2.0).unwrap();
    let hidden = tensor2(&rng.normals(3 * 4, 1.0), [3, 4], &device);
    let weight = tensor2(&rng.normals(4 * 5, 1.0), [4, 5], &device);
    let teacher = burn_distill::LinearTeacher::TopK(top);
    let error = linear
        .check(&hidden, &weight, None, &teacher, &Targets::unlabelled())
        .unwrap_err();
    assert!(
        matches!(error, DistillError::UnsupportedTeacher { .. }),
        "{error}"
    );

    let v = tensor2(&rng.normals(3 * 8, 2.0), [3, 8], &device);
    let want = scalar(kd.forward(z.clone(), v.clone(), Targets::unlabelled()));
    let half = kd.forward(
        z.cast(DType::F16),
        v.cast(DType::F16),
        Targets::unlabelled(),
    );
    assert_eq!(half.dtype(), DType::F16);
    let got = scalar(half.cast(DType::F32));
    assert!(
        (got - want).abs() < 2e-2 * want.abs().max(1e-3),
        "f16 {got} vs f32 {want}"
    );
}

/// `Divergence::rows` takes two widths for ULD (and still refuses them for
/// the others).
#[test]
fn divergence_rows_of_two_widths() {
    let device = Device::flex();
    let q = tensor2_f64(&[0.7f64.ln(), 0.3f64.ln()], [1, 2], &device);
    let p = tensor2_f64(&[0.1f64.ln(), 0.2f64.ln(), 0.7f64.ln()], [1, 3], &device);
    let value = scalar(Divergence::Uld.rows(q.clone(), p.clone()).unwrap());
    // sorted: [0.7, 0.3, 0] vs [0.7, 0.2, 0.1]
    assert!((value - 0.2).abs() < 1e-12, "{value}");
    let error = Divergence::ForwardKl.rows(q, p).unwrap_err();
    assert!(
        matches!(error, DistillError::ShapeMismatch { .. }),
        "{error}"
    );
}

/// The CPU engine (`fused_kernel`, f32 on flex and ndarray) against burn ops,
/// value and gradient per element, a teacher wider and one narrower than the
/// student, with the hard term and labels, `T = 2` with `T²`.
#[test]
fn cpu_engine_matches_burn_ops() {
    let mut rng = Rng::new(42);
    for (name, device) in devices() {
        let device = device.autodiff();
        for (rows, vs, vt) in [(5, 1000, 1500), (3, 1200, 700), (2, 7, 7)] {
            let zs = rng.normals(rows * vs, 3.0);
            let v = tensor2(&rng.normals(rows * vt, 3.0), [rows, vt], &device);
            let y: Vec<i64> = (0..rows as i64).map(|r| (r * 5) % vs as i64).collect();
            let run = |fused_kernel: bool| {
                let kd = KdLossConfig::new()
                    .with_divergence(Divergence::Uld)
                    .with_temperature(2.0)
                    .with_fused_kernel(fused_kernel)
                    .init();
                let z = tensor2(&zs, [rows, vs], &device).require_grad();
                let loss = kd.forward(z.clone(), v.clone(), common::labels(&y, &device));
                let grad = values(z.grad(&loss.clone().backward()).unwrap());
                (scalar(loss), grad)
            };
            let ((value, grad), (want, want_grad)) = (run(true), run(false));
            let what = format!("{name} {rows}x{vs} vs {vt}");
            assert!(want > 0.0, "{what}");
            assert_allclose(&what, &[value], &[want], 1e-5, 1e-7);
            assert_allclose(&format!("{what} grad"), &grad, &want_grad, 1e-4, 1e-8);
        }
    }
}

#[derive(Deserialize)]
struct UnequalAnswers {
    student_labels: Vec<i64>,
    teacher_labels: Vec<i64>,
    student_shape: [usize; 3],
    teacher_shape: [usize; 3],
    student_temperature: f64,
    teacher_temperature: f64,
    student_logits: Vec<f64>,
    teacher_logits: Vec<f64>,
    value: f64,
    grad: Vec<f64>,
}

/// The paper's alignment of answers of different lengths (TRL's plain ULD
/// pairs the first `min(n_s, n_t)` answer tokens, each model at its own
/// positions): `SpanAlignment::by_position` with `GoldLoss`, value and
/// gradient per element against TRL's.
#[test]
fn answers_of_different_lengths_align_by_position() {
    #[derive(Deserialize)]
    struct File {
        unequal_answers: UnequalAnswers,
    }
    let text = include_str!("../fixtures/uld_trl.json");
    let f: File = serde_json::from_str(text).expect("parse uld_trl.json");
    let f = f.unequal_answers;
    let answer = |labels: &[i64], seq: usize, b: usize| {
        let row = &labels[b * seq..(b + 1) * seq];
        let first = row.iter().position(|&l| l != -100).unwrap();
        let n = row.iter().filter(|&&l| l != -100).count();
        first..first + n
    };
    let alignments: Vec<_> = (0..f.student_shape[0])
        .map(|b| {
            burn_distill::gold::SpanAlignment::by_position(
                answer(&f.student_labels, f.student_shape[1], b),
                answer(&f.teacher_labels, f.teacher_shape[1], b),
            )
            .unwrap()
        })
        .collect();
    let loss = burn_distill::gold::GoldLossConfig::new()
        .with_student_temperature(f.student_temperature)
        .with_teacher_temperature(f.teacher_temperature)
        .init();
    for (devices, dtype, rtol, atol) in [
        (devices_f64(), DType::F64, 1e-9, 1e-12),
        (devices(), DType::F32, 1e-4, 1e-6),
    ] {
        for (name, device) in devices {
            let device = device.autodiff();
            let z = tensor3(&f.student_logits, f.student_shape, &device, dtype).require_grad();
            let v = tensor3(&f.teacher_logits, f.teacher_shape, &device, dtype);
            let value = loss.forward(z.clone(), v, &alignments);
            let grad = values(z.grad(&value.clone().backward()).unwrap());
            assert_allclose(name, &[scalar(value)], &[f.value], rtol, atol);
            assert_allclose(&format!("{name} grad"), &grad, &f.grad, rtol, atol);
        }
    }
    let error = burn_distill::gold::SpanAlignment::by_position(3..3, 0..2).unwrap_err();
    assert!(
        error.to_string().contains("student_rows") && error.to_string().contains("3..3"),
        "{error}"
    );
}
