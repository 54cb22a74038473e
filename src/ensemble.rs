//! Combining several teachers into one soft target.
//!
//! Two combinators, named for what they compute (a common mistake: averaging
//! logits is often called "the ensemble" when the mean of probabilities was
//! meant). With teacher distributions `p^m = softmax(v^m / T)` and weights `w_m`
//! (normalised to sum to 1):
//!
//! - [`arithmetic_mean`]: `Σ_m w_m p^m` — the minimiser over `q` of
//!   `Σ_m w_m KL(p^m ‖ q)`, the usual "ensemble of probabilities";
//! - [`geometric_mean`]: `softmax(Σ_m w_m log p^m)` — the normalised geometric
//!   mean, the minimiser of `Σ_m w_m KL(q ‖ p^m)`; equal to the softmax of the
//!   weighted mean of the logits at the same temperature.
//!
//! Both return a [`TeacherOutput::LogProbs`] at temperature `T` (computed in
//! log space, so that tiny probabilities keep their precision): pass it to a
//! loss whose temperature is the same `T`.

use burn::tensor::Tensor;

use crate::check::{
    check_device, check_non_empty, check_temperature, check_weight, indexed, shape_mismatch,
};
use crate::error::DistillError;
use crate::teacher::TeacherOutput;
use crate::temperature::log_softmax;

/// The arithmetic mean `Σ_m w_m softmax(v^m / T)` of the teachers'
/// distributions (weights normalised), as log-probabilities `[batch, classes]`:
/// a log-sum-exp of the teachers' log-probabilities.
///
/// `weights`: one non-negative weight per teacher, not all zero; `None` for equal weights.
///
/// # Errors
/// [`DistillError::NoTeachers`], [`DistillError::ShapeMismatch`] (teachers of
/// other shapes, or weights of another length), [`DistillError::InvalidWeightSum`], or an
/// invalid temperature, weight, empty shape or device, naming the argument.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::TeacherOutput;
/// use burn_distill::ensemble::arithmetic_mean;
///
/// let device = Device::flex();
/// let a = Tensor::<2>::from_floats([[0.0, f32::NEG_INFINITY]], &device); // p = [1, 0]
/// let b = Tensor::<2>::from_floats([[f32::NEG_INFINITY, 0.0]], &device); // p = [0, 1]
/// let TeacherOutput::LogProbs(log_p) = arithmetic_mean(&[a, b], 1.0, Some(&[3.0, 1.0]))? else {
///     unreachable!()
/// };
/// let p = log_p.exp().into_data().to_vec::<f32>().unwrap();
/// assert!((p[0] - 0.75).abs() < 1e-6 && (p[1] - 0.25).abs() < 1e-6);
/// # Ok::<(), burn_distill::DistillError>(())
/// ```
pub fn arithmetic_mean(
    teacher_logits: &[Tensor<2>],
    temperature: f64,
    weights: Option<&[f64]>,
) -> Result<TeacherOutput, DistillError> {
    let weights = check_teachers(teacher_logits, temperature, weights)?;
    // log Σ_m w_m p^m = logsumexp_m(log w_m + log p^m), over a stacked teacher axis.
    let terms: Vec<Tensor<2>> = teacher_logits
        .iter()
        .zip(&weights)
        .filter(|(_, w)| **w > 0.0)
        .map(|(logits, w)| {
            log_softmax(logits.clone(), temperature, 1).map(|lp| lp.add_scalar(w.ln()))
        })
        .collect::<Result<_, _>>()?;
    let stacked: Tensor<3> = Tensor::stack(terms, 0);
    let max = stacked.clone().max_dim(0).detach();
    let shifted = stacked - max.clone();
    let lse = shifted.exp().sum_dim(0).log() + max;
    Ok(TeacherOutput::LogProbs(lse.squeeze_dim::<2>(0)))
}

/// The normalised geometric mean `softmax(Σ_m w_m log softmax(v^m / T))` of
/// the teachers' distributions, as log-probabilities `[batch, classes]`:
/// equal to `log_softmax((Σ_m w_m v^m) / T)`, the weighted mean logits'.
///
/// # Errors
/// As [`arithmetic_mean`].
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::TeacherOutput;
/// use burn_distill::ensemble::geometric_mean;
///
/// let device = Device::flex();
/// let a = Tensor::<2>::from_floats([[2.0, 0.0]], &device);
/// let b = Tensor::<2>::from_floats([[0.0, 0.0]], &device);
/// let TeacherOutput::LogProbs(log_p) = geometric_mean(&[a, b], 1.0, None)? else {
///     unreachable!()
/// };
/// let p = log_p.exp().into_data().to_vec::<f32>().unwrap();
/// // softmax of the mean logits [1, 0]
/// let e = std::f32::consts::E;
/// assert!((p[0] - e / (e + 1.0)).abs() < 1e-6);
/// # Ok::<(), burn_distill::DistillError>(())
/// ```
pub fn geometric_mean(
    teacher_logits: &[Tensor<2>],
    temperature: f64,
    weights: Option<&[f64]>,
) -> Result<TeacherOutput, DistillError> {
    let weights = check_teachers(teacher_logits, temperature, weights)?;
    let sum = weighted_log_probs(teacher_logits, &weights, temperature)?;
    // Σ w log p is an unnormalised log-distribution; normalise it at T = 1.
    Ok(TeacherOutput::LogProbs(log_softmax(sum, 1.0, 1)?))
}

/// `Σ_m w_m · log softmax(v^m / T)` over the teachers with a positive weight
/// (`weights` already checked: at least one is positive).
fn weighted_log_probs(
    teacher_logits: &[Tensor<2>],
    weights: &[f64],
    temperature: f64,
) -> Result<Tensor<2>, DistillError> {
    let mut sum: Option<Tensor<2>> = None;
    for (logits, &w) in teacher_logits.iter().zip(weights) {
        if w == 0.0 {
            continue;
        }
        let term = log_softmax(logits.clone(), temperature, 1)?.mul_scalar(w);
        sum = Some(match sum {
            Some(s) => s + term,
            None => term,
        });
    }
    Ok(sum.expect("at least one positive weight"))
}

/// At least one teacher, all of one non-empty shape, a valid temperature and
/// weights; returns the weights normalised to sum to 1.
fn check_teachers(
    teacher_logits: &[Tensor<2>],
    temperature: f64,
    weights: Option<&[f64]>,
) -> Result<Vec<f64>, DistillError> {
    check_temperature("temperature", temperature)?;
    let first = teacher_logits.first().ok_or(DistillError::NoTeachers)?;
    let shape = first.dims();
    check_non_empty("teacher_logits[0]", &shape)?;
    for (index, other) in teacher_logits.iter().enumerate().skip(1) {
        if other.dims() != shape {
            return Err(shape_mismatch(
                indexed("teacher_logits", index),
                &other.dims(),
                "teacher_logits[0]",
                &shape,
                "all teachers must have the same batch size and classes",
            ));
        }
        let argument = indexed("teacher_logits", index);
        check_device("teacher_logits[0]", first, argument, other)?;
    }
    let weights = match weights {
        None => vec![1.0; teacher_logits.len()],
        Some(w) => {
            if w.len() != teacher_logits.len() {
                return Err(shape_mismatch(
                    "weights",
                    &[w.len()],
                    "teacher_logits",
                    &[teacher_logits.len()],
                    "give one weight per teacher",
                ));
            }
            for &value in w {
                check_weight("weights", value)?;
            }
            w.to_vec()
        }
    };
    let total: f64 = weights.iter().sum();
    // Each weight is ≥ 0 and finite (checked), so a sum that is not > 0 means
    // every weight is 0; a sum that overflowed is reported as such.
    if !(total > 0.0 && total.is_finite()) {
        return Err(DistillError::InvalidWeightSum { total });
    }
    Ok(weights.into_iter().map(|w| w / total).collect())
}
