//! The [`Distiller`]: a student, a teacher source and a distillation loss
//! ([`KdLoss`] by default, or any [`DistillLoss`] on logits) as one
//! burn-train model.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use super::batch::ClassificationBatch;
use super::classifier::Classifier;
use super::lm_loss::top1_rows;
use super::output::DistillOutput;
use super::teacher::TeacherSource;
use crate::kd::KdLoss;
use crate::loss::DistillLoss;
use crate::targets::Targets;
use crate::teacher::TeacherOutput;

/// A student distilled from a teacher by a [`KdLoss`] (or another
/// [`DistillLoss`] on logits, e.g. [`DkdLoss`](crate::dkd::DkdLoss)), as a model burn's
/// `Learner` trains: `TrainStep` runs the teacher (frozen), the student and
/// the loss, and returns the student's gradients; `InferenceStep` does the
/// same without gradients for validation.
///
/// The student is the distiller's only parameter: the teacher source sits
/// outside the parameters (see the [module docs](super)), so the optimizer,
/// `fork`, records and checkpoints see the student alone. The loss's
/// settings are constants of the module.
///
/// # Example
/// ```
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::AdamConfig;
/// use burn::tensor::{Device, Int, Tensor};
/// use burn::train::{Learner, TrainStep};
/// use burn_distill::KdLossConfig;
/// use burn_distill::train::{ClassificationBatch, Classifier, Distiller, FrozenTeacher};
///
/// #[derive(Module, Debug)]
/// struct Net {
///     layer: Linear,
/// }
/// impl Classifier for Net {
///     type Input = Tensor<2>;
///     fn logits(&self, inputs: Tensor<2>) -> Tensor<2> {
///         self.layer.forward(inputs)
///     }
/// }
///
/// let device = Device::flex().autodiff();
/// let net = |device: &Device| Net { layer: LinearConfig::new(4, 3).init(device) };
/// let distiller = Distiller::new(
///     net(&device),
///     FrozenTeacher::new(net(&device)),
///     KdLossConfig::new().with_temperature(4.0).init(),
/// );
/// // `SupervisedTraining::new(dir, train_loader, valid_loader).launch(learner)`
/// // runs it over whole data sets; here, one step by hand.
/// let mut learner = Learner::new(distiller, AdamConfig::new().init(), 1e-3);
/// let batch = ClassificationBatch::new(
///     Tensor::<2>::ones([2, 4], &device),
///     Tensor::<1, Int>::from_ints([0, 2], &device),
/// );
/// let step = learner.train_step(batch);
/// assert!(step.item.loss.into_scalar::<f32>().is_finite());
/// learner.optimizer_step(step.grads);
/// ```
#[derive(Module, Debug)]
pub struct Distiller<S, T, L = KdLoss> {
    student: S,
    #[module(skip)]
    teacher: T,
    loss: L,
    teacher_in_validation: bool,
}

impl<S, T, L> Distiller<S, T, L>
where
    S: Classifier,
    T: TeacherSource<S::Input>,
    L: DistillLoss<2, Student = Tensor<2>, Teacher = TeacherOutput>,
{
    /// Distils `student` from `teacher` with `loss`. Validation steps run the
    /// teacher too (see [`with_teacher_in_validation`](Self::with_teacher_in_validation)).
    pub fn new(student: S, teacher: T, loss: L) -> Self {
        Self {
            student,
            teacher,
            loss,
            teacher_in_validation: true,
        }
    }

    /// Whether validation steps run the teacher (default `true`): with it,
    /// the validation loss is the same KD loss as in training and the soft
    /// term and agreement are reported; without it, the validation loss is
    /// the hard term alone (the student's cross-entropy), for a teacher that
    /// cannot serve the validation set (a store written for the training
    /// set) or is too costly to run twice.
    pub fn with_teacher_in_validation(mut self, teacher_in_validation: bool) -> Self {
        self.teacher_in_validation = teacher_in_validation;
        self
    }

    /// The student.
    pub fn student(&self) -> &S {
        &self.student
    }

    /// The student, e.g. the trained one from the Learner's result.
    pub fn into_student(self) -> S {
        self.student
    }

    /// The teacher source.
    pub fn teacher(&self) -> &T {
        &self.teacher
    }

    /// The loss.
    pub fn loss(&self) -> &L {
        &self.loss
    }

    /// A training step's forward, without the backward: the teacher, the
    /// student and the loss's parts.
    ///
    /// # Panics
    /// If the teacher source fails (e.g. a store without the batch's
    /// examples), or on input the loss refuses, with its message.
    pub fn forward(&self, batch: ClassificationBatch<S::Input>) -> DistillOutput {
        self.forward_with(batch, true)
    }

    /// [`forward`](Self::forward), the teacher run only when `with_teacher`.
    fn forward_with(
        &self,
        batch: ClassificationBatch<S::Input>,
        with_teacher: bool,
    ) -> DistillOutput {
        let device = batch.targets.device();
        let teacher = with_teacher.then(|| {
            self.teacher
                .teach(&batch, &device)
                .unwrap_or_else(|error| panic!("Distiller: the teacher source failed: {error}"))
        });
        let ClassificationBatch {
            inputs, targets, ..
        } = batch;
        let logits = self.student.logits(inputs);
        match teacher {
            Some(teacher) => {
                let teacher_top1 = top1_rows(&teacher);
                let parts =
                    self.loss
                        .forward_parts(logits.clone(), teacher, Targets::new(targets.clone()));
                DistillOutput {
                    loss: parts.total,
                    soft: Some(parts.soft),
                    hard: parts.hard,
                    output: logits,
                    targets,
                    teacher_top1: Some(teacher_top1),
                }
            }
            None => {
                // The hard term as the loss itself computes it (labels,
                // ignore_index).
                let hard = self
                    .loss
                    .forward_hard(logits.clone(), Targets::new(targets.clone()));
                DistillOutput {
                    loss: hard.clone(),
                    soft: None,
                    hard,
                    output: logits,
                    targets,
                    teacher_top1: None,
                }
            }
        }
    }
}

impl<S, T, L> TrainStep for Distiller<S, T, L>
where
    S: Classifier,
    T: TeacherSource<S::Input>,
    L: DistillLoss<2, Student = Tensor<2>, Teacher = TeacherOutput>,
{
    type Input = ClassificationBatch<S::Input>;
    type Output = DistillOutput;

    fn step(&self, batch: Self::Input) -> TrainOutput<DistillOutput> {
        let output = self.forward(batch);
        let grads = output.loss.backward();
        TrainOutput::new(self, grads, output)
    }
}

impl<S, T, L> InferenceStep for Distiller<S, T, L>
where
    S: Classifier,
    T: TeacherSource<S::Input>,
    L: DistillLoss<2, Student = Tensor<2>, Teacher = TeacherOutput>,
{
    type Input = ClassificationBatch<S::Input>;
    type Output = DistillOutput;

    fn step(&self, batch: Self::Input) -> DistillOutput {
        self.forward_with(batch, self.teacher_in_validation)
    }
}
