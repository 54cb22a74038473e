//! No loss forward waits for the device: on wgpu (CI: lavapipe) every forward
//! of `KdLoss`, `DkdLoss` and `FusedLinearKdLoss` — every teacher form, labels,
//! masks, reductions, chunkings, and the backward pass — reads nothing back
//! (`diagnostics::device_reads` stays), while `check` does read; and bad
//! values that a forward cannot refuse without reading make its loss NaN,
//! exactly at the bad positions, with `check` naming them.

use crate::common;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_distill::diagnostics::device_reads;
use burn_distill::dkd::DkdLossConfig;
use burn_distill::{
    DistillError, Divergence, FusedLinearKdLossConfig, KdLossConfig, LinearTeacher, Reduction,
    SparseTeacher, Targets, TeacherOutput,
};
use common::{Normals, Rng, devices, labels, values};

/// The wgpu device, if the tests were built with it and found an adapter.
fn wgpu() -> Option<Device> {
    let device = devices().into_iter().find(|(name, _)| *name == "wgpu");
    if device.is_none() {
        eprintln!("device reads: no wgpu device, nothing to check");
    }
    device.map(|(_, device)| device)
}

const ROWS: usize = 6;
const CLASSES: usize = 7;

fn logits(rng: &mut Rng, shape: [usize; 2], device: &Device) -> Tensor<2> {
    let data: Vec<f32> = rng
        .normals(shape[0] * shape[1], 2.0)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Runs `f` and returns how many device reads it made.
fn reads_of(f: impl FnOnce()) -> u64 {
    let before = device_reads();
    f();
    device_reads() - before
}

#[test]
fn no_forward_reads_from_the_device_and_check_does() {
    let Some(device) = wgpu() else { return };
    let autodiff = device.clone().autodiff();
    let mut rng = Rng::new(41);
    let z = logits(&mut rng, [ROWS, CLASSES], &autodiff).require_grad();
    let v = logits(&mut rng, [ROWS, CLASSES], &autodiff);
    let y = labels(&[0, 6, 3, 2, 1, 5], &autodiff);
    // Built outside the counted forwards (burn's `topk` is not the loss's).
    let top_k = SparseTeacher::top_k(v.clone(), 3, 2.0).unwrap();
    let probs = burn::tensor::activation::softmax(v.clone().div_scalar(2.0), 1);
    let padding = Tensor::<1, Bool>::from_data([false, false, true, false, true, false], &autodiff);
    let teachers: Vec<(&str, TeacherOutput)> = vec![
        ("logits", TeacherOutput::Logits(v.clone())),
        ("probs", TeacherOutput::Probs(probs.clone())),
        ("log_probs", TeacherOutput::LogProbs(probs.clone().log())),
        ("top-k", TeacherOutput::TopK(top_k.clone())),
    ];
    let targets = || {
        vec![
            ("labels", Targets::new(y.clone())),
            ("unlabelled", Targets::unlabelled()),
            (
                "padding + sum",
                Targets::new(y.clone())
                    .with_padding_mask(padding.clone())
                    .with_reduction(Reduction::Sum),
            ),
            (
                "global count",
                Targets::new(y.clone())
                    .with_padding_mask(padding.clone())
                    .with_reduction(Reduction::GlobalCount(9)),
            ),
            (
                "global count 0, all padding",
                Targets::new(y.clone())
                    .with_padding_mask(Tensor::<1, Bool>::from_data([true; ROWS], &autodiff))
                    .with_reduction(Reduction::GlobalCount(0)),
            ),
        ]
    };
    for divergence in [
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::Jsd { beta: 0.5 },
    ] {
        for ignore in [None, Some(6)] {
            let mut config = KdLossConfig::new()
                .with_temperature(2.0)
                .with_hard_weight(0.5)
                .with_divergence(divergence);
            if let Some(ignore) = ignore {
                config = config.with_ignore_index(Some(ignore));
            }
            let kd = config.init();
            for (teacher_name, teacher) in &teachers {
                for (targets_name, targets) in targets() {
                    let what = format!(
                        "KdLoss {divergence:?} {teacher_name} {targets_name} ignore {ignore:?}"
                    );
                    let n = reads_of(|| {
                        let loss = kd.forward(z.clone(), teacher.clone(), targets.clone());
                        let _ = kd.forward_parts(z.clone(), teacher.clone(), targets.clone());
                        let _ =
                            kd.forward_no_reduction(z.clone(), teacher.clone(), targets.clone());
                        let _ = z.grad(&loss.backward());
                    });
                    assert_eq!(n, 0, "{what}: reads in a forward");
                    // Labels, probabilities and top-k indices are what check reads.
                    let reads = targets.labels().is_some()
                        || matches!(teacher, TeacherOutput::Probs(_) | TeacherOutput::TopK(_));
                    let n = reads_of(|| kd.check(&z, teacher, &targets).unwrap());
                    assert_eq!(n > 0, reads, "{what}: check reads {n} times");
                }
            }
        }
    }
    // DKD (burn ops on wgpu), dense teachers.
    let dkd = DkdLossConfig::new().init();
    for (teacher_name, teacher) in teachers.iter().filter(|(name, _)| *name != "top-k") {
        let n = reads_of(|| {
            let targets = Targets::new(y.clone()).with_padding_mask(padding.clone());
            let loss = dkd.forward(z.clone(), teacher.clone(), targets.clone());
            let _ = dkd.forward_parts(z.clone(), teacher.clone(), targets.clone());
            let _ = dkd.forward_no_reduction(z.clone(), teacher.clone(), targets);
            let _ = z.grad(&loss.backward());
        });
        assert_eq!(n, 0, "DkdLoss {teacher_name}: reads in a forward");
    }
    // The fused linear loss, every chunking (1 row, 4 rows, the default).
    let hidden = logits(&mut rng, [ROWS, 5], &autodiff).require_grad();
    let weight = logits(&mut rng, [5, CLASSES], &autodiff).require_grad();
    let bias = logits(&mut rng, [1, CLASSES], &autodiff).reshape([CLASSES]);
    let linear_teachers = [
        ("logits", LinearTeacher::Logits(v.clone())),
        ("top-k", LinearTeacher::TopK(top_k.clone())),
        (
            "hidden",
            LinearTeacher::Hidden {
                hidden: logits(&mut rng, [ROWS, 5], &autodiff),
                weight: logits(&mut rng, [5, CLASSES], &autodiff),
                bias: None,
            },
        ),
    ];
    for chunk_size in [Some(1), Some(4), None] {
        let loss = FusedLinearKdLossConfig::new(KdLossConfig::new().with_hard_weight(0.5))
            .with_chunk_size(chunk_size)
            .init();
        for (teacher_name, teacher) in &linear_teachers {
            let targets = Targets::new(y.clone()).with_padding_mask(padding.clone());
            let n = reads_of(|| {
                let total = loss.forward(
                    hidden.clone(),
                    weight.clone(),
                    Some(bias.clone()),
                    teacher.clone(),
                    targets.clone(),
                );
                let _ = loss.forward_parts(
                    hidden.clone(),
                    weight.clone(),
                    Some(bias.clone()),
                    teacher.clone(),
                    targets.clone(),
                );
                let _ = hidden.grad(&total.backward());
            });
            assert_eq!(
                n, 0,
                "FusedLinearKdLoss chunk {chunk_size:?} {teacher_name}: reads in a forward"
            );
        }
    }
}

/// What a forward cannot refuse without reading, it makes NaN — at the bad
/// positions only, the reduced loss as a whole — and `check` names it.
#[test]
fn bad_values_make_the_forward_nan_and_check_names_them() {
    let Some(device) = wgpu() else { return };
    let mut rng = Rng::new(43);
    let z = logits(&mut rng, [ROWS, CLASSES], &device);
    let v = logits(&mut rng, [ROWS, CLASSES], &device);
    let kd = KdLossConfig::new().with_hard_weight(0.5).init();
    let nan_at = |per_position: Tensor<1>, bad: &[usize], what: &str| {
        let got = values(per_position);
        for (i, value) in got.iter().enumerate() {
            assert_eq!(
                value.is_nan(),
                bad.contains(&i),
                "{what}: position {i} is {value}"
            );
        }
    };

    // A label out of range at position 2 (and −1 at 4).
    let y = labels(&[0, 1, 7, 2, -1, 3], &device);
    let n = reads_of(|| {
        nan_at(
            kd.forward_no_reduction(z.clone(), v.clone(), y.clone()),
            &[2, 4],
            "labels",
        );
        assert!(common::scalar(kd.forward(z.clone(), v.clone(), y.clone())).is_nan());
    });
    // Read back only by the test's own `values`, not counted: the crate's forward read nothing.
    assert_eq!(n, 0);
    let error = kd
        .check(
            &z,
            &TeacherOutput::Logits(v.clone()),
            &Targets::new(y.clone()),
        )
        .unwrap_err();
    assert!(
        matches!(error, DistillError::LabelOutOfRange { label: -1, .. }),
        "{error}"
    );
    // Also where the bad label is padding: the reduced loss is NaN, as `check` refuses it.
    let padding = Tensor::<1, Bool>::from_data([false, false, true, false, true, false], &device);
    let masked = Targets::new(y.clone()).with_padding_mask(padding);
    assert!(common::scalar(kd.forward(z.clone(), v.clone(), masked)).is_nan());

    // Probabilities with a negative entry in row 1.
    let mut p = burn::tensor::activation::softmax(v.clone(), 1);
    p = p.slice_assign([1..2, 0..1], Tensor::<2>::from_floats([[-0.5]], &device));
    let y = labels(&[0, 1, 2, 3, 4, 5], &device);
    let teacher = TeacherOutput::Probs(p);
    nan_at(
        kd.forward_no_reduction(z.clone(), teacher.clone(), y.clone()),
        &[1],
        "probs",
    );
    let error = kd
        .check(&z, &teacher, &Targets::new(y.clone()))
        .unwrap_err();
    assert!(
        matches!(error, DistillError::InvalidProbabilities { .. }),
        "{error}"
    );

    // A top-k index out of range in row 4.
    let indices = Tensor::<2, Int>::from_data(
        TensorData::new(vec![0i64, 1, 2, 3, 4, 5, 6, 0, 1, 9, 2, 3], [ROWS, 2]),
        &device,
    );
    let log_probs = Tensor::<2>::from_floats([[-1.0, -2.0]; ROWS], &device);
    let teacher = TeacherOutput::TopK(SparseTeacher::new(indices, log_probs).unwrap());
    nan_at(
        kd.forward_no_reduction(z.clone(), teacher.clone(), y.clone()),
        &[4],
        "top-k",
    );
    let error = kd
        .check(&z, &teacher, &Targets::new(y.clone()))
        .unwrap_err();
    assert!(
        matches!(error, DistillError::LabelOutOfRange { label: 9, .. }),
        "{error}"
    );

    // A class stored twice in row 2, on the Cube kernel and on burn ops.
    let indices = Tensor::<2, Int>::from_data(
        TensorData::new(vec![0i64, 1, 2, 3, 4, 4, 6, 0, 1, 5, 2, 3], [ROWS, 2]),
        &device,
    );
    let log_probs = Tensor::<2>::from_floats([[-1.0, -2.0]; ROWS], &device);
    let teacher = TeacherOutput::TopK(SparseTeacher::new(indices, log_probs).unwrap());
    for fused in [true, false] {
        let kd = KdLossConfig::new()
            .with_hard_weight(0.5)
            .with_fused_kernel(fused)
            .init();
        nan_at(
            kd.forward_no_reduction(z.clone(), teacher.clone(), y.clone()),
            &[2],
            &format!("top-k class twice, fused {fused}"),
        );
    }
    let error = kd
        .check(&z, &teacher, &Targets::new(y.clone()))
        .unwrap_err();
    assert_eq!(
        error,
        DistillError::InvalidTopK {
            argument: "teacher.indices",
            row: 2,
            reason: "class 4 appears twice".into()
        }
    );

    // DKD with a label out of range at 0.
    let dkd = DkdLossConfig::new().init();
    let y_bad = labels(&[8, 1, 2, 3, 4, 5], &device);
    nan_at(
        dkd.forward_no_reduction(z.clone(), v.clone(), y_bad.clone()),
        &[0],
        "dkd",
    );

    // A global count of 0 with tokens kept: every kept position is NaN.
    let padding = Tensor::<1, Bool>::from_data([true, true, false, true, true, true], &device);
    let zero = Targets::new(y.clone())
        .with_padding_mask(padding)
        .with_reduction(Reduction::GlobalCount(0));
    assert!(common::scalar(kd.forward(z.clone(), v.clone(), zero.clone())).is_nan());
    let error = kd
        .check(&z, &TeacherOutput::Logits(v.clone()), &zero)
        .unwrap_err();
    assert!(
        matches!(error, DistillError::ZeroGlobalCount { kept: 1 }),
        "{error}"
    );

    // The fused linear loss: the same labels, NaN; valid ones stay finite.
    let hidden = logits(&mut rng, [ROWS, 5], &device);
    let weight = logits(&mut rng, [5, CLASSES], &device);
    let linear = FusedLinearKdLossConfig::new(KdLossConfig::new())
        .with_chunk_size(Some(4))
        .init();
    let teacher = || LinearTeacher::Logits(v.clone());
    let bad = linear.forward(hidden.clone(), weight.clone(), None, teacher(), y_bad);
    assert!(common::scalar(bad).is_nan());
    let good = linear.forward(hidden, weight, None, teacher(), y);
    assert!(common::scalar(good).is_finite());
}
