//! The one trait the distillation losses share, so that a distiller (and
//! user code) can be generic over the loss: [`KdLoss`], [`DkdLoss`] and
//! [`FusedLinearKdLoss`] implement it, for `[rows, ·]` (`D = 2`) and a
//! language model's `[batch, seq, ·]` (`D = 3`) inputs.

use burn::module::{Module, ModuleDisplay};
use burn::tensor::Tensor;

use crate::dkd::DkdLoss;
use crate::error::{DistillError, or_panic};
use crate::kd::{KdLoss, KdLossOutput, try_hard_loss};
use crate::linear::{FusedLinearKdLoss, LinearTeacher};
use crate::shape::LogitsShape;
use crate::targets::Targets;
use crate::teacher::TeacherOutput;

/// A distillation loss: the student's output, the teacher's and the targets
/// in, the loss out — reduced, in parts, or per position — with every check
/// available without computing it.
///
/// `D` is the rank of the student's output: 2 for `[rows, classes]` logits
/// (or `[rows, d]` hidden states), 3 for a language model's
/// `[batch, seq, vocab]` (or `[batch, seq, d]`).
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::{DistillLoss, KdLossConfig, Targets, TeacherOutput};
/// use burn_distill::dkd::DkdLossConfig;
///
/// // Any loss of this shape: KD, DKD, ...
/// fn score<L>(loss: &L, z: Tensor<3>, v: Tensor<3>, y: Tensor<2, Int>) -> f32
/// where
///     L: DistillLoss<3, Student = Tensor<3>, Teacher = TeacherOutput<3>>,
/// {
///     loss.forward(z, TeacherOutput::Logits(v), Targets::for_sequences(y)).into_scalar::<f32>()
/// }
///
/// let device = Device::flex();
/// let z = Tensor::<3>::zeros([1, 2, 3], &device);
/// let v = Tensor::<3>::zeros([1, 2, 3], &device);
/// let y = Tensor::<2, Int>::zeros([1, 2], &device);
/// // A teacher equal to the student: no soft term.
/// assert_eq!(score(&DkdLossConfig::new().init(), z.clone(), v.clone(), y.clone()), 0.0);
/// let hard_only = KdLossConfig::new().with_soft_weight(0.0).with_hard_weight(1.0).init();
/// assert!((score(&hard_only, z, v, y) - 3f32.ln()).abs() < 1e-6);
/// ```
pub trait DistillLoss<const D: usize = 2>: Module + ModuleDisplay + Sync + 'static
where
    Tensor<D>: LogitsShape,
{
    /// What the student gives: its logits, or its hidden states and output
    /// layer ([`LinearStudent`]).
    type Student;
    /// What the teacher gives.
    type Teacher;

    /// The loss, reduced as `targets` say, `[1]`.
    ///
    /// # Panics
    /// On bad input, with the message of [`check`](Self::check).
    fn forward(
        &self,
        student: Self::Student,
        teacher: Self::Teacher,
        targets: Targets,
    ) -> Tensor<1> {
        self.forward_parts(student, teacher, targets).total
    }

    /// The loss and its distillation and hard-label terms, unweighted:
    /// `total = soft_weight · soft + hard_weight · hard` for [`KdLoss`]; for
    /// [`DkdLoss`], `soft` is the whole DKD loss and `hard` is 0.
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    fn forward_parts(
        &self,
        student: Self::Student,
        teacher: Self::Teacher,
        targets: Targets,
    ) -> KdLossOutput;

    /// The hard-label cross-entropy of the student at `T = 1` alone, reduced
    /// as `targets` say (labels required): a validation loss where no
    /// teacher serves.
    ///
    /// # Panics
    /// Without labels, or on bad targets.
    fn forward_hard(&self, student: Self::Student, targets: Targets) -> Tensor<1>;

    /// Checks everything [`forward`](Self::forward) checks, without computing
    /// the loss.
    fn check(
        &self,
        student: &Self::Student,
        teacher: &Self::Teacher,
        targets: &Targets,
    ) -> Result<(), DistillError>;
}

impl<const D: usize> DistillLoss<D> for KdLoss
where
    Tensor<D>: LogitsShape,
{
    type Student = Tensor<D>;
    type Teacher = TeacherOutput<D>;

    fn forward(
        &self,
        student: Tensor<D>,
        teacher: TeacherOutput<D>,
        targets: Targets,
    ) -> Tensor<1> {
        KdLoss::forward(self, student, teacher, targets)
    }

    fn forward_parts(
        &self,
        student: Tensor<D>,
        teacher: TeacherOutput<D>,
        targets: Targets,
    ) -> KdLossOutput {
        KdLoss::forward_parts(self, student, teacher, targets)
    }

    fn forward_hard(&self, student: Tensor<D>, targets: Targets) -> Tensor<1> {
        or_panic(try_hard_loss(student, targets, self.config.ignore_index))
    }

    fn check(
        &self,
        student: &Tensor<D>,
        teacher: &TeacherOutput<D>,
        targets: &Targets,
    ) -> Result<(), DistillError> {
        KdLoss::check(self, student, teacher, targets)
    }
}

impl<const D: usize> DistillLoss<D> for DkdLoss
where
    Tensor<D>: LogitsShape,
{
    type Student = Tensor<D>;
    type Teacher = TeacherOutput<D>;

    fn forward(
        &self,
        student: Tensor<D>,
        teacher: TeacherOutput<D>,
        targets: Targets,
    ) -> Tensor<1> {
        DkdLoss::forward(self, student, teacher, targets)
    }

    fn forward_parts(
        &self,
        student: Tensor<D>,
        teacher: TeacherOutput<D>,
        targets: Targets,
    ) -> KdLossOutput {
        let total = DkdLoss::forward(self, student, teacher, targets);
        KdLossOutput {
            soft: total.clone(),
            hard: total.zeros_like(),
            total,
        }
    }

    fn forward_hard(&self, student: Tensor<D>, targets: Targets) -> Tensor<1> {
        or_panic(try_hard_loss(student, targets, None))
    }

    fn check(
        &self,
        student: &Tensor<D>,
        teacher: &TeacherOutput<D>,
        targets: &Targets,
    ) -> Result<(), DistillError> {
        DkdLoss::check(self, student, teacher, targets)
    }
}

/// What a student gives [`FusedLinearKdLoss`] through [`DistillLoss`]: its
/// last hidden states and output layer, whose logits are never made whole.
#[derive(Debug, Clone)]
pub struct LinearStudent<const D: usize = 2> {
    /// `[rows, d]` or `[batch, seq, d]`.
    pub hidden: Tensor<D>,
    /// `[d, vocab]`, as burn's `Linear` holds it.
    pub weight: Tensor<2>,
    /// `[vocab]`.
    pub bias: Option<Tensor<1>>,
}

impl<const D: usize> DistillLoss<D> for FusedLinearKdLoss
where
    Tensor<D>: LogitsShape,
{
    type Student = LinearStudent<D>;
    type Teacher = LinearTeacher<D>;

    fn forward(
        &self,
        student: LinearStudent<D>,
        teacher: LinearTeacher<D>,
        targets: Targets,
    ) -> Tensor<1> {
        let LinearStudent {
            hidden,
            weight,
            bias,
        } = student;
        FusedLinearKdLoss::forward(self, hidden, weight, bias, teacher, targets)
    }

    fn forward_parts(
        &self,
        student: LinearStudent<D>,
        teacher: LinearTeacher<D>,
        targets: Targets,
    ) -> KdLossOutput {
        let LinearStudent {
            hidden,
            weight,
            bias,
        } = student;
        FusedLinearKdLoss::forward_parts(self, hidden, weight, bias, teacher, targets)
    }

    fn forward_hard(&self, student: LinearStudent<D>, targets: Targets) -> Tensor<1> {
        let LinearStudent {
            hidden,
            weight,
            bias,
        } = student;
        or_panic(self.try_forward_hard(hidden, weight, bias, targets))
    }

    fn check(
        &self,
        student: &LinearStudent<D>,
        teacher: &LinearTeacher<D>,
        targets: &Targets,
    ) -> Result<(), DistillError> {
        FusedLinearKdLoss::check(
            self,
            &student.hidden,
            &student.weight,
            student.bias.as_ref(),
            teacher,
            targets,
        )
    }
}
