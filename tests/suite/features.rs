//! The feature losses (`feature`): values against closed forms and sums
//! written out in f64, gradients against central finite differences, masks
//! and reductions as the logit losses take them, half precision, and bad
//! input by name. (`feature_parity` compares them with torchdistill.)

use crate::common;

use burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use burn_distill::feature::{
    AttentionDistance, AttentionTransferLossConfig, FeatureProjectionConfig, HiddenStateDistance,
    HiddenStateLossConfig, HintLossConfig, RkdLossConfig, attention_map, hidden_state_cosine,
    hidden_state_mse, rkd_angle, rkd_distance,
};
use burn_distill::{DistillError, Reduction, Targets};
use common::{
    Normals, Rng, assert_allclose, assert_shape_mismatch, devices, devices_f64, tensor2,
    tensor2_f64, values,
};

const DISTANCES: [HiddenStateDistance; 2] = [HiddenStateDistance::Mse, HiddenStateDistance::Cosine];

/// `[batch, seq, d]` f64 states.
fn tensor3_f64(values: &[f64], shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), shape),
        (device, DType::F64),
    )
}

/// One position's distance, in f64, written out.
fn distance(kind: HiddenStateDistance, s: &[f64], t: &[f64]) -> f64 {
    match kind {
        HiddenStateDistance::Mse => {
            s.iter().zip(t).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / s.len() as f64
        }
        HiddenStateDistance::Cosine => {
            let dot: f64 = s.iter().zip(t).map(|(a, b)| a * b).sum();
            let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-8);
            1.0 - dot / (norm(s) * norm(t))
        }
    }
}

/// Closed forms: parallel states have cosine distance 0 whatever their
/// lengths, orthogonal 1, opposite 2, a zero state 1; the MSE is the mean
/// squared difference. On every device, through the loss and the reference
/// functions.
#[test]
fn closed_forms_on_every_device() {
    let s = [3.0, 4.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0];
    let t = [6.0, 8.0, 0.0, 5.0, -2.0, -4.0, 1.0, 1.0];
    let want_cosine = [0.0, 1.0, 2.0, 1.0];
    let want_mse = [12.5, 13.0, 22.5, 1.0];
    for (name, device) in devices() {
        let (st, tt) = (tensor2(&s, [4, 2], &device), tensor2(&t, [4, 2], &device));
        let cosine = values(hidden_state_cosine(st.clone(), tt.clone()));
        assert_allclose(&format!("cosine {name}"), &cosine, &want_cosine, 1e-6, 1e-7);
        let mse = values(hidden_state_mse(st.clone(), tt.clone()));
        assert_allclose(&format!("mse {name}"), &mse, &want_mse, 1e-6, 0.0);
        for (kind, want) in [
            (HiddenStateDistance::Cosine, want_cosine),
            (HiddenStateDistance::Mse, want_mse),
        ] {
            let loss = HiddenStateLossConfig::new().with_distance(kind).init();
            let rows = loss.forward_no_reduction(st.clone(), tt.clone(), Targets::unlabelled());
            assert_allclose(
                &format!("{kind:?} {name}"),
                &values(rows),
                &want,
                1e-6,
                1e-7,
            );
            let mean = loss.forward(st.clone(), tt.clone(), Targets::unlabelled());
            let want_mean = want.iter().sum::<f64>() / 4.0;
            assert_allclose(
                &format!("{kind:?} mean {name}"),
                &values(mean),
                &[want_mean],
                1e-6,
                0.0,
            );
        }
    }
}

/// `[batch, seq, d]` with a padding mask, under each reduction: the sums
/// written out in f64 over the counted positions.
#[test]
fn sequences_with_padding_under_every_reduction() {
    let (batch, seq, d) = (2, 3, 4);
    let mut rng = Rng::new(11);
    let s = rng.normals(batch * seq * d, 1.0);
    let t = rng.normals(batch * seq * d, 1.0);
    let padding = [false, false, true, false, true, true];
    let device = Device::flex();
    for kind in DISTANCES {
        let per: Vec<f64> = (0..batch * seq)
            .map(|p| distance(kind, &s[p * d..(p + 1) * d], &t[p * d..(p + 1) * d]))
            .collect();
        let kept: Vec<usize> = (0..batch * seq).filter(|&p| !padding[p]).collect();
        let sum: f64 = kept.iter().map(|&p| per[p]).sum();
        // Sequence 0 counts positions 0 and 1, sequence 1 position 3.
        let sequence_mean = ((per[0] + per[1]) / 2.0 + per[3]) / 2.0;
        let cases = [
            (Reduction::Mean, sum / kept.len() as f64),
            (Reduction::Sum, sum),
            (Reduction::GlobalCount(10), sum / 10.0),
            (Reduction::SequenceMean, sequence_mean),
        ];
        let loss = HiddenStateLossConfig::new().with_distance(kind).init();
        let (st, tt) = (
            tensor3_f64(&s, [batch, seq, d], &device),
            tensor3_f64(&t, [batch, seq, d], &device),
        );
        let mask =
            Tensor::<2, Bool>::from_data(TensorData::new(padding.to_vec(), [batch, seq]), &device);
        for (reduction, want) in cases {
            let targets = Targets::unlabelled()
                .with_padding_mask(mask.clone())
                .with_reduction(reduction);
            let got = values(loss.forward(st.clone(), tt.clone(), targets));
            assert_allclose(
                &format!("{kind:?} {reduction:?}"),
                &got,
                &[want],
                1e-12,
                0.0,
            );
        }
        let rows = loss.forward_no_reduction(
            st.clone(),
            tt.clone(),
            Targets::unlabelled().with_padding_mask(mask.clone()),
        );
        assert_eq!(rows.dims(), [batch, seq]);
        let masked: Vec<f64> = (0..batch * seq)
            .map(|p| if padding[p] { 0.0 } else { per[p] })
            .collect();
        assert_allclose(
            &format!("{kind:?} per position"),
            &values(rows),
            &masked,
            1e-12,
            0.0,
        );
    }
}

/// The student's gradient against central finite differences of the loss in
/// f64, entry by entry; the teacher gets none. A zero student state (cosine's
/// norm clamped) and a padded position keep the gradient finite, the padded
/// one exactly 0.
#[test]
fn gradients_match_finite_differences() {
    let (rows, d) = (4, 5);
    let mut rng = Rng::new(3);
    let mut s = rng.normals(rows * d, 1.0);
    let t = rng.normals(rows * d, 1.0);
    // Row 3 is zero and counted: the cosine is 1 there, its gradient finite.
    s[3 * d..].iter_mut().for_each(|x| *x = 0.0);
    let keep = [true, false, true, true];
    for (name, device) in devices_f64() {
        let device = device.autodiff();
        for kind in DISTANCES {
            let loss = HiddenStateLossConfig::new().with_distance(kind).init();
            let targets = || {
                Targets::unlabelled()
                    .with_keep_rows(Tensor::<1, Bool>::from_data(keep, &device))
                    .with_reduction(Reduction::Sum)
            };
            let value = |s: &[f64]| -> f64 {
                let st = tensor2_f64(s, [rows, d], &device);
                let tt = tensor2_f64(&t, [rows, d], &device);
                values(loss.forward(st, tt, targets()))[0]
            };
            let st = tensor2_f64(&s, [rows, d], &device).require_grad();
            let tt = tensor2_f64(&t, [rows, d], &device).require_grad();
            let grads = loss.forward(st.clone(), tt.clone(), targets()).backward();
            assert!(
                tt.grad(&grads).is_none(),
                "{kind:?} {name}: the teacher got a gradient"
            );
            let grad = values(st.grad(&grads).expect("student gradient"));
            let eps = 1e-6;
            let numeric: Vec<f64> = (0..rows * d)
                .map(|i| {
                    let (mut up, mut down) = (s.clone(), s.clone());
                    up[i] += eps;
                    down[i] -= eps;
                    (value(&up) - value(&down)) / (2.0 * eps)
                })
                .collect();
            // Row 3 is at the cosine's clamped norm (not differentiable at 0):
            // finite there, and compared off it.
            assert!(
                grad.iter().all(|g| g.is_finite()),
                "{kind:?} {name}: {grad:?}"
            );
            let compared = match kind {
                HiddenStateDistance::Cosine => 3 * d,
                HiddenStateDistance::Mse => rows * d,
            };
            assert_allclose(
                &format!("{kind:?} {name} gradient"),
                &grad[..compared],
                &numeric[..compared],
                1e-6,
                1e-9,
            );
            assert!(
                grad[d..2 * d].iter().all(|&g| g == 0.0),
                "the left-out row has a gradient"
            );
        }
    }
}

/// Half precision is computed in f32 and given back in its dtype.
#[test]
fn half_precision_is_computed_in_f32() {
    let device = Device::flex();
    let s = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75];
    let t = [1.0, -0.5, 1.0, 0.5, -1.0, 0.25];
    for kind in DISTANCES {
        let loss = HiddenStateLossConfig::new().with_distance(kind).init();
        let want = (distance(kind, &s[..3], &t[..3]) + distance(kind, &s[3..], &t[3..])) / 2.0;
        let half = |x: &[f64]| tensor2(x, [2, 3], &device).cast(DType::F16);
        let got = loss.forward(half(&s), half(&t), Targets::unlabelled());
        assert_eq!(got.dtype(), DType::F16);
        // The inputs are exact in f16; the result rounds to it once.
        assert_allclose(&format!("{kind:?}"), &values(got), &[want], 1e-3, 0.0);
    }
}

/// Bad input is a `DistillError` naming the arguments and the values.
#[test]
fn bad_input_is_named() {
    let device = Device::flex();
    let loss = HiddenStateLossConfig::new().init();
    let s = Tensor::<3>::zeros([2, 3, 4], &device);
    let err = loss
        .check(
            &s,
            &Tensor::<3>::zeros([2, 3, 5], &device),
            &Targets::unlabelled(),
        )
        .unwrap_err();
    assert_shape_mismatch(&err, "student_hidden", &[2, 3, 4], &[2, 3, 5]);
    assert!(err.to_string().contains("teacher_hidden"), "{err}");
    let empty = Tensor::<3>::zeros([2, 0, 4], &device);
    let err = loss
        .check(&empty, &empty, &Targets::unlabelled())
        .unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::EmptyTensor {
                argument: "student_hidden",
                ..
            }
        ),
        "{err:?}"
    );
    let mask = Tensor::<2, Bool>::from_data([[false, true], [false, false]], &device);
    let err = loss
        .check(&s, &s, &Targets::unlabelled().with_padding_mask(mask))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::ShapeMismatch {
                left_argument: "padding_mask",
                ..
            }
        ),
        "{err:?}"
    );
    #[allow(deprecated)]
    let elsewhere = Tensor::<3>::zeros([2, 3, 4], &Device::ndarray());
    let err = loss
        .check(&s, &elsewhere, &Targets::unlabelled())
        .unwrap_err();
    assert!(
        matches!(err, DistillError::DeviceMismatch { .. }),
        "{err:?}"
    );
    let err = loss
        .check(
            &s,
            &s,
            &Targets::unlabelled().with_reduction(Reduction::GlobalCount(0)),
        )
        .unwrap_err();
    assert!(
        matches!(err, DistillError::ZeroGlobalCount { .. }),
        "{err:?}"
    );
    // The forwards and the reference functions panic with the same message.
    let panic = std::panic::catch_unwind(|| {
        HiddenStateLossConfig::new().init().forward(
            Tensor::<2>::zeros([2, 4], &Device::flex()),
            Tensor::<2>::zeros([3, 4], &Device::flex()),
            Targets::unlabelled(),
        )
    })
    .unwrap_err();
    let message = panic.downcast_ref::<String>().expect("a message");
    assert!(
        message.contains("student_hidden") && message.contains("[3, 4]"),
        "{message}"
    );
    let panic = std::panic::catch_unwind(|| {
        hidden_state_mse(
            Tensor::<2>::zeros([2, 4], &Device::flex()),
            Tensor::<2>::zeros([2, 5], &Device::flex()),
        )
    })
    .unwrap_err();
    let message = panic.downcast_ref::<String>().expect("a message");
    assert!(
        message.contains("teacher_hidden") && message.contains("[2, 5]"),
        "{message}"
    );
}

/// RKD's closed forms: a copy of the teacher's triangle, scaled, moved and
/// in a wider space, has the same normalised distances and angles (0); an
/// equilateral student against a 3-4-5 teacher has the terms written out by
/// hand. Distances 3, 4, 5 (mean 4) against 1, 1, 1: differences ±¼ on two
/// pairs, each twice, Huber ½·¼² = 1/32, over 9 entries: 1/72. Angles
/// (cosines at each vertex) 0, 3/5, 4/5 against ½: differences ½, −1/10,
/// −3/10, each twice, Huber 1/8, 1/200, 9/200, over 27 entries: 0.35/27.
#[test]
fn rkd_closed_forms() {
    let teacher = [0.0, 0.0, 3.0, 0.0, 0.0, 4.0];
    let copy = [1.0, 1.0, 7.0, 7.0, 1.0, 7.0, 1.0, 9.0, 7.0];
    let h = 3f64.sqrt() / 2.0;
    let equilateral = [0.0, 0.0, 1.0, 0.0, 0.5, h];
    for (name, device) in devices() {
        let t = tensor2(&teacher, [3, 2], &device);
        let c = tensor2(&copy, [3, 3], &device);
        let e = tensor2(&equilateral, [3, 2], &device);
        let both = RkdLossConfig::new().init();
        assert_allclose(
            &format!("copy {name}"),
            &values(both.forward(c.clone(), t.clone())),
            &[0.0],
            0.0,
            1e-6,
        );
        let distance = values(rkd_distance(e.clone(), t.clone()));
        assert_allclose(
            &format!("distance {name}"),
            &distance,
            &[1.0 / 72.0],
            1e-5,
            0.0,
        );
        let angle = values(rkd_angle(e.clone(), t.clone()));
        assert_allclose(&format!("angle {name}"), &angle, &[0.35 / 27.0], 1e-5, 0.0);
        let weighted = RkdLossConfig::new()
            .with_distance_weight(25.0)
            .with_angle_weight(50.0)
            .init()
            .forward(e, t);
        let want = 25.0 / 72.0 + 50.0 * 0.35 / 27.0;
        assert_allclose(
            &format!("weighted {name}"),
            &values(weighted),
            &[want],
            1e-5,
            0.0,
        );
    }
    // Both weights 0: a loss of 0 whose backward runs, with a zero gradient.
    let device = Device::flex().autodiff();
    let student = tensor2(&equilateral, [3, 2], &device).require_grad();
    let zero = RkdLossConfig::new()
        .with_distance_weight(0.0)
        .with_angle_weight(0.0)
        .init()
        .forward(student.clone(), tensor2(&teacher, [3, 2], &device));
    assert_eq!(values(zero.clone()), vec![0.0]);
    let grad = values(student.grad(&zero.backward()).expect("a gradient"));
    assert!(grad.iter().all(|&g| g == 0.0), "{grad:?}");
}

/// Two equal student embeddings: the distance is at its floor and the
/// angles there have no direction; the loss and its gradient stay finite
/// and small (PyTorch's `F.normalize` gives a gradient of about 1e10 there).
#[test]
fn rkd_coincident_embeddings_have_a_finite_gradient() {
    let device = Device::flex().autodiff();
    let mut rng = Rng::new(5);
    let mut s = rng.normals(4 * 3, 1.0);
    let (first, rest) = s.split_at_mut(3);
    rest[..3].copy_from_slice(first);
    let t = rng.normals(4 * 5, 1.0);
    let st = tensor2(&s, [4, 3], &device).require_grad();
    let loss = RkdLossConfig::new()
        .init()
        .forward(st.clone(), tensor2(&t, [4, 5], &device));
    assert!(values(loss.clone())[0].is_finite());
    let grad = values(st.grad(&loss.backward()).expect("student gradient"));
    assert!(
        grad.iter().all(|g| g.is_finite() && g.abs() < 10.0),
        "{grad:?}"
    );
}

/// Attention transfer's closed form: a student whose energy sits at one of
/// four positions (normalised map `e_k`) against a uniform teacher (map ½
/// everywhere): mean square `(¼ + 3·¼)/4 = ¼`, norm `√1 = 1`; channels
/// differ (2 vs 3), the maps' scale does not matter.
#[test]
fn attention_transfer_closed_form() {
    let mut s = [0.0; 2 * 4];
    s[2] = 3.0;
    s[4 + 2] = 4.0;
    let t = [7.0; 3 * 4];
    for (name, device) in devices() {
        let st = Tensor::<4>::from_data(
            TensorData::new(s.iter().map(|&v| v as f32).collect(), [1, 2, 2, 2]),
            &device,
        );
        let tt = Tensor::<4>::from_data(
            TensorData::new(t.iter().map(|&v| v as f32).collect(), [1, 3, 2, 2]),
            &device,
        );
        let map = values(attention_map(st.clone()));
        assert_allclose(
            &format!("map {name}"),
            &map,
            &[0.0, 0.0, 1.0, 0.0],
            1e-6,
            1e-7,
        );
        for (distance, want) in [
            (AttentionDistance::MeanSquared, 0.25),
            (AttentionDistance::Norm, 1.0),
        ] {
            let loss = AttentionTransferLossConfig::new()
                .with_distance(distance)
                .init();
            let got = values(loss.forward(st.clone(), tt.clone()));
            assert_allclose(&format!("{distance:?} {name}"), &got, &[want], 1e-6, 0.0);
        }
        // Equal maps: 0, and the norm's gradient 0 rather than 0/0.
        let same = AttentionTransferLossConfig::new()
            .with_distance(AttentionDistance::Norm)
            .init();
        let got = values(same.forward(tt.clone(), tt.clone()));
        assert_eq!(got, vec![0.0], "{name}");
    }
    let device = Device::flex().autodiff();
    let tt = Tensor::<4>::ones([1, 3, 2, 2], &device).require_grad();
    let same = AttentionTransferLossConfig::new()
        .with_distance(AttentionDistance::Norm)
        .init()
        .forward(tt.clone(), tt.clone().detach());
    let grad = values(tt.grad(&same.backward()).expect("gradient"));
    assert!(grad.iter().all(|&g| g == 0.0), "{grad:?}");
}

/// FitNets' hint with an identity regressor and no bias is the mean squared
/// difference; the regressor is a parameter of the loss (so of a student
/// that holds it): `c_s · c_t + c_t` values, with a gradient.
#[test]
fn hint_with_identity_regressor_is_the_mse() {
    use burn::module::{Module, Param};
    let device = Device::flex();
    let mut rng = Rng::new(9);
    let s = rng.normals(2 * 3 * 2 * 2, 1.0);
    let t = rng.normals(2 * 3 * 2 * 2, 1.0);
    let mut hint = HintLossConfig::new(3, 3).with_bias(false).init(&device);
    hint.regressor.linear.weight = Param::from_tensor(Tensor::<2>::eye(3, &device));
    let st = Tensor::<4>::from_data(
        TensorData::new(s.iter().map(|&v| v as f32).collect(), [2, 3, 2, 2]),
        &device,
    );
    let tt = Tensor::<4>::from_data(
        TensorData::new(t.iter().map(|&v| v as f32).collect(), [2, 3, 2, 2]),
        &device,
    );
    let per: Vec<f64> = (0..2)
        .map(|b| {
            (0..12)
                .map(|i| (s[b * 12 + i] - t[b * 12 + i]).powi(2))
                .sum::<f64>()
                / 12.0
        })
        .collect();
    let got = values(hint.forward_no_reduction(st.clone(), tt.clone()));
    assert_allclose("per example", &got, &per, 1e-6, 0.0);
    let got = values(hint.forward(st, tt));
    assert_allclose("mean", &got, &[(per[0] + per[1]) / 2.0], 1e-6, 0.0);
    assert_eq!(
        HintLossConfig::new(4, 8).init(&device).num_params(),
        4 * 8 + 8
    );
}

/// Half precision is computed in f32 and given back in its dtype, for every
/// feature loss.
#[test]
fn feature_losses_compute_half_precision_in_f32() {
    let device = Device::flex();
    let mut rng = Rng::new(13);
    let s = rng.normals(3 * 2 * 2 * 2, 1.0);
    let t = rng.normals(3 * 2 * 2 * 2, 1.0);
    let make = |x: &[f64], dtype: DType| {
        Tensor::<4>::from_data(
            TensorData::new(x.iter().map(|&v| v as f32).collect(), [3, 2, 2, 2]),
            &device,
        )
        .cast(DType::F16)
        .cast(dtype)
    };
    let at = AttentionTransferLossConfig::new().init();
    let rkd = RkdLossConfig::new().init();
    let hint = HintLossConfig::new(2, 2).init(&device);
    type Loss<'a> = Box<dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<1> + 'a>;
    let losses: [(&str, Loss); 3] = [
        ("attention", Box::new(|a, b| at.forward(a, b))),
        ("rkd", Box::new(|a, b| rkd.forward(a, b))),
        ("hint", Box::new(|a, b| hint.forward(a, b))),
    ];
    for (name, loss) in losses {
        let half = loss(make(&s, DType::F16), make(&t, DType::F16));
        assert_eq!(half.dtype(), DType::F16, "{name}");
        let full = values(loss(make(&s, DType::F32), make(&t, DType::F32)));
        assert_allclose(name, &values(half), &full, 1e-3, 0.0);
    }
}

/// Bad input to the feature losses is a `DistillError` naming the argument.
#[test]
fn feature_loss_errors_are_named() {
    let device = Device::flex();
    let at = AttentionTransferLossConfig::new().init();
    let maps = |shape: [usize; 4]| Tensor::<4>::zeros(shape, &device);
    let err = at
        .check(&maps([2, 3, 4, 4]), &maps([2, 5, 4, 3]))
        .unwrap_err();
    assert_shape_mismatch(&err, "student_features", &[2, 3, 4, 4], &[2, 5, 4, 3]);
    assert!(err.to_string().contains("teacher_features"), "{err}");
    assert!(err.to_string().contains("but for the channels"), "{err}");
    let err = at
        .check(
            &Tensor::<2>::zeros([2, 3], &device),
            &Tensor::<2>::zeros([2, 3], &device),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::InvalidParameter {
                argument: "student_features",
                value: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let err = at
        .check(&maps([2, 0, 4, 4]), &maps([2, 3, 4, 4]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::EmptyTensor {
                argument: "student_features",
                ..
            }
        ),
        "{err:?}"
    );

    let hint = HintLossConfig::new(3, 5).init(&device);
    let err = hint
        .check(&maps([2, 4, 2, 2]), &maps([2, 5, 2, 2]))
        .unwrap_err();
    assert_shape_mismatch(&err, "student_features", &[4], &[3]);
    let err = hint
        .check(&maps([2, 3, 2, 2]), &maps([2, 6, 2, 2]))
        .unwrap_err();
    assert_shape_mismatch(&err, "teacher_features", &[6], &[5]);
    let err = hint
        .check(&maps([2, 3, 2, 2]), &maps([3, 5, 2, 2]))
        .unwrap_err();
    assert!(matches!(err, DistillError::ShapeMismatch { .. }), "{err:?}");
    let err = HintLossConfig::new(0, 5).try_init(&device).unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::InvalidParameter {
                argument: "student_width",
                value: 0,
                ..
            }
        ),
        "{err:?}"
    );

    let rkd = RkdLossConfig::new().init();
    let rows = |shape: [usize; 2]| Tensor::<2>::zeros(shape, &device);
    let err = rkd.check(&rows([1, 3]), &rows([1, 3])).unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::InvalidParameter {
                argument: "student_embeddings",
                value: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let err = rkd.check(&rows([4, 3]), &rows([5, 3])).unwrap_err();
    assert_shape_mismatch(&err, "teacher_embeddings rows", &[5], &[4]);
    let err = RkdLossConfig::new()
        .with_angle_weight(-1.0)
        .try_init()
        .unwrap_err();
    assert_eq!(
        err,
        DistillError::InvalidWeight {
            argument: "angle_weight",
            value: -1.0
        }
    );
    #[allow(deprecated)]
    let elsewhere = Tensor::<2>::zeros([4, 3], &Device::ndarray());
    let err = rkd.check(&rows([4, 3]), &elsewhere).unwrap_err();
    assert!(
        matches!(err, DistillError::DeviceMismatch { .. }),
        "{err:?}"
    );

    let projection = FeatureProjectionConfig::new(4, 6).init(&device);
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        projection.forward(Tensor::<3>::zeros([2, 3, 5], &Device::flex()))
    }))
    .unwrap_err();
    let message = panic.downcast_ref::<String>().expect("a message");
    assert!(
        message.contains("student_features") && message.contains('5') && message.contains('4'),
        "{message}"
    );
    // The forwards panic with the check's message.
    let panic = std::panic::catch_unwind(|| {
        RkdLossConfig::new().init().forward(
            Tensor::<2>::zeros([4, 3], &Device::flex()),
            Tensor::<2>::zeros([5, 3], &Device::flex()),
        )
    })
    .unwrap_err();
    let message = panic.downcast_ref::<String>().expect("a message");
    assert!(
        message.contains("teacher_embeddings") && message.contains('5'),
        "{message}"
    );
}

/// The teacher's features get no gradient from any feature loss, even when
/// they are tracked (a teacher run with autodiff on).
#[test]
fn feature_losses_detach_the_teacher() {
    let device = Device::flex().autodiff();
    let mut rng = Rng::new(17);
    let make = |rng: &mut Rng, channels: usize| {
        Tensor::<4>::from_data(
            TensorData::new(
                rng.normals(3 * channels * 2 * 2, 1.0)
                    .iter()
                    .map(|&v| v as f32)
                    .collect(),
                [3, channels, 2, 2],
            ),
            &device,
        )
        .require_grad()
    };
    let (s, t) = (make(&mut rng, 2), make(&mut rng, 4));
    let hint = HintLossConfig::new(2, 4).init(&device);
    let at = AttentionTransferLossConfig::new().init();
    let rkd = RkdLossConfig::new().init();
    for (name, loss) in [
        ("hint", hint.forward(s.clone(), t.clone())),
        ("attention", at.forward(s.clone(), t.clone())),
        ("rkd", rkd.forward(s.clone(), t.clone())),
    ] {
        let grads = loss.backward();
        assert!(s.grad(&grads).is_some(), "{name}: no student gradient");
        assert!(
            t.grad(&grads).is_none(),
            "{name}: the teacher got a gradient"
        );
    }
}

/// RKD in f32 against itself in f64 where the Gram form is hardest: the
/// batch far from the origin (an offset of 100 on every feature), two
/// embeddings 5% of their spread apart, 512 wide. Values and gradients agree
/// to 1e-4 relative.
#[test]
fn rkd_in_f32_keeps_f64_precision_far_from_the_origin() {
    let (batch, width) = (12, 512);
    let mut rng = Rng::new(23);
    let mut s = rng.normals(batch * width, 1.0);
    let t = rng.normals(batch * (width / 2), 1.0);
    for j in 0..width {
        s[width + j] = s[j] + 0.05 * (s[width + j] - s[j]);
    }
    let s: Vec<f64> = s.iter().map(|v| ((v + 100.0) as f32) as f64).collect();
    for (name, device) in devices_f64() {
        let device = device.autodiff();
        let run = |dtype: DType| {
            let st = Tensor::<2>::from_data(
                TensorData::new(s.clone(), [batch, width]),
                (&device, DType::F64),
            )
            .cast(dtype)
            .require_grad();
            let tt = Tensor::<2>::from_data(
                TensorData::new(t.clone(), [batch, width / 2]),
                (&device, DType::F64),
            )
            .cast(dtype);
            let loss = RkdLossConfig::new().init().forward(st.clone(), tt);
            let value = values(loss.clone());
            let grad = values(st.grad(&loss.backward()).expect("gradient"));
            (value, grad)
        };
        let (value32, grad32) = run(DType::F32);
        let (value64, grad64) = run(DType::F64);
        assert_allclose(&format!("value {name}"), &value32, &value64, 1e-4, 0.0);
        let scale = grad64.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        assert_allclose(
            &format!("gradient {name}"),
            &grad32,
            &grad64,
            1e-4,
            1e-4 * scale,
        );
    }
}
