//! A teacher with another number of classes than the student
//! (`VocabularyRule`): every rule with every divergence against PyTorch
//! float64 references (`tests/fixtures/vocabulary_torch.json`, written by
//! `scripts/gen_vocabulary_fixtures.py` from the rules' definitions), on the
//! fused kernel and on burn ops; the divergences that are infinite against a
//! zero-padded teacher refused by name; the rule in the fused linear loss,
//! with top-k teachers and in `[batch, seq, vocab]` form.

use crate::common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::{
    DistillError, Divergence, FusedLinearKdLossConfig, KdLossConfig, LinearTeacher, SparseTeacher,
    Targets, TeacherOutput, VocabularyRule,
};
use common::{
    Normals, Rng, assert_allclose, devices, devices_f64, labels, scalar, tensor2, tensor2_f64,
    values,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixtures {
    torch_version: String,
    batch: usize,
    student_classes: usize,
    temperature: f64,
    soft_weight: f64,
    hard_weight: f64,
    student_logits: Vec<f64>,
    targets: Vec<i64>,
    teachers: std::collections::HashMap<String, Teacher>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Teacher {
    classes: usize,
    logits: Vec<f64>,
}

#[derive(Deserialize)]
struct Case {
    teacher: String,
    rule: String,
    divergence: String,
    param: Option<f64>,
    finite: bool,
    value: Option<f64>,
    grad: Option<Vec<f64>>,
}

fn fixtures() -> Fixtures {
    let text = include_str!("../fixtures/vocabulary_torch.json");
    let fixtures: Fixtures = serde_json::from_str(text).expect("parse vocabulary_torch.json");
    assert!(fixtures.torch_version.starts_with('2'), "torch 2.x");
    assert!(fixtures.cases.len() >= 50, "{} cases", fixtures.cases.len());
    fixtures
}

fn rule(name: &str) -> VocabularyRule {
    match name {
        "truncate_teacher" => VocabularyRule::TruncateTeacher,
        "pad_teacher" => VocabularyRule::PadTeacher,
        "shared_ids" => VocabularyRule::SharedIds,
        other => panic!("unknown rule {other}"),
    }
}

fn divergence(name: &str, param: Option<f64>) -> Divergence {
    let p = || param.expect("a parameter");
    match name {
        "forward_kl" => Divergence::ForwardKl,
        "reverse_kl" => Divergence::ReverseKl,
        "jsd" => Divergence::Jsd { beta: p() },
        "jsd_normalized" => Divergence::JsdNormalized { beta: p() },
        "skew_forward_kl" => Divergence::SkewForwardKl { alpha: p() },
        "skew_reverse_kl" => Divergence::SkewReverseKl { alpha: p() },
        "tvd" => Divergence::Tvd,
        other => panic!("unknown divergence {other}"),
    }
}

type Make = fn(&[f64], [usize; 2], &Device) -> Tensor<2>;

#[test]
fn every_rule_and_divergence_matches_pytorch_in_f64() {
    check_references(devices_f64(), tensor2_f64, 1e-9, 1e-12);
}

#[test]
fn every_rule_and_divergence_matches_pytorch_in_f32() {
    check_references(devices(), tensor2, 1e-4, 1e-6);
}

/// Value and gradient per element, on the fused kernel and on burn ops; the
/// cases PyTorch finds infinite are refused by `check` and by the forward.
fn check_references(devices: Vec<(&'static str, Device)>, make: Make, rtol: f64, atol: f64) {
    let f = fixtures();
    let shape = [f.batch, f.student_classes];
    let mut checked = 0;
    for (name, device) in devices {
        let device = device.autodiff();
        for case in &f.cases {
            let teacher = &f.teachers[&case.teacher];
            let teacher_shape = [f.batch, teacher.classes];
            for fused_kernel in [true, false] {
                let what = format!(
                    "{name} {} teacher, {}, {}({:?}), fused {fused_kernel}",
                    case.teacher, case.rule, case.divergence, case.param
                );
                let kd = KdLossConfig::new()
                    .with_temperature(f.temperature)
                    .with_soft_weight(f.soft_weight)
                    .with_hard_weight(f.hard_weight)
                    .with_divergence(divergence(&case.divergence, case.param))
                    .with_vocabulary(rule(&case.rule))
                    .with_fused_kernel(fused_kernel)
                    .init();
                let z = make(&f.student_logits, shape, &device).require_grad();
                let v = TeacherOutput::Logits(make(&teacher.logits, teacher_shape, &device));
                let y = Targets::new(labels(&f.targets, &device));
                if !case.finite {
                    let error = kd.check(&z, &v, &y).unwrap_err();
                    assert!(
                        matches!(error, DistillError::InfiniteOnPadding { .. }),
                        "{what}: {error}"
                    );
                    let shown = error.to_string();
                    for part in ["teacher_logits", "6 classes", "9", "SharedIds"] {
                        assert!(shown.contains(part), "{what}: {part} not in {shown}");
                    }
                    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        kd.forward(z.clone(), v.clone(), y.clone())
                    }));
                    assert!(panic.is_err(), "{what}: the forward did not refuse");
                    continue;
                }
                kd.check(&z, &v, &y).unwrap();
                let loss = kd.forward(z.clone(), v, y);
                let grad = values(z.grad(&loss.clone().backward()).expect("gradient"));
                let value = scalar(loss);
                assert_allclose(&what, &[value], &[case.value.unwrap()], rtol, atol);
                assert_allclose(&what, &grad, case.grad.as_ref().unwrap(), rtol, atol);
                checked += 1;
            }
        }
    }
    assert!(checked >= 100, "{checked} comparisons");
}

/// `Same` refuses any other width, `TruncateTeacher` a narrower teacher, each
/// naming both shapes; the wider teacher is accepted by the other rules.
#[test]
fn rules_refuse_the_widths_they_do_not_cover() {
    let mut rng = Rng::new(29);
    let device = Device::flex();
    let z = tensor2(&rng.normals(2 * 5, 2.0), [2, 5], &device);
    for (classes, refused_by) in [
        (
            3,
            vec![VocabularyRule::Same, VocabularyRule::TruncateTeacher],
        ),
        (7, vec![VocabularyRule::Same]),
    ] {
        let v = TeacherOutput::Logits(tensor2(
            &rng.normals(2 * classes, 2.0),
            [2, classes],
            &device,
        ));
        for vocabulary in [
            VocabularyRule::Same,
            VocabularyRule::TruncateTeacher,
            VocabularyRule::PadTeacher,
            VocabularyRule::SharedIds,
        ] {
            let kd = KdLossConfig::new().with_vocabulary(vocabulary).init();
            let result = kd.check(&z, &v, &Targets::unlabelled());
            match refused_by.contains(&vocabulary) {
                true => {
                    let error = result.unwrap_err();
                    let shown = error.to_string();
                    assert!(
                        matches!(error, DistillError::ShapeMismatch { .. }),
                        "{shown}"
                    );
                    assert!(
                        shown.contains("[2, 5]") && shown.contains(&format!("[2, {classes}]")),
                        "{vocabulary:?}: {shown}"
                    );
                }
                false => result.unwrap_or_else(|e| panic!("{vocabulary:?}, {classes}: {e}")),
            }
        }
    }
}

/// Probabilities and log-probabilities of a narrower teacher are padded as
/// its logits are: the same loss from each form.
#[test]
fn every_teacher_form_is_padded_alike() {
    let mut rng = Rng::new(30);
    for (name, device) in devices() {
        let z = tensor2(&rng.normals(3 * 6, 2.0), [3, 6], &device);
        let v = tensor2(&rng.normals(3 * 4, 2.0), [3, 4], &device);
        let t = 2.0;
        for vocabulary in [VocabularyRule::PadTeacher, VocabularyRule::SharedIds] {
            for fused_kernel in [true, false] {
                let kd = KdLossConfig::new()
                    .with_temperature(t)
                    .with_vocabulary(vocabulary)
                    .with_fused_kernel(fused_kernel)
                    .with_divergence(Divergence::Jsd { beta: 0.5 })
                    .init();
                let soft = |teacher: TeacherOutput| {
                    let parts = kd.forward_parts(z.clone(), teacher, Targets::unlabelled());
                    scalar(parts.soft)
                };
                let log_probs = burn_distill::temperature::log_softmax(v.clone(), t, 1).unwrap();
                let from_logits = soft(TeacherOutput::Logits(v.clone()));
                let from_probs = soft(TeacherOutput::Probs(log_probs.clone().exp()));
                let from_log_probs = soft(TeacherOutput::LogProbs(log_probs));
                let what = format!("{name} {vocabulary:?} fused {fused_kernel}");
                assert!(
                    from_logits.is_finite() && from_logits > 0.0,
                    "{what}: {from_logits}"
                );
                assert_allclose(
                    &what,
                    &[from_probs, from_log_probs],
                    &[from_logits; 2],
                    1e-5,
                    1e-7,
                );
            }
        }
    }
}

/// Under `SharedIds` the student's classes beyond the teacher's get no
/// gradient from the soft term; the hard term still sees them.
#[test]
fn shared_ids_leave_the_students_extra_classes_to_the_hard_term() {
    let mut rng = Rng::new(31);
    for (name, device) in devices() {
        let device = device.autodiff();
        let zs = rng.normals(2 * 6, 2.0);
        let v = tensor2(&rng.normals(2 * 4, 2.0), [2, 4], &device);
        for fused_kernel in [true, false] {
            let kd = KdLossConfig::new()
                .with_vocabulary(VocabularyRule::SharedIds)
                .with_fused_kernel(fused_kernel)
                .with_hard_weight(0.0)
                .init();
            let z = tensor2(&zs, [2, 6], &device).require_grad();
            let loss = kd.forward(z.clone(), v.clone(), Targets::unlabelled());
            let grad = values(z.grad(&loss.backward()).unwrap());
            for row in grad.chunks(6) {
                assert!(row[..4].iter().any(|g| g.abs() > 1e-4), "{name}: {row:?}");
                assert_eq!(&row[4..], &[0.0, 0.0], "{name} fused {fused_kernel}");
            }
            // With labels on the extra classes, the hard term moves them.
            let kd = KdLossConfig::new()
                .with_vocabulary(VocabularyRule::SharedIds)
                .with_fused_kernel(fused_kernel)
                .init();
            let z = tensor2(&zs, [2, 6], &device).require_grad();
            let loss = kd.forward(z.clone(), v.clone(), labels(&[4, 5], &device));
            let grad = values(z.grad(&loss.backward()).unwrap());
            assert!(grad[4] < 0.0 && grad[6 + 5] < 0.0, "{name}: {grad:?}");
        }
    }
}

/// A top-k teacher has no width: every rule leaves it as it is.
#[test]
fn top_k_teachers_ignore_the_rule() {
    let mut rng = Rng::new(32);
    for (name, device) in devices() {
        let z = tensor2(&rng.normals(3 * 8, 2.0), [3, 8], &device);
        let v = tensor2(&rng.normals(3 * 8, 2.0), [3, 8], &device);
        let top = SparseTeacher::top_k(v, 3, 2.0).unwrap();
        let soft = |vocabulary| {
            let kd = KdLossConfig::new().with_vocabulary(vocabulary).init();
            scalar(kd.forward(z.clone(), top.clone(), Targets::unlabelled()))
        };
        let same = soft(VocabularyRule::Same);
        for vocabulary in [VocabularyRule::PadTeacher, VocabularyRule::SharedIds] {
            assert_eq!(soft(vocabulary), same, "{name} {vocabulary:?}");
        }
    }
}

/// `[batch, seq, vocab]` logits with a padding mask: the same as the flat rows.
#[test]
fn sequences_follow_the_rule() {
    let mut rng = Rng::new(33);
    for (name, device) in devices() {
        let (batch, seq, vs, vt) = (2, 3, 7, 5);
        let zs = rng.normals(batch * seq * vs, 2.0);
        let vs_ = rng.normals(batch * seq * vt, 2.0);
        let z3 = Tensor::<3>::from_data(
            TensorData::new(zs.iter().map(|&x| x as f32).collect(), [batch, seq, vs]),
            &device,
        );
        let v3 = Tensor::<3>::from_data(
            TensorData::new(vs_.iter().map(|&x| x as f32).collect(), [batch, seq, vt]),
            &device,
        );
        let mask = Tensor::<2, burn::tensor::Bool>::from_data(
            TensorData::new(vec![false, false, true, false, false, false], [batch, seq]),
            &device,
        );
        let y3 = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 6, 0, 2, 5, 3], [batch, seq]),
            &device,
        );
        for vocabulary in [VocabularyRule::PadTeacher, VocabularyRule::SharedIds] {
            let kd = KdLossConfig::new().with_vocabulary(vocabulary).init();
            let got = kd.forward_no_reduction(
                z3.clone(),
                v3.clone(),
                Targets::for_sequences(y3.clone()).with_padding_mask(mask.clone()),
            );
            let flat = values(kd.forward_no_reduction(
                tensor2(&zs, [batch * seq, vs], &device),
                tensor2(&vs_, [batch * seq, vt], &device),
                labels(&[1, 6, 0, 2, 5, 3], &device),
            ));
            let want: Vec<f64> = flat
                .iter()
                .enumerate()
                .map(|(i, &x)| if i == 2 { 0.0 } else { x })
                .collect();
            assert_allclose(
                &format!("{name} {vocabulary:?}"),
                &values(got),
                &want,
                1e-6,
                1e-7,
            );
        }
    }
}

/// The fused linear loss takes the rule too: a teacher of fewer classes,
/// padded, on the shared ids or compared by ULD, as the loss on the
/// materialised logits, chunk by chunk;
/// reverse KL against the padded teacher refused by name.
#[test]
fn fused_linear_loss_follows_the_rule() {
    let mut rng = Rng::new(34);
    let (rows, d, vocab, teacher_vocab) = (6, 4, 9, 7);
    let hidden = rng.normals(rows * d, 1.0);
    let weight = rng.normals(d * vocab, 1.0);
    let teacher = rng.normals(rows * teacher_vocab, 2.0);
    let y: Vec<i64> = (0..rows as i64).map(|i| (i * 5) % vocab as i64).collect();
    for (name, device) in devices_f64() {
        let device = device.autodiff();
        let w = tensor2_f64(&weight, [d, vocab], &device);
        let v = || tensor2_f64(&teacher, [rows, teacher_vocab], &device);
        let skew = Divergence::SkewReverseKl { alpha: 0.2 };
        for (vocabulary, divergence) in [
            (VocabularyRule::PadTeacher, skew),
            (VocabularyRule::SharedIds, skew),
            // ULD takes the teacher's vocabulary as it is, under any rule.
            (VocabularyRule::Same, Divergence::Uld),
        ] {
            let kd = KdLossConfig::new()
                .with_vocabulary(vocabulary)
                .with_divergence(divergence);
            let fused = FusedLinearKdLossConfig::new(kd.clone())
                .with_chunk_size(Some(4))
                .init();
            let h = tensor2_f64(&hidden, [rows, d], &device).require_grad();
            let got = fused.forward(
                h.clone(),
                w.clone(),
                None,
                LinearTeacher::Logits(v()),
                labels(&y, &device),
            );
            let got_grad = values(h.grad(&got.clone().backward()).unwrap());
            let h = tensor2_f64(&hidden, [rows, d], &device).require_grad();
            let want = kd
                .init()
                .forward(h.clone().matmul(w.clone()), v(), labels(&y, &device));
            let want_grad = values(h.grad(&want.clone().backward()).unwrap());
            let what = format!("{name} {vocabulary:?} {divergence:?}");
            assert_allclose(&what, &values(got), &values(want), 1e-9, 1e-12);
            assert_allclose(&what, &got_grad, &want_grad, 1e-9, 1e-12);
        }
        let refusing = FusedLinearKdLossConfig::new(
            KdLossConfig::new()
                .with_vocabulary(VocabularyRule::PadTeacher)
                .with_divergence(Divergence::ReverseKl),
        )
        .init();
        let h = tensor2_f64(&hidden, [rows, d], &device);
        let error = refusing
            .check(
                &h,
                &w,
                None,
                &LinearTeacher::Logits(v()),
                &Targets::from(labels(&y, &device)),
            )
            .unwrap_err();
        assert!(
            matches!(error, DistillError::InfiniteOnPadding { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("ReverseKl"), "{error}");
    }
}

/// With logit standardisation each model is standardised over the classes
/// it brings to the soft term (the teacher before its padding, both over the
/// shared ids under `SharedIds`): finite, and the fused kernel equals burn
/// ops, value and gradient.
#[test]
fn standardisation_with_another_vocabulary_on_both_paths() {
    let mut rng = Rng::new(35);
    for (name, device) in devices() {
        let device = device.autodiff();
        let zs = rng.normals(3 * 8, 2.0);
        let v = tensor2(&rng.normals(3 * 5, 2.0), [3, 5], &device);
        for vocabulary in [VocabularyRule::PadTeacher, VocabularyRule::SharedIds] {
            let run = |fused_kernel: bool| {
                let kd = KdLossConfig::new()
                    .with_vocabulary(vocabulary)
                    .with_logit_standardization(true)
                    .with_fused_kernel(fused_kernel)
                    .init();
                let z = tensor2(&zs, [3, 8], &device).require_grad();
                let loss = kd.forward(z.clone(), v.clone(), labels(&[1, 6, 7], &device));
                let grad = values(z.grad(&loss.clone().backward()).unwrap());
                (scalar(loss), grad)
            };
            let ((value, grad), (want, want_grad)) = (run(true), run(false));
            let what = format!("{name} {vocabulary:?}");
            assert!(want.is_finite() && want > 0.0, "{what}: {want}");
            assert!(grad.iter().all(|g| g.is_finite()), "{what}");
            assert_allclose(&what, &[value], &[want], 1e-5, 1e-7);
            assert_allclose(&format!("{what} grad"), &grad, &want_grad, 1e-4, 1e-7);
        }
    }
}
