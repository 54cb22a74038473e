//! The hidden-state losses (`feature`): values against closed forms and sums
//! written out in f64, gradients against central finite differences, masks
//! and reductions as the logit losses take them, and bad input by name.

use crate::common;

use burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use burn_distill::feature::{
    HiddenStateDistance, HiddenStateLossConfig, hidden_state_cosine, hidden_state_mse,
};
use burn_distill::{DistillError, Reduction, Targets};
use common::{Normals, Rng, assert_allclose, devices, devices_f64, tensor2, tensor2_f64, values};

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
    assert_eq!(
        err,
        DistillError::ShapeMismatch {
            left_argument: "student_hidden",
            left_shape: vec![2, 3, 4],
            right_argument: "teacher_hidden",
            right_shape: vec![2, 3, 5],
        }
    );
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
            DistillError::PositionsMismatch {
                argument: "padding_mask",
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
