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
use crate::feature::{FeatureTerms, Features, NoFeatures};
use crate::kd::KdLoss;
use crate::loss::DistillLoss;
use crate::targets::Targets;
use crate::teacher::TeacherOutput;

/// A student distilled from a teacher by a [`KdLoss`] (or another
/// [`DistillLoss`] on logits, e.g. [`DkdLoss`](crate::dkd::DkdLoss)), as a model burn's
/// `Learner` trains: `TrainStep` runs the teacher (frozen), the student and
/// the loss, and returns the student's gradients; `InferenceStep` does the
/// same without gradients for validation. Feature terms between the models'
/// intermediate outputs join the loss with
/// [`with_features`](Self::with_features).
///
/// The student (with the feature terms' projections and regressors, if any)
/// is the distiller's only parameter: the teacher source sits outside the
/// parameters (see the [module docs](super)), so the optimizer, `fork`,
/// records and checkpoints see the student alone. The loss's settings are
/// constants of the module.
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
pub struct Distiller<S, T, L = KdLoss, F = NoFeatures> {
    /// The student: what the Learner trains (its trained state is in the
    /// Learner's result, `result.model.student`).
    pub student: S,
    /// Where the teacher's outputs come from (frozen: not in the record).
    #[module(skip)]
    pub teacher: T,
    /// The loss (its settings are constants of the record).
    pub loss: L,
    /// The feature terms, with their trained projections and regressors.
    pub features: F,
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
            features: NoFeatures,
            teacher_in_validation: true,
        }
    }
}

impl<S, T, L, F> Distiller<S, T, L, F>
where
    S: Classifier,
    T: TeacherSource<S::Input>,
    L: DistillLoss<2, Student = Tensor<2>, Teacher = TeacherOutput>,
    F: FeatureTerms,
{
    /// The distiller with `features` as its feature terms (replacing any it
    /// had): each term's `weight · value` between the student's and the
    /// teacher's named intermediate outputs is added to the loss. The student
    /// gives its outputs by [`Classifier::logits_and_features`], the teacher
    /// by [`TeacherSource::teach_with_features`] (a [`FrozenTeacher`]'s
    /// model by its `logits_and_features`, without autodiff). The terms are
    /// parameters of the distiller beside the student: a projection or a
    /// [`HintLoss`](crate::feature::HintLoss)'s regressor is trained by the
    /// optimiser and saved in the distiller's record. `features` is one
    /// [`FeatureTerm`](crate::feature::FeatureTerm), a `Vec` of them, or a
    /// tuple of up to four.
    ///
    /// Validation steps without the teacher compute no feature terms.
    ///
    /// [`FrozenTeacher`]: super::FrozenTeacher
    ///
    /// # Example
    /// ```
    /// use burn::module::Module;
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::tensor::{Device, Int, Tensor};
    /// use burn_distill::KdLossConfig;
    /// use burn_distill::feature::{Features, FeatureTerm, HiddenStateLossConfig};
    /// use burn_distill::train::{ClassificationBatch, Classifier, Distiller, FrozenTeacher};
    ///
    /// #[derive(Module, Debug)]
    /// struct Net {
    ///     embed: Linear,
    ///     out: Linear,
    /// }
    /// impl Classifier for Net {
    ///     type Input = Tensor<2>;
    ///     fn logits(&self, inputs: Tensor<2>) -> Tensor<2> {
    ///         self.logits_and_features(inputs).0
    ///     }
    ///     fn logits_and_features(&self, inputs: Tensor<2>) -> (Tensor<2>, Features) {
    ///         let embedding = self.embed.forward(inputs);
    ///         (self.out.forward(embedding.clone()), Features::new().with("embedding", embedding))
    ///     }
    /// }
    /// let device = Device::flex().autodiff();
    /// let net = |width: usize| Net {
    ///     embed: LinearConfig::new(4, width).init(&device),
    ///     out: LinearConfig::new(width, 3).init(&device),
    /// };
    /// // The student's 6-wide embedding against the teacher's 12-wide one,
    /// // through a trained projection, at weight 0.5.
    /// let cosine = FeatureTerm::new("embedding", HiddenStateLossConfig::new().init())
    ///     .with_projection(6, 12, &device)
    ///     .with_weight(0.5);
    /// let distiller = Distiller::new(net(6), FrozenTeacher::new(net(12)), KdLossConfig::new().init())
    ///     .with_features(cosine);
    /// let batch = ClassificationBatch::new(
    ///     Tensor::<2>::ones([2, 4], &device),
    ///     Tensor::<1, Int>::from_ints([0, 2], &device),
    /// );
    /// let output = distiller.forward(batch);
    /// assert_eq!(output.features[0].name, "hidden-state embedding");
    /// assert!(output.loss.into_scalar::<f32>().is_finite());
    /// ```
    pub fn with_features<G: FeatureTerms>(self, features: G) -> Distiller<S, T, L, G> {
        Distiller {
            student: self.student,
            teacher: self.teacher,
            loss: self.loss,
            features,
            teacher_in_validation: self.teacher_in_validation,
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

    /// A training step's forward, without the backward: the teacher, the
    /// student, the loss's parts and the feature terms.
    ///
    /// # Panics
    /// If the teacher source fails (e.g. a store without the batch's
    /// examples), on input the loss refuses, or when a feature term's
    /// features are missing or refused, with the error's message.
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
        // The models' features are asked for only where terms read them.
        let feature_terms = with_teacher && !self.features.is_empty();
        let teacher = with_teacher.then(|| {
            let taught = if feature_terms {
                self.teacher.teach_with_features(&batch, &device)
            } else {
                self.teacher
                    .teach(&batch, &device)
                    .map(|teacher| (teacher, Features::new()))
            };
            taught.unwrap_or_else(|error| panic!("Distiller: the teacher source failed: {error}"))
        });
        let ClassificationBatch {
            inputs, targets, ..
        } = batch;
        let (logits, student_features) = if feature_terms {
            self.student.logits_and_features(inputs)
        } else {
            (self.student.logits(inputs), Features::new())
        };
        match teacher {
            Some((teacher, teacher_features)) => {
                let teacher_top1 = top1_rows(&teacher);
                let mut features = Vec::new();
                self.features
                    .feature_values(
                        &student_features,
                        &teacher_features,
                        &Targets::unlabelled(),
                        1.0,
                        &mut features,
                    )
                    .unwrap_or_else(|error| panic!("Distiller: {error}"));
                let parts =
                    self.loss
                        .forward_parts(logits.clone(), teacher, Targets::new(targets.clone()));
                let loss = features.iter().fold(parts.total, |loss, term| {
                    loss + term.value.clone().mul_scalar(term.weight)
                });
                DistillOutput {
                    loss,
                    soft: Some(parts.soft),
                    hard: parts.hard,
                    output: logits,
                    targets,
                    teacher_top1: Some(teacher_top1),
                    features,
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
                    features: Vec::new(),
                }
            }
        }
    }
}

impl<S, T, L, F> TrainStep for Distiller<S, T, L, F>
where
    S: Classifier,
    T: TeacherSource<S::Input>,
    L: DistillLoss<2, Student = Tensor<2>, Teacher = TeacherOutput>,
    F: FeatureTerms,
{
    type Input = ClassificationBatch<S::Input>;
    type Output = DistillOutput;

    fn step(&self, batch: Self::Input) -> TrainOutput<DistillOutput> {
        let output = self.forward(batch);
        let grads = output.loss.backward();
        TrainOutput::new(self, grads, output)
    }
}

impl<S, T, L, F> InferenceStep for Distiller<S, T, L, F>
where
    S: Classifier,
    T: TeacherSource<S::Input>,
    L: DistillLoss<2, Student = Tensor<2>, Teacher = TeacherOutput>,
    F: FeatureTerms,
{
    type Input = ClassificationBatch<S::Input>;
    type Output = DistillOutput;

    fn step(&self, batch: Self::Input) -> DistillOutput {
        self.forward_with(batch, self.teacher_in_validation)
    }
}
