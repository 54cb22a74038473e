//! Bad input: every `DistillError` variant from `check` or a `try_*` form, and
//! the panicking forms' message equal to the error's text.

use crate::common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::{Bool, Device, Int, Tensor};
use burn_distill::specialist::{ClassSubset, Specialist};
use burn_distill::temperature::{log_softmax, softmax};
use burn_distill::{
    DistillError, Divergence, DkdLossConfig, KdLoss, KdLossConfig, SparseTeacher, Targets,
    TeacherOutput,
};
use common::{assert_shape_mismatch, labels, tensor2};

fn device() -> Device {
    Device::flex()
}

/// Runs `f`, expects a panic, and returns its message.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .expect("string panic payload")
}

#[test]
fn invalid_temperature() {
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let config = KdLossConfig::new().with_temperature(t);
        let err = config.try_init().unwrap_err();
        assert!(
            matches!(
                err,
                DistillError::InvalidTemperature {
                    argument: "temperature",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("temperature") && err.to_string().contains(&format!("{t}")),
            "{err}"
        );
        assert_eq!(
            panic_message(|| {
                let _ = config.init();
            }),
            err.to_string()
        );

        let z = tensor2(&[1.0, 2.0], [1, 2], &device());
        let err = softmax(z.clone(), t, 1).unwrap_err();
        assert!(
            matches!(err, DistillError::InvalidTemperature { .. }),
            "{err:?}"
        );
        assert_eq!(
            log_softmax(z, t, 1).unwrap_err().to_string(),
            err.to_string()
        );
    }
}

#[test]
fn invalid_weight() {
    for (soft, hard, name) in [
        (-0.1, 0.1, "soft_weight"),
        (0.9, f64::NAN, "hard_weight"),
        (f64::INFINITY, 0.1, "soft_weight"),
    ] {
        let config = KdLossConfig::new()
            .with_soft_weight(soft)
            .with_hard_weight(hard);
        let err = config.try_init().unwrap_err();
        match &err {
            DistillError::InvalidWeight { argument, .. } => assert_eq!(*argument, name),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().starts_with(name), "{err}");
        assert_eq!(
            panic_message(|| {
                let _ = config.init();
            }),
            err.to_string()
        );
    }
}

#[test]
fn all_weights_zero() {
    let config = KdLossConfig::new()
        .with_soft_weight(0.0)
        .with_hard_weight(0.0);
    let err = config.try_init().unwrap_err();
    assert!(
        matches!(err, DistillError::AllWeightsZero { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("soft_weight") && err.to_string().contains("hard_weight"));
    assert_eq!(
        panic_message(|| {
            let _ = config.init();
        }),
        err.to_string()
    );
}

#[test]
fn invalid_dim() {
    let z = tensor2(&[1.0, 2.0], [1, 2], &device());
    let err = log_softmax(z.clone(), 1.0, 2).unwrap_err();
    assert_eq!(
        err,
        DistillError::InvalidDim {
            argument: "dim",
            dim: 2,
            rank: 2
        }
    );
    assert!(
        err.to_string().contains("dim = 2") && err.to_string().contains("rank 2"),
        "{err}"
    );
    assert_eq!(softmax(z, 1.0, 2).unwrap_err(), err);
}

/// The error `check` gives, after asserting that every forward panics with
/// exactly its message.
fn kd_error(kd: &KdLoss, z: &Tensor<2>, teacher: TeacherOutput, targets: Targets) -> DistillError {
    let err = kd.check(z, &teacher, &targets).unwrap_err();
    let text = err.to_string();
    let (t, y) = (teacher.clone(), targets.clone());
    assert_eq!(panic_message(|| drop(kd.forward(z.clone(), t, y))), text);
    let (t, y) = (teacher.clone(), targets.clone());
    assert_eq!(
        panic_message(|| drop(kd.forward_parts(z.clone(), t, y))),
        text
    );
    assert_eq!(
        panic_message(|| drop(kd.forward_no_reduction(z.clone(), teacher, targets))),
        text
    );
    err
}

#[test]
fn empty_tensor() {
    let kd = KdLossConfig::new().init();
    let empty = Tensor::<2>::zeros([0, 5], &device());
    for targets in [Targets::unlabelled(), Targets::new(labels(&[], &device()))] {
        let err = kd_error(&kd, &empty, TeacherOutput::Logits(empty.clone()), targets);
        assert_eq!(
            err,
            DistillError::EmptyTensor {
                argument: "student_logits",
                shape: vec![0, 5]
            }
        );
        assert!(err.to_string().contains("[0, 5]"), "{err}");
    }
}

/// The vocabulary-size mismatch users report (151936 vs 152064 classes) is
/// reported by shape, naming both arguments, before any tensor op.
#[test]
fn shape_mismatch_names_both_shapes() {
    let kd = KdLossConfig::new().init();
    let student = Tensor::<2>::zeros([2, 151936], &device());
    let teacher = Tensor::<2>::zeros([2, 152064], &device());
    let targets = Targets::new(labels(&[0, 1], &device()));
    let err = kd_error(&kd, &student, TeacherOutput::Logits(teacher), targets);
    assert_shape_mismatch(&err, "student_logits", &[2, 151936], &[2, 152064]);
    assert!(err.to_string().contains("teacher_logits"), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("student_logits has shape [2, 151936]")
            && text.contains("teacher_logits has shape [2, 152064]"),
        "{text}"
    );

    // A batch mismatch too, for every teacher form.
    let s = Tensor::<2>::zeros([3, 4], &device());
    let t = Tensor::<2>::zeros([2, 4], &device());
    for (teacher, name) in [
        (TeacherOutput::Logits(t.clone()), "teacher_logits"),
        (
            TeacherOutput::Probs(t.clone().add_scalar(0.25)),
            "teacher_probs",
        ),
        (TeacherOutput::LogProbs(t), "teacher_log_probs"),
    ] {
        let err = kd_error(&kd, &s, teacher, Targets::unlabelled());
        assert!(
            matches!(err, DistillError::ShapeMismatch { right_argument, .. } if right_argument == name),
            "{err:?}"
        );
    }
}

#[test]
fn targets_length() {
    let kd = KdLossConfig::new().init();
    let z = Tensor::<2>::zeros([3, 4], &device());
    let err = kd_error(
        &kd,
        &z,
        TeacherOutput::Logits(z.clone()),
        Targets::new(labels(&[0, 1], &device())),
    );
    assert_shape_mismatch(&err, "targets", &[2], &[3]);
    assert!(err.to_string().contains("one label per row"), "{err}");
}

#[test]
fn label_out_of_range() {
    let kd = KdLossConfig::new().init();
    let z = Tensor::<2>::zeros([3, 4], &device());
    for (targets, bad) in [([0i64, 4, 1], 4i64), ([0, -1, 3], -1), ([9, 0, 7], 9)] {
        let err = kd_error(
            &kd,
            &z,
            TeacherOutput::Logits(z.clone()),
            Targets::new(labels(&targets, &device())),
        );
        assert_eq!(
            err,
            DistillError::LabelOutOfRange {
                argument: "targets",
                label: bad,
                num_classes: 4
            }
        );
        assert!(
            err.to_string().contains(&format!("label {bad}")) && err.to_string().contains("0..4"),
            "{err}"
        );
    }
    // ignore_index is allowed, and only it.
    let kd = KdLossConfig::new().with_ignore_index(Some(-100)).init();
    let ok = Targets::new(labels(&[0, -100, 3], &device()));
    assert!(kd.check(&z, &TeacherOutput::Logits(z.clone()), &ok).is_ok());
    let bad = Targets::new(labels(&[0, -100, -1], &device()));
    let err = kd_error(&kd, &z, TeacherOutput::Logits(z.clone()), bad);
    assert!(
        matches!(err, DistillError::LabelOutOfRange { label: -1, .. }),
        "{err:?}"
    );
}

/// Label errors come from the fused path (labels read on the host for the
/// kernel) exactly as from the autodiff path.
#[test]
fn label_out_of_range_on_both_paths() {
    let z = Tensor::<2>::zeros([2, 3], &device());
    for fused in [true, false] {
        let kd = KdLossConfig::new().with_fused_kernel(fused).init();
        for y in [[0, 3], [-2, 1], [0, 7]] {
            let err = kd_error(
                &kd,
                &z,
                TeacherOutput::Logits(z.clone()),
                Targets::new(labels(&y, &device())),
            );
            assert!(
                matches!(err, DistillError::LabelOutOfRange { num_classes: 3, .. }),
                "{err:?}"
            );
        }
    }
}

#[test]
fn mask_length() {
    let kd = KdLossConfig::new().init();
    let z = Tensor::<2>::zeros([3, 4], &device());
    let keep = Tensor::<1, Bool>::from_data([true, false], &device());
    let targets = Targets::new(labels(&[0, 1, 2], &device())).with_keep_rows(keep);
    let err = kd_error(&kd, &z, TeacherOutput::Logits(z.clone()), targets);
    assert_shape_mismatch(&err, "keep_rows", &[2], &[3]);
    assert!(err.to_string().contains("one entry per row"), "{err}");
}

#[test]
fn errors_are_std_errors() {
    fn takes_error(_: &dyn std::error::Error) {}
    takes_error(&DistillError::AllWeightsZero {
        soft_weight: 0.0,
        hard_weight: 0.0,
    });
}

/// Probabilities with a negative (or NaN) entry are refused by name and value,
/// instead of the NaN their logarithm would give.
#[test]
fn negative_teacher_probabilities() {
    let kd = KdLossConfig::new().init();
    let z = Tensor::<2>::zeros([1, 3], &device());
    for (bad, shown) in [(-0.1f32, "-0.1"), (f32::NAN, "NaN")] {
        let p = Tensor::<2>::from_floats([[0.6, bad, 0.5]], &device());
        let err = kd_error(&kd, &z, TeacherOutput::Probs(p), Targets::unlabelled());
        assert!(
            matches!(
                err,
                DistillError::InvalidProbabilities {
                    argument: "teacher_probs",
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("teacher_probs") && text.contains(shown),
            "{text}"
        );
    }
}

/// Student and teacher (or labels, or the mask) on different backends: an
/// error naming both devices, not a panic from inside burn.
#[test]
#[allow(deprecated)] // Device::ndarray
fn device_mismatch_names_both_devices() {
    let kd = KdLossConfig::new().init();
    let (flex, ndarray) = (Device::flex(), Device::ndarray());
    let z = Tensor::<2>::zeros([2, 3], &flex);
    let elsewhere = Tensor::<2>::zeros([2, 3], &ndarray);
    let err = kd_error(
        &kd,
        &z,
        TeacherOutput::Logits(elsewhere),
        Targets::unlabelled(),
    );
    match &err {
        DistillError::DeviceMismatch {
            left_argument: "student_logits",
            right_argument: "teacher_logits",
            left_device,
            right_device,
        } => assert_ne!(left_device, right_device),
        other => panic!("unexpected {other:?}"),
    }
    let y = Targets::new(labels(&[0, 1], &ndarray));
    let err = kd_error(&kd, &z, TeacherOutput::Logits(z.clone()), y);
    assert!(
        matches!(
            err,
            DistillError::DeviceMismatch {
                right_argument: "targets",
                ..
            }
        ),
        "{err:?}"
    );
    let keep = Tensor::<1, Bool>::from_data([true, true], &ndarray);
    let y = Targets::new(labels(&[0, 1], &flex)).with_keep_rows(keep);
    let err = kd_error(&kd, &z, TeacherOutput::Logits(z.clone()), y);
    assert!(
        matches!(
            err,
            DistillError::DeviceMismatch {
                right_argument: "keep_rows",
                ..
            }
        ),
        "{err:?}"
    );
}

/// Mixed devices in the helpers outside the losses (the divergences, the
/// ensembles, the top-k teacher, the combiner) are a `DeviceMismatch` naming
/// both arguments — an ensemble's and the combiner's by their index — not a
/// panic from inside burn; in a loss with a top-k teacher too.
#[test]
#[allow(deprecated)] // Device::ndarray
fn device_mismatch_in_the_helpers_names_the_arguments() {
    use burn_distill::ensemble::{arithmetic_mean, geometric_mean};
    use burn_distill::specialist::SpecialistCombinerConfig;
    let (flex, ndarray) = (Device::flex(), Device::ndarray());
    let names = |err: DistillError| match err {
        DistillError::DeviceMismatch {
            left_argument,
            right_argument,
            left_device,
            right_device,
        } => {
            assert_ne!(left_device, right_device);
            (left_argument, right_argument)
        }
        other => panic!("unexpected {other:?}"),
    };
    let q = Tensor::<2>::zeros([2, 3], &flex);
    let p = Tensor::<2>::zeros([2, 3], &ndarray);
    for divergence in [Divergence::ForwardKl, Divergence::Tvd] {
        let err = divergence.rows(q.clone(), p.clone()).unwrap_err();
        assert_eq!(names(err), ("student_log_probs", "teacher_log_probs"));
    }
    let teachers = [q.clone(), q.clone(), p.clone()];
    let err = arithmetic_mean(&teachers, 2.0, None).unwrap_err();
    assert_eq!(names(err), ("teacher_logits[0]", "teacher_logits[2]"));
    let err = geometric_mean(&teachers, 2.0, None).unwrap_err();
    assert_eq!(names(err), ("teacher_logits[0]", "teacher_logits[2]"));
    let indices = Tensor::<2, Int>::zeros([2, 1], &ndarray);
    let err = SparseTeacher::new(indices, Tensor::<2>::zeros([2, 1], &flex)).unwrap_err();
    assert_eq!(names(err), ("indices", "log_probs"));
    let top_k = SparseTeacher::new(
        Tensor::<2, Int>::zeros([2, 1], &ndarray),
        Tensor::<2>::zeros([2, 1], &ndarray),
    )
    .unwrap();
    let kd = KdLossConfig::new().init();
    let err = kd_error(&kd, &q, TeacherOutput::TopK(top_k), Targets::unlabelled());
    assert_eq!(names(err), ("student_logits", "teacher.log_probs"));
    // The combiner: the second specialist's outputs on another device.
    let combiner = SpecialistCombinerConfig::new().init();
    let specialists = [
        Specialist::new(ClassSubset::new(vec![0, 1], 4).unwrap()),
        Specialist::new(ClassSubset::new(vec![2, 3], 4).unwrap()),
    ];
    let pg = Tensor::<2>::ones([2, 4], &flex).div_scalar(4.0);
    let outputs = [
        Tensor::<2>::ones([2, 3], &flex).div_scalar(3.0),
        Tensor::<2>::ones([2, 3], &ndarray).div_scalar(3.0),
    ];
    let err = combiner.combine(pg, &specialists, &outputs).unwrap_err();
    assert_eq!(names(err), ("generalist_probs", "specialist_probs[1]"));
}

/// Logit standardisation needs two classes per row (a z-score of one value is
/// 0/0) and the teacher as logits.
#[test]
fn standardization_needs_two_classes_and_logits() {
    let kd = KdLossConfig::new().with_logit_standardization(true).init();
    let z = Tensor::<2>::from_floats([[1.0], [2.0]], &device());
    let err = kd_error(
        &kd,
        &z,
        TeacherOutput::Logits(z.clone()),
        Targets::unlabelled(),
    );
    assert!(
        matches!(
            err,
            DistillError::InvalidParameter {
                argument: "classes",
                value: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let z = Tensor::<2>::zeros([1, 3], &device());
    let p = TeacherOutput::Probs(Tensor::<2>::ones([1, 3], &device()).div_scalar(3.0));
    let err = kd_error(&kd, &z, p, Targets::unlabelled());
    assert!(
        matches!(err, DistillError::UnsupportedTeacher { .. }),
        "{err:?}"
    );
}

/// Divergence parameters are checked by `try_init`.
#[test]
fn divergence_parameters() {
    for (divergence, name) in [
        (Divergence::Jsd { beta: 1.5 }, "beta"),
        (Divergence::JsdNormalized { beta: -0.1 }, "beta"),
        (Divergence::SkewForwardKl { alpha: 1.0 }, "alpha"),
        (Divergence::SkewReverseKl { alpha: f64::NAN }, "alpha"),
    ] {
        let config = KdLossConfig::new().with_divergence(divergence);
        let err = config.try_init().unwrap_err();
        assert!(
            matches!(err, DistillError::OutOfUnitInterval { argument, .. } if argument == name),
            "{err:?}"
        );
        assert_eq!(
            panic_message(|| {
                let _ = config.init();
            }),
            err.to_string()
        );
    }
}

/// Top-k teachers: an empty batch, a batch or `k` that does not fit, indices out
/// of range — each an error by name.
#[test]
fn top_k_teacher_errors() {
    let kd = KdLossConfig::new().init();
    let empty = Tensor::<2>::zeros([0, 4], &device());
    let sparse = SparseTeacher::new(
        Tensor::<2, Int>::zeros([0, 2], &device()),
        Tensor::<2>::zeros([0, 2], &device()),
    )
    .unwrap();
    let err = kd_error(
        &kd,
        &empty,
        TeacherOutput::TopK(sparse),
        Targets::unlabelled(),
    );
    assert!(matches!(err, DistillError::EmptyTensor { .. }), "{err:?}");

    let z = Tensor::<2>::zeros([2, 4], &device());
    let indices = Tensor::<2, Int>::from_ints([[0, 4], [1, 2]], &device());
    let sparse = SparseTeacher::new(indices, Tensor::<2>::full([2, 2], -1.0, &device())).unwrap();
    let err = kd_error(&kd, &z, TeacherOutput::TopK(sparse), Targets::unlabelled());
    assert!(
        matches!(
            err,
            DistillError::LabelOutOfRange {
                argument: "teacher.indices",
                label: 4,
                ..
            }
        ),
        "{err:?}"
    );
    // A class stored twice in a row (row 1's class 2) is no distribution:
    // refused, naming the row and the class.
    let twice = SparseTeacher::new(
        Tensor::<2, Int>::from_ints([[0, 1], [2, 2]], &device()),
        Tensor::<2>::full([2, 2], -1.0, &device()),
    )
    .unwrap();
    let expected = DistillError::InvalidTopK {
        argument: "teacher.indices",
        row: 1,
        reason: "class 2 appears twice".into(),
    };
    let err = kd_error(
        &kd,
        &z,
        TeacherOutput::TopK(twice.clone()),
        Targets::unlabelled(),
    );
    assert_eq!(err, expected);
    // Log-probabilities that are no distribution's top k — raw logits given in
    // their place (row 1's mass e^2 + e^1), a NaN (row 0) — are refused by row,
    // where the tail bucket, clamped at 0, would hide them; rounding above 1 by
    // less than 1e-2 is accepted.
    let indices = Tensor::<2, Int>::from_ints([[0, 1], [2, 3]], &device());
    let cases = [
        ([[-1.0, -2.0], [2.0, 1.0]], 1, "sum to 10.1"),
        ([[f32::NAN, -2.0], [-1.0, -2.0]], 0, "sum to NaN"),
        ([[-0.69, -0.69], [-1.0, -2.0]], 0, "sum to 1.003"),
    ];
    for (log_probs, row, says) in cases {
        let teacher = SparseTeacher::new(
            indices.clone(),
            Tensor::<2>::from_floats(log_probs, &device()),
        )
        .unwrap();
        let accepted = says == "sum to 1.003";
        let err = kd.check(
            &z,
            &TeacherOutput::TopK(teacher.clone()),
            &Targets::unlabelled(),
        );
        if accepted {
            assert!(err.is_ok(), "{err:?}");
            continue;
        }
        let err = err.unwrap_err();
        assert!(
            matches!(err, DistillError::InvalidTopK { argument: "teacher.log_probs", row: r, .. } if r == row),
            "{err:?}"
        );
        assert!(err.to_string().contains(says), "{err}");
    }
    let err = SparseTeacher::top_k(z.clone(), 5, 1.0).unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::InvalidParameter {
                argument: "k",
                value: 5,
                ..
            }
        ),
        "{err:?}"
    );
    let three_rows = SparseTeacher::top_k(Tensor::<2>::zeros([3, 4], &device()), 2, 1.0).unwrap();
    let err = kd_error(
        &kd,
        &z,
        TeacherOutput::TopK(three_rows),
        Targets::unlabelled(),
    );
    assert_shape_mismatch(&err, "teacher.indices rows", &[3], &[2]);
    assert!(!err.to_string().contains("generalist"), "{err}");
}

/// DKD: a top-k teacher and missing labels are refused by name.
#[test]
fn dkd_errors() {
    let dkd = DkdLossConfig::new().init();
    let z = Tensor::<2>::zeros([2, 4], &device());
    let sparse = TeacherOutput::TopK(SparseTeacher::top_k(z.clone(), 2, 1.0).unwrap());
    let y = Targets::new(labels(&[0, 1], &device()));
    let err = dkd.check(&z, &sparse, &y).unwrap_err();
    assert!(
        matches!(err, DistillError::UnsupportedTeacher { .. }),
        "{err:?}"
    );
    assert_eq!(
        panic_message(|| drop(dkd.forward(z.clone(), sparse, y))),
        err.to_string()
    );
    let err = dkd
        .check(
            &z,
            &TeacherOutput::Logits(z.clone()),
            &Targets::unlabelled(),
        )
        .unwrap_err();
    assert_eq!(err, DistillError::MissingLabels);
    assert_eq!(
        panic_message(|| drop(dkd.forward(z.clone(), z.clone(), Targets::unlabelled()))),
        err.to_string()
    );
}

/// The dustbin correction has a fallible form, and refuses a non-finite shift.
#[test]
fn dustbin_correction_errors() {
    let s = Specialist::new(ClassSubset::new(vec![0, 1], 4).unwrap());
    let logits = Tensor::<2>::zeros([2, 3], &device());
    let err = s.correct_dustbin(logits.clone(), f64::NAN).unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::NotFinite {
                argument: "correction",
                ..
            }
        ),
        "{err:?}"
    );
    let expected = DistillError::NotFinite {
        argument: "correction",
        value: f64::INFINITY,
    };
    assert_eq!(
        s.correct_dustbin(logits, f64::INFINITY).unwrap_err(),
        expected
    );
    let wide = Tensor::<2>::zeros([2, 4], &device());
    let err = s.correct_dustbin(wide, 1.0).unwrap_err();
    assert!(matches!(err, DistillError::ShapeMismatch { .. }), "{err:?}");
}

/// `map_labels` names its own argument.
#[test]
fn specialist_labels_are_named_labels() {
    let s = Specialist::new(ClassSubset::new(vec![0, 1], 4).unwrap());
    let err = s.map_labels(labels(&[0, 4], &device())).unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::LabelOutOfRange {
                argument: "labels",
                label: 4,
                ..
            }
        ),
        "{err:?}"
    );
}
