//! `FusedLinearKdLoss` against the materialised path it replaces — the output
//! layer's full logits (`hidden · weight + bias`) into `KdLoss` — in value and
//! in all three gradients (hidden states, weight, bias): every divergence, a
//! row mask and `ignore_index`, chunk sizes 1, 3 (ragged last chunk), 7 and
//! ≥ rows, the teacher as hidden states and output layer, as logits and as a
//! top-k; f64 on flex and ndarray, f32 on every device.

use crate::common;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_distill::{
    DistillError, Divergence, FusedLinearKdLossConfig, KdLossConfig, LinearTeacher, SparseTeacher,
    Targets, VocabularyRule,
};
use common::{
    EVERY_DIVERGENCE, Normals, Rng, assert_allclose, devices, devices_f64, tensor2, tensor2_f64,
    values,
};

const ROWS: usize = 10;
const D: usize = 5;
const D_TEACHER: usize = 6;
const VOCAB: usize = 13;

struct Case {
    hidden: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    teacher_hidden: Vec<f64>,
    teacher_weight: Vec<f64>,
    teacher_bias: Vec<f64>,
    labels: Vec<i64>,
    keep: Vec<bool>,
}

fn case() -> Case {
    let mut rng = Rng::new(2024);
    let mut labels: Vec<i64> = (0..ROWS).map(|_| rng.below(VOCAB) as i64).collect();
    labels[4] = -100;
    Case {
        hidden: rng.normals(ROWS * D, 1.0),
        weight: rng.normals(D * VOCAB, 1.0),
        bias: rng.normals(VOCAB, 0.5),
        teacher_hidden: rng.normals(ROWS * D_TEACHER, 1.0),
        teacher_weight: rng.normals(D_TEACHER * VOCAB, 1.0),
        teacher_bias: rng.normals(VOCAB, 0.5),
        labels,
        keep: (0..ROWS).map(|r| r != 7).collect(),
    }
}

fn vector(
    values: &[f64],
    make: fn(&[f64], [usize; 2], &Device) -> Tensor<2>,
    device: &Device,
) -> Tensor<1> {
    make(values, [1, values.len()], device).reshape([values.len()])
}

/// The teacher forms, all describing the same teacher.
#[derive(Clone, Copy, Debug)]
enum TeacherForm {
    Hidden,
    Logits,
    TopK,
}

#[allow(clippy::too_many_arguments)]
fn check_case(
    c: &Case,
    device: &Device,
    make: fn(&[f64], [usize; 2], &Device) -> Tensor<2>,
    divergence: Divergence,
    form: TeacherForm,
    chunk_size: usize,
    (rtol, atol): (f64, f64),
) {
    let kd = KdLossConfig::new()
        .with_temperature(2.0)
        .with_divergence(divergence)
        .with_ignore_index(Some(-100));
    let targets = || {
        let labels = Tensor::<1, Int>::from_data(TensorData::new(c.labels.clone(), [ROWS]), device);
        let keep = Tensor::<1, Bool>::from_data(TensorData::new(c.keep.clone(), [ROWS]), device);
        Targets::new(labels).with_keep_rows(keep)
    };
    let teacher_logits = || {
        let h = make(&c.teacher_hidden, [ROWS, D_TEACHER], device);
        let w = make(&c.teacher_weight, [D_TEACHER, VOCAB], device);
        h.matmul(w) + vector(&c.teacher_bias, make, device).unsqueeze_dim(0)
    };
    let teacher = || match form {
        TeacherForm::Hidden => LinearTeacher::Hidden {
            hidden: make(&c.teacher_hidden, [ROWS, D_TEACHER], device),
            weight: make(&c.teacher_weight, [D_TEACHER, VOCAB], device),
            bias: Some(vector(&c.teacher_bias, make, device)),
        },
        TeacherForm::Logits => LinearTeacher::Logits(teacher_logits()),
        TeacherForm::TopK => {
            LinearTeacher::TopK(SparseTeacher::top_k(teacher_logits(), 4, 2.0).unwrap())
        }
    };
    let params = || {
        (
            make(&c.hidden, [ROWS, D], device).require_grad(),
            make(&c.weight, [D, VOCAB], device).require_grad(),
            vector(&c.bias, make, device).require_grad(),
        )
    };

    // Materialised: the full logits, then KdLoss.
    let (h, w, b) = params();
    let logits = h.clone().matmul(w.clone()) + b.clone().unsqueeze_dim(0);
    let want = match teacher() {
        LinearTeacher::TopK(sparse) => kd.init().forward(logits, sparse, targets()),
        _ => kd.init().forward(logits, teacher_logits(), targets()),
    };
    let grads = want.backward();
    let want_grads = [
        values(h.grad(&grads).unwrap()),
        values(w.grad(&grads).unwrap()),
        values(b.grad(&grads).unwrap()),
    ];

    let fused = FusedLinearKdLossConfig::new(kd)
        .with_chunk_size(Some(chunk_size))
        .init();
    let (h, w, b) = params();
    let got = fused.forward(h.clone(), w.clone(), Some(b.clone()), teacher(), targets());
    let what = |s: &str| format!("{divergence:?} {form:?} chunk {chunk_size} {s} {device:?}");
    assert_allclose(
        &what("loss"),
        &values(got.clone()),
        &values(want),
        rtol,
        atol,
    );
    let grads = got.backward();
    let got_grads = [
        values(h.grad(&grads).unwrap()),
        values(w.grad(&grads).unwrap()),
        values(b.grad(&grads).unwrap()),
    ];
    for (name, (g, e)) in ["hidden", "weight", "bias"]
        .iter()
        .zip(got_grads.iter().zip(&want_grads))
    {
        assert_allclose(&what(name), g, e, rtol, atol);
    }
}

#[test]
fn equals_the_materialised_loss_in_f64() {
    let c = case();
    for (_, device) in devices_f64() {
        let device = device.autodiff();
        for divergence in EVERY_DIVERGENCE {
            for form in [TeacherForm::Hidden, TeacherForm::Logits, TeacherForm::TopK] {
                for chunk_size in [1, 3, 7, ROWS, 64] {
                    check_case(
                        &c,
                        &device,
                        tensor2_f64,
                        divergence,
                        form,
                        chunk_size,
                        (1e-9, 1e-12),
                    );
                }
            }
        }
    }
}

#[test]
fn equals_the_materialised_loss_in_f32() {
    let c = case();
    for (_, device) in devices() {
        let device = device.autodiff();
        for divergence in EVERY_DIVERGENCE {
            for form in [TeacherForm::Hidden, TeacherForm::TopK] {
                for chunk_size in [1, 3, 7, 64] {
                    check_case(
                        &c,
                        &device,
                        tensor2,
                        divergence,
                        form,
                        chunk_size,
                        (1e-4, 1e-6),
                    );
                }
            }
        }
    }
}

/// Without autodiff the value alone, the same; bad shapes and a zero chunk
/// size are errors naming the argument.
#[test]
fn inference_and_bad_input() {
    let c = case();
    for (_, device) in devices_f64() {
        let kd = KdLossConfig::new();
        let fused = FusedLinearKdLossConfig::new(kd.clone())
            .with_chunk_size(Some(4))
            .init();
        let hidden = tensor2(&c.hidden, [ROWS, D], &device);
        let weight = tensor2(&c.weight, [D, VOCAB], &device);
        let teacher = tensor2(&c.teacher_hidden, [ROWS, D_TEACHER], &device).matmul(tensor2(
            &c.teacher_weight,
            [D_TEACHER, VOCAB],
            &device,
        ));
        let labels =
            Tensor::<1, Int>::from_data(TensorData::new(vec![1i64; ROWS], [ROWS]), &device);
        let got = fused.forward(
            hidden.clone(),
            weight.clone(),
            None,
            LinearTeacher::Logits(teacher.clone()),
            labels.clone(),
        );
        let want = kd.init().forward(
            hidden.clone().matmul(weight.clone()),
            teacher.clone(),
            labels.clone(),
        );
        assert_allclose("inference", &values(got), &values(want), 1e-5, 1e-7);

        let wrong = tensor2(&c.weight[..(D - 1) * VOCAB], [D - 1, VOCAB], &device);
        let error = fused
            .check(
                &hidden,
                &wrong,
                None,
                &LinearTeacher::Logits(teacher.clone()),
                &Targets::from(labels.clone()),
            )
            .unwrap_err();
        assert!(
            matches!(error, DistillError::ShapeMismatch { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("weight rows"), "{error}");
        let error = fused
            .check(
                &hidden,
                &weight,
                None,
                &LinearTeacher::Logits(teacher.slice(0..ROWS - 1)),
                &Targets::from(labels),
            )
            .unwrap_err();
        assert!(error.to_string().contains("teacher rows"), "{error}");
        let error = FusedLinearKdLossConfig::new(kd)
            .with_chunk_size(Some(0))
            .try_init()
            .unwrap_err();
        assert!(error.to_string().contains("chunk_size"), "{error}");
    }
}

/// A teacher with a padded vocabulary (3 classes more): refused by name
/// by default, cut by `VocabularyRule::TruncateTeacher` to the student's classes with it —
/// then equal to the materialised loss with the same setting.
#[test]
fn padded_teacher_vocabulary() {
    let c = case();
    let mut rng = Rng::new(5);
    let wide = rng.normals(ROWS * (VOCAB + 3), 2.0);
    for (_, device) in devices_f64() {
        let device = device.autodiff();
        let labels =
            || Tensor::<1, Int>::from_data(TensorData::new(vec![2i64; ROWS], [ROWS]), &device);
        let teacher = || tensor2_f64(&wide, [ROWS, VOCAB + 3], &device);
        let hidden = || tensor2_f64(&c.hidden, [ROWS, D], &device).require_grad();
        let weight = tensor2_f64(&c.weight, [D, VOCAB], &device);

        let strict = FusedLinearKdLossConfig::new(KdLossConfig::new())
            .with_chunk_size(Some(4))
            .init();
        let error = strict
            .check(
                &hidden(),
                &weight,
                None,
                &LinearTeacher::Logits(teacher()),
                &Targets::from(labels()),
            )
            .unwrap_err();
        assert!(
            matches!(error, DistillError::ShapeMismatch { .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains(&(VOCAB + 3).to_string()),
            "{error}"
        );

        let kd = KdLossConfig::new().with_vocabulary(VocabularyRule::TruncateTeacher);
        let fused = FusedLinearKdLossConfig::new(kd.clone())
            .with_chunk_size(Some(4))
            .init();
        let h = hidden();
        let got = fused.forward(
            h.clone(),
            weight.clone(),
            None,
            LinearTeacher::Logits(teacher()),
            labels(),
        );
        let got_grad = values(h.grad(&got.clone().backward()).unwrap());
        let h = hidden();
        let want = kd
            .init()
            .forward(h.clone().matmul(weight.clone()), teacher(), labels());
        let want_grad = values(h.grad(&want.clone().backward()).unwrap());
        assert_allclose("truncated loss", &values(got), &values(want), 1e-9, 1e-12);
        assert_allclose("truncated gradient", &got_grad, &want_grad, 1e-9, 1e-12);
    }
}

/// Inside a larger graph: the loss scaled (`2.5·L`) and added to a term of
/// the hidden states (`0.1·Σh²`), so each gradient is scaled by the incoming
/// one and summed with another; with and without a bias, and with only the
/// hidden states or only the layer trained (a frozen output layer, a frozen
/// backbone) — each equal to the materialised loss in the same graph, on every
/// device.
#[test]
fn gradients_inside_a_larger_graph() {
    let c = case();
    let kd = KdLossConfig::new()
        .with_temperature(2.0)
        .with_ignore_index(Some(-100));
    let fused = FusedLinearKdLossConfig::new(kd.clone())
        .with_chunk_size(Some(3))
        .init();
    for (_, device) in devices() {
        let device = device.autodiff();
        let labels =
            || Tensor::<1, Int>::from_data(TensorData::new(c.labels.clone(), [ROWS]), &device);
        let teacher = || {
            tensor2(&c.teacher_hidden, [ROWS, D_TEACHER], &device).matmul(tensor2(
                &c.teacher_weight,
                [D_TEACHER, VOCAB],
                &device,
            ))
        };
        for (with_bias, train_hidden, train_layer) in [
            (true, true, true),
            (false, true, true),
            (true, true, false),
            (false, false, true),
        ] {
            let gradients = |fused_path: bool| {
                let track = |t: Tensor<2>, on: bool| if on { t.require_grad() } else { t };
                let h = track(tensor2(&c.hidden, [ROWS, D], &device), train_hidden);
                let w = track(tensor2(&c.weight, [D, VOCAB], &device), train_layer);
                let b = with_bias.then(|| {
                    let b = vector(&c.bias, tensor2, &device);
                    if train_layer { b.require_grad() } else { b }
                });
                let loss = if fused_path {
                    let teacher = LinearTeacher::Logits(teacher());
                    fused.forward(h.clone(), w.clone(), b.clone(), teacher, labels())
                } else {
                    let mut logits = h.clone().matmul(w.clone());
                    if let Some(b) = &b {
                        logits = logits + b.clone().unsqueeze_dim(0);
                    }
                    kd.init().forward(logits, teacher(), labels())
                };
                let total = loss.clone() * 2.5 + h.clone().powf_scalar(2.0).sum() * 0.1;
                let grads = total.backward();
                let grad = |t: Option<Tensor<2>>| t.map(values);
                (
                    values(loss),
                    grad(h.grad(&grads)),
                    grad(w.grad(&grads)),
                    b.and_then(|b| b.grad(&grads)).map(values),
                )
            };
            let (got, want) = (gradients(true), gradients(false));
            let what = |s: &str| {
                format!("bias {with_bias} h {train_hidden} W {train_layer} {s} {device:?}")
            };
            assert_allclose(&what("loss"), &got.0, &want.0, 1e-5, 1e-7);
            for (name, g, e) in [("hidden", got.1, want.1), ("weight", got.2, want.2)] {
                assert_eq!(g.is_some(), e.is_some(), "{}", what(name));
                if let (Some(g), Some(e)) = (g, e) {
                    assert_allclose(&what(name), &g, &e, 1e-4, 1e-6);
                }
            }
            assert_eq!(got.3.is_some(), want.3.is_some(), "{}", what("bias"));
            if let (Some(g), Some(e)) = (got.3, want.3) {
                assert_allclose(&what("bias"), &g, &e, 1e-4, 1e-6);
            }
        }
    }
}

/// `forward_parts`: the total, soft and hard terms equal `KdLoss::forward_parts`
/// on the materialised logits (every divergence, masks, `ignore_index`), and
/// the total's gradients equal the materialised total's.
#[test]
fn parts_equal_the_materialised_parts() {
    let c = case();
    for (_, device) in devices() {
        let device = device.autodiff();
        let labels =
            || Tensor::<1, Int>::from_data(TensorData::new(c.labels.clone(), [ROWS]), &device);
        let keep =
            || Tensor::<1, Bool>::from_data(TensorData::new(c.keep.clone(), [ROWS]), &device);
        let targets = || Targets::new(labels()).with_keep_rows(keep());
        let teacher = || {
            tensor2(&c.teacher_hidden, [ROWS, D_TEACHER], &device).matmul(tensor2(
                &c.teacher_weight,
                [D_TEACHER, VOCAB],
                &device,
            ))
        };
        for divergence in EVERY_DIVERGENCE {
            let kd = KdLossConfig::new()
                .with_temperature(3.0)
                .with_soft_weight(0.7)
                .with_hard_weight(0.3)
                .with_divergence(divergence)
                .with_ignore_index(Some(-100));
            let fused = FusedLinearKdLossConfig::new(kd.clone())
                .with_chunk_size(Some(4))
                .init();
            let hidden = || tensor2(&c.hidden, [ROWS, D], &device).require_grad();
            let weight = tensor2(&c.weight, [D, VOCAB], &device);

            let h = hidden();
            let got = fused.forward_parts(
                h.clone(),
                weight.clone(),
                None,
                LinearTeacher::Logits(teacher()),
                targets(),
            );
            let got_grad = values(h.grad(&got.total.backward()).unwrap());
            let h = hidden();
            let want =
                kd.init()
                    .forward_parts(h.clone().matmul(weight.clone()), teacher(), targets());
            let want_grad = values(h.grad(&want.total.backward()).unwrap());
            let what = |s: &str| format!("{divergence:?} {s} {device:?}");
            for (name, g, e) in [
                ("total", got.total, want.total),
                ("soft", got.soft, want.soft),
                ("hard", got.hard, want.hard),
            ] {
                assert_allclose(&what(name), &values(g), &values(e), 1e-5, 1e-7);
            }
            assert_allclose(&what("gradient"), &got_grad, &want_grad, 1e-4, 1e-6);
        }
    }
}
