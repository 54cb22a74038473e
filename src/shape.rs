//! The shapes the losses take — `[rows, classes]`, or a language model's
//! `[batch, seq, vocab]` — and their flattening to rows, done once where a
//! call enters a loss; every engine then computes on `[positions, classes]`.

use burn::tensor::Tensor;

use crate::check::check_same_shape;
use crate::error::DistillError;
use crate::teacher::TeacherOutput;

mod sealed {
    pub trait Sealed {}
    impl Sealed for burn::tensor::Tensor<2> {}
    impl Sealed for burn::tensor::Tensor<3> {}
}

/// Logits (or hidden states) whose last axis is the classes (or features):
/// `Tensor<2>`, `[rows, classes]`, or `Tensor<3>`, a language model's
/// `[batch, seq, vocab]`. Its positions are its shape without that axis
/// (`[rows]` or `[batch, seq]`); labels, masks and the per-position output of
/// `forward_no_reduction` have that shape. Implemented for these two ranks
/// only (sealed).
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::{KdLossConfig, Targets};
///
/// let device = Device::flex();
/// let kd = KdLossConfig::new().init();
/// let z = Tensor::<3>::zeros([2, 5, 7], &device);
/// let v = Tensor::<3>::ones([2, 5, 7], &device);
/// let y = Tensor::<2, Int>::zeros([2, 5], &device);
/// let per_token: Tensor<2> = kd.forward_no_reduction(z, v, Targets::for_sequences(y));
/// assert_eq!(per_token.dims(), [2, 5]);
/// ```
pub trait LogitsShape: sealed::Sealed {
    /// One value per position: `Tensor<1>` (`[rows]`) or `Tensor<2>`
    /// (`[batch, seq]`).
    type PerPosition;

    /// `[positions]` values in this shape's positions.
    #[doc(hidden)]
    fn per_position(values: Tensor<1>, positions: &[usize]) -> Self::PerPosition;
}

impl LogitsShape for Tensor<2> {
    type PerPosition = Tensor<1>;

    fn per_position(values: Tensor<1>, _positions: &[usize]) -> Tensor<1> {
        values
    }
}

impl LogitsShape for Tensor<3> {
    type PerPosition = Tensor<2>;

    fn per_position(values: Tensor<1>, positions: &[usize]) -> Tensor<2> {
        values.reshape([positions[0], positions[1]])
    }
}

/// A tensor's positions: its shape without the last axis.
pub(crate) fn positions_of<const D: usize>(tensor: &Tensor<D>) -> Vec<usize> {
    tensor.dims()[..D - 1].to_vec()
}

/// `[..positions, width]` as `[positions, width]`.
pub(crate) fn flatten_rows<const D: usize>(tensor: Tensor<D>) -> Tensor<2> {
    tensor.flatten::<2>(0, D - 2)
}

/// The student's logits and the teacher flattened to rows, with the student's
/// positions. A dense teacher must have the student's positions (its class
/// axis may differ, as [`TeacherOutput`] documents); a top-k teacher holds
/// one row per position already.
pub(crate) fn to_rows<const D: usize>(
    student_logits: Tensor<D>,
    teacher: TeacherOutput<D>,
) -> Result<(Tensor<2>, TeacherOutput, Vec<usize>), DistillError> {
    let positions = positions_of(&student_logits);
    let student_shape = student_logits.dims();
    let dense = |values: Tensor<D>, argument: &'static str| {
        if positions_of(&values) != positions {
            check_same_shape("student_logits", &student_shape, argument, &values.dims())?;
        }
        Ok::<_, DistillError>(flatten_rows(values))
    };
    let teacher = match teacher {
        TeacherOutput::Logits(v) => TeacherOutput::Logits(dense(v, "teacher_logits")?),
        TeacherOutput::Probs(p) => TeacherOutput::Probs(dense(p, "teacher_probs")?),
        TeacherOutput::LogProbs(p) => TeacherOutput::LogProbs(dense(p, "teacher_log_probs")?),
        TeacherOutput::TopK(sparse) => TeacherOutput::TopK(sparse),
    };
    Ok((flatten_rows(student_logits), teacher, positions))
}
