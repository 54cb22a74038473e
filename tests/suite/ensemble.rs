//! Multi-teacher combinators against closed forms computed here in f64.

use crate::common;

use burn::tensor::Tensor;
use burn_distill::ensemble::{arithmetic_mean, geometric_mean};
use burn_distill::{DistillError, TeacherOutput};
use common::{
    Normals, Rng, assert_close, assert_shape_mismatch, devices, reference_softmax, tensor2, values,
};

const B: usize = 4;
const C: usize = 7;

/// The log-probabilities of a combinator's teacher.
fn mean_log_probs(teacher: Result<TeacherOutput, DistillError>) -> Vec<f64> {
    match teacher.unwrap() {
        TeacherOutput::LogProbs(log_p) => values(log_p),
        other => panic!("expected log-probabilities, got {other:?}"),
    }
}

/// The probabilities of a combinator's teacher.
fn mean_probs(teacher: Result<TeacherOutput, DistillError>) -> Vec<f64> {
    mean_log_probs(teacher).into_iter().map(f64::exp).collect()
}

fn teachers(rng: &mut Rng, m: usize) -> Vec<Vec<f64>> {
    (0..m).map(|_| rng.normals(B * C, 3.0)).collect()
}

#[test]
fn arithmetic_mean_is_the_weighted_mean_of_probabilities() {
    let mut rng = Rng::new(31);
    let logits = teachers(&mut rng, 3);
    let weights = [0.5, 0.3, 0.2];
    for t in [1.0, 4.0] {
        let probs: Vec<Vec<f64>> = logits.iter().map(|v| reference_softmax(v, C, t)).collect();
        let expected: Vec<f64> = (0..B * C)
            .map(|i| probs.iter().zip(weights).map(|(p, w)| w * p[i]).sum())
            .collect();
        let unweighted: Vec<f64> = (0..B * C)
            .map(|i| probs.iter().map(|p| p[i]).sum::<f64>() / 3.0)
            .collect();
        for (name, device) in devices() {
            let tensors: Vec<Tensor<2>> =
                logits.iter().map(|v| tensor2(v, [B, C], &device)).collect();
            // Weights need not sum to 1: they are normalised.
            let scaled = [5.0, 3.0, 2.0];
            assert_close(
                name,
                &mean_probs(arithmetic_mean(&tensors, t, Some(&scaled))),
                &expected,
                1e-6,
            );
            assert_close(
                name,
                &mean_probs(arithmetic_mean(&tensors, t, None)),
                &unweighted,
                1e-6,
            );
            let log: Vec<f64> = expected.iter().map(|p| p.ln()).collect();
            assert_close(
                name,
                &mean_log_probs(arithmetic_mean(&tensors, t, Some(&weights))),
                &log,
                1e-5,
            );
        }
    }
}

/// The normalised geometric mean equals the softmax of the weighted mean logits.
#[test]
fn geometric_mean_is_softmax_of_mean_logits() {
    let mut rng = Rng::new(32);
    let logits = teachers(&mut rng, 3);
    let weights = [0.2, 0.2, 0.6];
    for t in [1.0, 2.5] {
        let mean_logits: Vec<f64> = (0..B * C)
            .map(|i| logits.iter().zip(weights).map(|(v, w)| w * v[i]).sum())
            .collect();
        let expected = reference_softmax(&mean_logits, C, t);
        for (name, device) in devices() {
            let tensors: Vec<Tensor<2>> =
                logits.iter().map(|v| tensor2(v, [B, C], &device)).collect();
            assert_close(
                name,
                &mean_probs(geometric_mean(&tensors, t, Some(&weights))),
                &expected,
                1e-5,
            );
            let log: Vec<f64> = expected.iter().map(|p| p.ln()).collect();
            let got_log = mean_log_probs(geometric_mean(&tensors, t, Some(&weights)));
            assert_close(name, &got_log, &log, 1e-5);
        }
    }
}

/// The two are different combinators: the arithmetic mean is never sharper
/// than the geometric one on disagreeing teachers (it keeps both modes).
#[test]
fn arithmetic_and_geometric_means_differ_on_disagreement() {
    for (name, device) in devices() {
        let a = tensor2(&[4.0, 0.0, 0.0], [1, 3], &device);
        let b = tensor2(&[0.0, 4.0, 0.0], [1, 3], &device);
        let arith = mean_probs(arithmetic_mean(&[a.clone(), b.clone()], 1.0, None));
        let geo = mean_probs(geometric_mean(&[a, b], 1.0, None));
        assert!(arith[2] < geo[2], "{name}: {arith:?} vs {geo:?}");
    }
}

#[test]
fn ensemble_errors() {
    for (_, device) in devices() {
        let a = tensor2(&[0.0; 6], [2, 3], &device);
        let b = tensor2(&[0.0; 8], [2, 4], &device);
        assert_eq!(
            arithmetic_mean(&[], 1.0, None).unwrap_err(),
            DistillError::NoTeachers
        );
        let err = geometric_mean(&[a.clone(), b], 1.0, None).unwrap_err();
        assert_shape_mismatch(&err, "teacher_logits[1]", &[2, 4], &[2, 3]);
        assert!(
            err.to_string()
                .contains("teacher_logits[1] has shape [2, 4]"),
            "{err}"
        );
        let err = arithmetic_mean(&[a.clone(), a.clone()], 1.0, Some(&[1.0])).unwrap_err();
        assert_shape_mismatch(&err, "weights", &[1], &[2]);
        let err = arithmetic_mean(std::slice::from_ref(&a), 1.0, Some(&[-1.0])).unwrap_err();
        assert!(
            matches!(
                err,
                DistillError::InvalidWeight {
                    argument: "weights",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = arithmetic_mean(std::slice::from_ref(&a), 0.0, None).unwrap_err();
        assert!(
            matches!(err, DistillError::InvalidTemperature { .. }),
            "{err:?}"
        );
        let err = arithmetic_mean(&[a.clone(), a], 1.0, Some(&[0.0, 0.0])).unwrap_err();
        assert_eq!(err, DistillError::InvalidWeightSum { total: 0.0 });
        let text = err.to_string();
        assert!(
            text.contains("weights sum to 0") && !text.contains("≥ 0, got 0"),
            "{text}"
        );
    }
}
