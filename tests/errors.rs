//! Bad input: every `DistillError` variant from its `try_*` form, and the
//! panicking form's message equal to the error's text.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::{Device, Tensor};
use burn_distill::temperature::{softmax, try_log_softmax, try_softmax};
use burn_distill::{DistillError, KdLossConfig};
use common::{labels, tensor2};

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
        let err = try_softmax(z.clone(), t, 1).unwrap_err();
        assert!(
            matches!(err, DistillError::InvalidTemperature { .. }),
            "{err:?}"
        );
        assert_eq!(panic_message(|| drop(softmax(z, t, 1))), err.to_string());
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
    let err = try_log_softmax(z.clone(), 1.0, 2).unwrap_err();
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
    assert_eq!(panic_message(|| drop(softmax(z, 1.0, 2))), err.to_string());
}

#[test]
fn empty_tensor() {
    let kd = KdLossConfig::new().init();
    let empty = Tensor::<2>::zeros([0, 5], &device());
    let err = kd.try_soft_loss(empty.clone(), empty.clone()).unwrap_err();
    assert_eq!(
        err,
        DistillError::EmptyTensor {
            argument: "student_logits",
            shape: vec![0, 5]
        }
    );
    assert!(err.to_string().contains("[0, 5]"), "{err}");
    assert_eq!(
        panic_message(|| drop(kd.soft_loss(empty.clone(), empty))),
        err.to_string()
    );
}

/// The vocabulary-size mismatch of anchors.md (151936 vs 152064 classes) is
/// reported by shape, naming both arguments, before any tensor op.
#[test]
fn shape_mismatch_names_both_shapes() {
    let kd = KdLossConfig::new().init();
    let student = Tensor::<2>::zeros([2, 151936], &device());
    let teacher = Tensor::<2>::zeros([2, 152064], &device());
    let targets = labels(&[0, 1], &device());
    let err = kd
        .try_forward(student.clone(), teacher.clone(), targets.clone())
        .unwrap_err();
    assert_eq!(
        err,
        DistillError::ShapeMismatch {
            left_argument: "student_logits",
            left_shape: vec![2, 151936],
            right_argument: "teacher_logits",
            right_shape: vec![2, 152064],
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("student_logits has shape [2, 151936]")
            && text.contains("teacher_logits has shape [2, 152064]"),
        "{text}"
    );
    assert_eq!(
        panic_message(|| drop(kd.forward(student, teacher, targets))),
        text
    );

    // A batch mismatch too, through every entry point.
    let s = Tensor::<2>::zeros([3, 4], &device());
    let t = Tensor::<2>::zeros([2, 4], &device());
    for err in [
        kd.try_soft_loss(s.clone(), t.clone()).unwrap_err(),
        kd.try_soft_loss_no_reduction(s.clone(), t.clone())
            .unwrap_err(),
        kd.try_forward_parts(s.clone(), t.clone(), labels(&[0, 1, 2], &device()))
            .unwrap_err(),
        kd.try_forward_no_reduction(s.clone(), t.clone(), labels(&[0, 1, 2], &device()))
            .unwrap_err(),
    ] {
        assert!(matches!(err, DistillError::ShapeMismatch { .. }), "{err:?}");
    }
}

#[test]
fn targets_length() {
    let kd = KdLossConfig::new().init();
    let z = Tensor::<2>::zeros([3, 4], &device());
    let err = kd
        .try_forward(z.clone(), z.clone(), labels(&[0, 1], &device()))
        .unwrap_err();
    assert_eq!(
        err,
        DistillError::TargetsLength {
            targets: 2,
            batch: 3
        }
    );
    assert!(
        err.to_string().contains("2 labels") && err.to_string().contains("batch of 3"),
        "{err}"
    );
    assert_eq!(
        panic_message(|| drop(kd.forward(z.clone(), z, labels(&[0, 1], &device())))),
        err.to_string()
    );
}

#[test]
fn label_out_of_range() {
    let kd = KdLossConfig::new().init();
    let z = Tensor::<2>::zeros([3, 4], &device());
    for (targets, bad) in [([0i64, 4, 1], 4i64), ([0, -1, 3], -1), ([9, 0, 7], 9)] {
        let err = kd
            .try_forward(z.clone(), z.clone(), labels(&targets, &device()))
            .unwrap_err();
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
        assert_eq!(
            panic_message(|| drop(kd.forward(z.clone(), z.clone(), labels(&targets, &device())))),
            err.to_string()
        );
    }
}

#[test]
fn invalid_chunk_rows() {
    let config = KdLossConfig::new().with_chunk_rows(Some(0));
    let err = config.try_init().unwrap_err();
    assert_eq!(err, DistillError::InvalidChunkRows { value: 0 });
    assert!(err.to_string().contains("chunk_rows"), "{err}");
    assert_eq!(
        panic_message(|| {
            let _ = config.init();
        }),
        err.to_string()
    );
}

/// Label errors come from the analytic path (labels read on the host for the
/// fused kernel) exactly as from the autodiff path.
#[test]
fn label_out_of_range_on_both_paths() {
    let z = Tensor::<2>::zeros([2, 3], &device());
    for analytic in [true, false] {
        let kd = KdLossConfig::new().with_analytic_backward(analytic).init();
        for err in [
            kd.try_forward(z.clone(), z.clone(), labels(&[0, 3], &device()))
                .unwrap_err(),
            kd.try_forward_parts(z.clone(), z.clone(), labels(&[-2, 1], &device()))
                .unwrap_err(),
            kd.try_forward_no_reduction(z.clone(), z.clone(), labels(&[0, 7], &device()))
                .unwrap_err(),
        ] {
            assert!(
                matches!(err, DistillError::LabelOutOfRange { num_classes: 3, .. }),
                "{err:?}"
            );
        }
    }
}

#[test]
fn errors_are_std_errors() {
    fn takes_error(_: &dyn std::error::Error) {}
    takes_error(&DistillError::AllWeightsZero {
        soft_weight: 0.0,
        hard_weight: 0.0,
    });
}
