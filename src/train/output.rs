//! What a [`Distiller`](super::Distiller) step returns to the Learner, and
//! the metric inputs it adapts to.

use burn::tensor::{ExecutionError, Int, Tensor};
use burn::train::ItemLazy;
use burn::train::metric::{AccuracyInput, Adaptor, LossInput, TopKAccuracyInput};

use super::metrics::{AgreementInput, DistillLossInput, FeatureLossInput};
use crate::feature::FeatureValue;

/// One step's results: the loss and its terms, the student's logits, the
/// labels and the teacher's top-1 classes.
///
/// Adapts to burn-train's `LossMetric` (the trained total), `AccuracyMetric`
/// and `TopKAccuracyMetric` (the student against the labels), and to
/// [`DistillLossMetric`](super::DistillLossMetric),
/// [`FeatureLossMetric`](super::FeatureLossMetric) and
/// [`AgreementMetric`](super::AgreementMetric).
///
/// # Shapes
/// - `loss`, `hard`, `soft` when present, and each feature value: `[1]`
/// - `output`: `[batch, classes]`
/// - `targets`, and `teacher_top1` when present: `[batch]`
#[derive(Debug, Clone)]
pub struct DistillOutput {
    /// The loss the step trains on: `soft_weight · soft + hard_weight · hard`
    /// plus each feature term's `weight · value`; the hard term alone in a
    /// validation step run without the teacher.
    pub loss: Tensor<1>,
    /// The soft term before weighting (`None` when the teacher did not run).
    pub soft: Option<Tensor<1>>,
    /// The hard term before weighting: the student's cross-entropy at `T = 1`.
    pub hard: Tensor<1>,
    /// The student's logits.
    pub output: Tensor<2>,
    /// The labels.
    pub targets: Tensor<1, Int>,
    /// The teacher's most probable class per row (`None` when the teacher did
    /// not run).
    pub teacher_top1: Option<Tensor<1, Int>>,
    /// The feature terms' values before weighting, in the distiller's order
    /// (empty without feature terms, or when the teacher did not run).
    pub features: Vec<FeatureValue>,
}

impl ItemLazy for DistillOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        // As burn-train's ClassificationOutput: dispatch the pending work, and
        // hand the metric thread tensors without the autodiff tape.
        self.loss.device().flush()?;
        Ok(Self {
            loss: self.loss.without_autodiff(),
            soft: self.soft.map(Tensor::without_autodiff),
            hard: self.hard.without_autodiff(),
            output: self.output.without_autodiff(),
            targets: self.targets.without_autodiff(),
            teacher_top1: self.teacher_top1.map(Tensor::without_autodiff),
            features: self
                .features
                .into_iter()
                .map(FeatureValue::without_autodiff)
                .collect(),
        })
    }
}

impl Adaptor<LossInput> for DistillOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl Adaptor<AccuracyInput> for DistillOutput {
    fn adapt(&self) -> AccuracyInput {
        AccuracyInput::new(self.output.clone(), self.targets.clone())
    }
}

impl Adaptor<TopKAccuracyInput> for DistillOutput {
    fn adapt(&self) -> TopKAccuracyInput {
        TopKAccuracyInput::new(self.output.clone(), self.targets.clone())
    }
}

impl Adaptor<DistillLossInput> for DistillOutput {
    fn adapt(&self) -> DistillLossInput {
        DistillLossInput {
            soft: self.soft.clone(),
            hard: self.hard.clone(),
            rows: self.targets.dims()[0],
        }
    }
}

impl Adaptor<FeatureLossInput> for DistillOutput {
    fn adapt(&self) -> FeatureLossInput {
        FeatureLossInput {
            features: self.features.clone(),
            rows: self.targets.dims()[0],
        }
    }
}

impl Adaptor<AgreementInput> for DistillOutput {
    fn adapt(&self) -> AgreementInput {
        let [rows, _] = self.output.dims();
        AgreementInput {
            student_top1: self.output.clone().argmax(1).reshape([rows]),
            teacher_top1: self.teacher_top1.clone(),
        }
    }
}
