//! Divergences between a teacher distribution `p` and a student distribution `q`,
//! one value per row.
//!
//! Arguments are always named `student_*` and `teacher_*` — never `input` and
//! `target` — so the direction of an asymmetric divergence cannot be swapped by
//! argument order (the TRL bug in `shared/anchors.md`, item 8).

use burn::tensor::Tensor;

use crate::error::{DistillError, check_non_empty, check_same_shape, or_panic};

/// Forward KL divergence per row: `KL(p‖q) = Σ_i p_i (log p_i − log q_i)`, with
/// `p = exp(teacher_log_probs)` and `log q = student_log_probs`.
///
/// This is the soft loss of Hinton et al. (2015): it differs from the soft
/// cross-entropy `−Σ p_i log q_i` by the teacher's entropy, a constant with the
/// same gradient, and it is exactly 0 when the student matches the teacher.
///
/// Classes where the teacher's probability is 0 (log-probability `−inf`, e.g. a
/// class masked with `−inf` in both models) contribute exactly 0 to the value and
/// to the gradient, instead of the NaN of a naive `0 · (−inf − −inf)`. A class the
/// teacher gives positive probability but the student gives `−inf` is a genuine
/// `+inf` divergence and is returned as such.
///
/// # Panics
/// If the shapes differ or are empty (see [`try_forward_kl`]).
///
/// # Shapes
/// - `student_log_probs`, `teacher_log_probs`: `[batch, classes]`, normalised
///   log-probabilities along dim 1.
/// - output: `[batch]`.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::divergence::forward_kl;
///
/// let device = Device::flex();
/// let p = Tensor::<2>::from_floats([[0.5f32.ln(), 0.5f32.ln()]], &device);
/// let q = Tensor::<2>::from_floats([[0.25f32.ln(), 0.75f32.ln()]], &device);
/// let kl = forward_kl(q, p).into_data().to_vec::<f32>().unwrap();
/// // 0.5·ln(0.5/0.25) + 0.5·ln(0.5/0.75)
/// let expected = 0.5 * 2f32.ln() + 0.5 * (2.0f32 / 3.0).ln();
/// assert!((kl[0] - expected).abs() < 1e-6);
/// ```
pub fn forward_kl(student_log_probs: Tensor<2>, teacher_log_probs: Tensor<2>) -> Tensor<1> {
    or_panic(try_forward_kl(student_log_probs, teacher_log_probs))
}

/// Fallible [`forward_kl`]: returns [`DistillError::ShapeMismatch`] or
/// [`DistillError::EmptyTensor`] instead of panicking.
pub fn try_forward_kl(
    student_log_probs: Tensor<2>,
    teacher_log_probs: Tensor<2>,
) -> Result<Tensor<1>, DistillError> {
    check_log_prob_pair(&student_log_probs, &teacher_log_probs)?;
    Ok(forward_kl_unchecked(student_log_probs, teacher_log_probs))
}

/// Shape checks shared by the divergences: same `[batch, classes]`, non-empty.
pub(crate) fn check_log_prob_pair(
    student_log_probs: &Tensor<2>,
    teacher_log_probs: &Tensor<2>,
) -> Result<(), DistillError> {
    let student_shape = student_log_probs.dims();
    let teacher_shape = teacher_log_probs.dims();
    check_same_shape(
        "student_log_probs",
        &student_shape,
        "teacher_log_probs",
        &teacher_shape,
    )?;
    check_non_empty("student_log_probs", &student_shape)
}

/// [`forward_kl`] without the shape checks, for callers that already made them.
pub(crate) fn forward_kl_unchecked(
    student_log_probs: Tensor<2>,
    teacher_log_probs: Tensor<2>,
) -> Tensor<1> {
    let teacher_probs = teacher_log_probs.clone().exp();
    // Where p = 0 the term is 0 by the convention 0·log 0 = 0. Filling (rather than
    // multiplying by a 0/1 mask) also zeroes the gradient there without a 0·NaN.
    let absent = teacher_probs.clone().lower_equal_elem(0.0);
    let terms = (teacher_probs * (teacher_log_probs - student_log_probs)).mask_fill(absent, 0.0);
    terms.sum_dim(1).squeeze_dim::<1>(1)
}
