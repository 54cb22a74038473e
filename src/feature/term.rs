//! Feature terms: a feature loss between a student's and a teacher's named
//! intermediate outputs, weighted, as a [`Distiller`](crate::train::Distiller)
//! adds them to its logit loss.

use burn::module::{Module, ModuleDisplay};
use burn::tensor::{Device, Tensor};

use super::attention::AttentionTransferLoss;
use super::hidden_state::HiddenStateLoss;
use super::hint::HintLoss;
use super::named::{Feature, Features};
use super::projection::{FeatureProjection, FeatureProjectionConfig};
use super::relation::RkdLoss;
use crate::check::{check_weight, shape_mismatch};
use crate::error::{DistillError, or_panic};
use crate::targets::Targets;

/// A loss between a student's and a teacher's intermediate outputs of one
/// rank, whatever the rank: what a [`FeatureTerm`] holds.
///
/// Implemented by [`HintLoss`], [`AttentionTransferLoss`], [`RkdLoss`] and
/// [`HiddenStateLoss`]; each takes the ranks its own `forward` takes.
pub trait FeatureLoss: Module + ModuleDisplay + Sync + 'static {
    /// What the loss is called in a term's name (e.g. `"hint"`).
    const KIND: &'static str;

    /// Whether the loss reduces by the positions' weights (their masks and
    /// the whole batch's normaliser), so that micro-batches' values sum to
    /// the batch's; otherwise it averages over its examples, and a
    /// micro-batch's value is weighed by its share of the batch.
    const BY_POSITIONS: bool = false;

    /// The loss between `student` and `teacher`, `[1]`; `positions` says
    /// which positions of `[batch, seq, d]` hidden states count (its padding
    /// mask and reduction: the losses on logits' conventions).
    ///
    /// # Errors
    /// Features of different ranks ([`DistillError::ShapeMismatch`]), or
    /// input the loss's own `check` refuses.
    fn feature_loss(
        &self,
        student: Feature,
        teacher: Feature,
        positions: &Targets,
    ) -> Result<Tensor<1>, DistillError>;
}

/// `$body` with `$s` and `$t` bound to the two features' tensors of one
/// rank; features of different ranks are a shape mismatch.
macro_rules! same_rank {
    ($student:expr, $teacher:expr, |$s:ident, $t:ident| $body:expr) => {
        match ($student, $teacher) {
            (Feature::Rank2($s), Feature::Rank2($t)) => $body,
            (Feature::Rank3($s), Feature::Rank3($t)) => $body,
            (Feature::Rank4($s), Feature::Rank4($t)) => $body,
            (Feature::Rank5($s), Feature::Rank5($t)) => $body,
            (student, teacher) => Err(rank_mismatch(&student, &teacher)),
        }
    };
}

/// Student and teacher features of different ranks.
fn rank_mismatch(student: &Feature, teacher: &Feature) -> DistillError {
    shape_mismatch(
        "student_features",
        &student.dims(),
        "teacher_features",
        &teacher.dims(),
        "they must have the same rank",
    )
}

/// `FeatureLoss` for a loss whose `check` and `forward` take two tensors.
macro_rules! two_tensor_feature_loss {
    ($loss:ty, $kind:literal) => {
        impl FeatureLoss for $loss {
            const KIND: &'static str = $kind;

            fn feature_loss(
                &self,
                student: Feature,
                teacher: Feature,
                _positions: &Targets,
            ) -> Result<Tensor<1>, DistillError> {
                same_rank!(student, teacher, |student, teacher| {
                    self.check(&student, &teacher)?;
                    Ok(self.forward(student, teacher))
                })
            }
        }
    };
}

two_tensor_feature_loss!(HintLoss, "hint");
two_tensor_feature_loss!(AttentionTransferLoss, "attention");
two_tensor_feature_loss!(RkdLoss, "rkd");

impl FeatureLoss for HiddenStateLoss {
    const KIND: &'static str = "hidden-state";
    const BY_POSITIONS: bool = true;

    fn feature_loss(
        &self,
        student: Feature,
        teacher: Feature,
        positions: &Targets,
    ) -> Result<Tensor<1>, DistillError> {
        match (student, teacher) {
            (Feature::Rank2(student), Feature::Rank2(teacher)) => {
                self.try_forward(student, teacher, positions.clone())
            }
            (Feature::Rank3(student), Feature::Rank3(teacher)) => {
                self.try_forward(student, teacher, positions.clone())
            }
            (student, teacher) if student.dims().len() == teacher.dims().len() => {
                Err(DistillError::InvalidParameter {
                    argument: "student_hidden",
                    value: student.dims().len(),
                    requirement: "a rank of 2 or 3: [rows, d] or [batch, seq, d]",
                })
            }
            (student, teacher) => Err(rank_mismatch(&student, &teacher)),
        }
    }
}

/// One feature term of a [`Distiller`](crate::train::Distiller):
/// `weight · loss(project(student[name]), teacher[teacher_name])`, the
/// student's and the teacher's outputs read by name from their
/// [`Features`].
///
/// A module: the projection, and the loss's own parameters (a
/// [`HintLoss`]'s regressor), are parameters of the distiller beside the
/// student — trained by its optimiser and saved in its record. The names
/// and the weight are constants of the module.
///
/// ```
/// use burn::tensor::Device;
/// use burn_distill::feature::{FeatureTerm, HiddenStateLossConfig, HintLossConfig};
///
/// let device = Device::flex();
/// // FitNets between the student's "block2" (16 channels) and the
/// // teacher's "block3" (64), at weight 0.5.
/// let hint = FeatureTerm::new("block2", HintLossConfig::new(16, 64).init(&device))
///     .with_teacher_feature("block3")
///     .with_weight(0.5);
/// assert_eq!(hint.name(), "hint block2");
/// // Hidden-state cosine through a trained projection from width 256 to 768.
/// let cosine = FeatureTerm::new("hidden", HiddenStateLossConfig::new().init())
///     .with_projection(256, 768, &device);
/// assert_eq!(cosine.weight(), 1.0);
/// ```
#[derive(Module, Debug)]
pub struct FeatureTerm<L> {
    student_feature: String,
    teacher_feature: String,
    weight: f64,
    projection: Option<FeatureProjection>,
    loss: L,
}

impl<L: FeatureLoss> FeatureTerm<L> {
    /// `loss` between the student's and the teacher's features named
    /// `feature`, at weight 1, without a projection.
    pub fn new(feature: impl Into<String>, loss: L) -> Self {
        let feature = feature.into();
        Self {
            teacher_feature: feature.clone(),
            student_feature: feature,
            weight: 1.0,
            projection: None,
            loss,
        }
    }

    /// The teacher's feature read under `name` (default: the student's name).
    pub fn with_teacher_feature(mut self, name: impl Into<String>) -> Self {
        self.teacher_feature = name.into();
        self
    }

    /// The term's weight in the total (default 1).
    ///
    /// # Panics
    /// If `weight` is negative or not finite, with
    /// [`DistillError::InvalidWeight`]'s message.
    pub fn with_weight(mut self, weight: f64) -> Self {
        or_panic(check_weight("weight", weight));
        self.weight = weight;
        self
    }

    /// A trainable linear projection of the student's feature, over its last
    /// axis, from `student_width` to `teacher_width` (burn's `Linear`
    /// initialisation, with a bias), applied before the loss: DistillKit's
    /// projection where hidden sizes differ.
    ///
    /// # Panics
    /// If a width is 0, with [`DistillError::InvalidParameter`]'s message.
    pub fn with_projection(
        mut self,
        student_width: usize,
        teacher_width: usize,
        device: &Device,
    ) -> Self {
        self.projection =
            Some(FeatureProjectionConfig::new(student_width, teacher_width).init(device));
        self
    }

    /// `"<kind> <student feature>"`, e.g. `"hint block2"`: how the
    /// distiller's output and [`FeatureLossMetric`](crate::train::FeatureLossMetric)
    /// name it.
    pub fn name(&self) -> String {
        format!("{} {}", L::KIND, self.student_feature)
    }

    /// The term's weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// The unweighted loss between the named features (times `batch_share`
    /// for a loss not by positions).
    fn value(
        &self,
        student: &Features,
        teacher: &Features,
        positions: &Targets,
        batch_share: f64,
    ) -> Result<Tensor<1>, DistillError> {
        let mut student = student.get(&self.student_feature)?.clone();
        let teacher = teacher.get(&self.teacher_feature)?.clone();
        if let Some(projection) = &self.projection {
            student = project(projection, student)?;
        }
        let value = self.loss.feature_loss(student, teacher, positions)?;
        Ok(if L::BY_POSITIONS || batch_share == 1.0 {
            value
        } else {
            value.mul_scalar(batch_share)
        })
    }
}

/// `feature` through `projection` over its last axis, its width checked.
fn project(projection: &FeatureProjection, feature: Feature) -> Result<Feature, DistillError> {
    let shape = feature.dims();
    projection.check_width("student_features", &shape, shape.len() - 1)?;
    Ok(match feature {
        Feature::Rank2(tensor) => projection.forward(tensor).into(),
        Feature::Rank3(tensor) => projection.forward(tensor).into(),
        Feature::Rank4(tensor) => projection.forward(tensor).into(),
        Feature::Rank5(tensor) => projection.forward(tensor).into(),
    })
}

/// One feature term's value in a step, as the
/// [`DistillOutput`](crate::train::DistillOutput) reports it.
#[derive(Debug, Clone)]
pub struct FeatureValue {
    /// The term's [name](FeatureTerm::name).
    pub name: String,
    /// Its weight in the total.
    pub weight: f64,
    /// The loss before weighting, `[1]`.
    pub value: Tensor<1>,
}

impl FeatureValue {
    /// The value off the autodiff tape, for the metric thread.
    #[cfg(feature = "train")]
    pub(crate) fn without_autodiff(self) -> Self {
        Self {
            value: self.value.without_autodiff(),
            ..self
        }
    }
}

/// The feature terms of a [`Distiller`](crate::train::Distiller): none
/// ([`NoFeatures`]), one [`FeatureTerm`], a `Vec` of terms of one loss, or a
/// tuple of up to four of these (terms of different losses).
pub trait FeatureTerms: Module + ModuleDisplay + Sync + 'static {
    /// Whether there are no terms (then the models' features are not asked
    /// for).
    fn is_empty(&self) -> bool;

    /// Each term's value between the student's and the teacher's features,
    /// appended to `values` in order. `batch_share` is this call's share of
    /// the step's examples (1 for a whole batch; a micro-batch's sequences
    /// over the batch's): the factor of a loss that averages over its
    /// examples, so that micro-batches' values sum to the batch's (a loss
    /// [by positions](FeatureLoss::BY_POSITIONS) gets the whole batch's
    /// weights in `positions` instead).
    ///
    /// # Errors
    /// [`DistillError::InFeatureTerm`] naming the term whose features are
    /// missing or refused.
    fn feature_values(
        &self,
        student: &Features,
        teacher: &Features,
        positions: &Targets,
        batch_share: f64,
        values: &mut Vec<FeatureValue>,
    ) -> Result<(), DistillError>;
}

/// No feature terms: a [`Distiller`](crate::train::Distiller) on logits
/// alone (its default).
#[derive(Module, Debug, Default)]
pub struct NoFeatures;

impl FeatureTerms for NoFeatures {
    fn is_empty(&self) -> bool {
        true
    }

    fn feature_values(
        &self,
        _student: &Features,
        _teacher: &Features,
        _positions: &Targets,
        _batch_share: f64,
        _values: &mut Vec<FeatureValue>,
    ) -> Result<(), DistillError> {
        Ok(())
    }
}

impl<L: FeatureLoss> FeatureTerms for FeatureTerm<L> {
    fn is_empty(&self) -> bool {
        false
    }

    fn feature_values(
        &self,
        student: &Features,
        teacher: &Features,
        positions: &Targets,
        batch_share: f64,
        values: &mut Vec<FeatureValue>,
    ) -> Result<(), DistillError> {
        let value = self
            .value(student, teacher, positions, batch_share)
            .map_err(|error| DistillError::InFeatureTerm {
                term: self.name(),
                error: Box::new(error),
            })?;
        values.push(FeatureValue {
            name: self.name(),
            weight: self.weight,
            value,
        });
        Ok(())
    }
}

impl<L: FeatureLoss> FeatureTerms for Vec<FeatureTerm<L>> {
    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    fn feature_values(
        &self,
        student: &Features,
        teacher: &Features,
        positions: &Targets,
        batch_share: f64,
        values: &mut Vec<FeatureValue>,
    ) -> Result<(), DistillError> {
        self.iter().try_for_each(|term| {
            term.feature_values(student, teacher, positions, batch_share, values)
        })
    }
}

macro_rules! tuple_feature_terms {
    ($($term:ident . $index:tt),*) => {
        impl<$($term: FeatureTerms),*> FeatureTerms for ($($term,)*) {
            fn is_empty(&self) -> bool {
                true $(&& self.$index.is_empty())*
            }

            fn feature_values(
                &self,
                student: &Features,
                teacher: &Features,
                positions: &Targets,
                batch_share: f64,
                values: &mut Vec<FeatureValue>,
            ) -> Result<(), DistillError> {
                $(self.$index.feature_values(student, teacher, positions, batch_share, values)?;)*
                Ok(())
            }
        }
    };
}

tuple_feature_terms!(A.0, B.1);
tuple_feature_terms!(A.0, B.1, C.2);
tuple_feature_terms!(A.0, B.1, C.2, D.3);
