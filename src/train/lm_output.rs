//! What an [`LmDistiller`](super::LmDistiller) step returns to the Learner,
//! and the metric inputs it adapts to — per counted token, without the
//! `[tokens, vocab]` logits.

use burn::tensor::{Bool, ExecutionError, Int, Tensor};
use burn::train::ItemLazy;
use burn::train::metric::{Adaptor, LossInput, PerplexityInput};

use super::metrics::{AgreementInput, DistillLossInput, FeatureLossInput};
use crate::feature::FeatureValue;

/// One step's results: the loss and its two terms, and per token (the
/// batch's `[batch, seq]` positions flattened) the student's log-probability
/// of the next token, both models' most probable tokens and whether the token
/// counts.
///
/// Adapts to burn-train's `LossMetric` (the trained total) and
/// `PerplexityMetric` (the student's, over the counted tokens), and to
/// [`DistillLossMetric`](super::DistillLossMetric),
/// [`FeatureLossMetric`](super::FeatureLossMetric) and
/// [`AgreementMetric`](super::AgreementMetric) (per counted token).
///
/// # Shapes
/// - `loss`, `hard`, `soft` when present, and each feature value: `[1]`
/// - `token_log_probs`, `student_top1`, `counted`, and `teacher_top1` when
///   present: `[batch · seq]`
#[derive(Debug, Clone)]
pub struct LmOutput {
    /// The loss the step trains on (all its micro-batches: the batch's loss).
    pub loss: Tensor<1>,
    /// The soft term before weighting (`None` when the teacher did not run).
    pub soft: Option<Tensor<1>>,
    /// The hard term before weighting: the student's next-token
    /// cross-entropy at `T = 1`.
    pub hard: Tensor<1>,
    /// The student's log-probability of each position's next token.
    pub token_log_probs: Tensor<1>,
    /// The student's most probable next token per position.
    pub student_top1: Tensor<1, Int>,
    /// The teacher's most probable next token per position (`None` when the
    /// teacher did not run).
    pub teacher_top1: Option<Tensor<1, Int>>,
    /// `true` where the position counts (not padding, not the prompt, not a
    /// sequence's last token).
    pub counted: Tensor<1, Bool>,
    /// Whether the batch's completions were sampled from the student
    /// (on-policy GKD) rather than taken from the data.
    pub on_policy: bool,
    /// The feature terms' values before weighting, summed over the
    /// micro-batches (the batch's value), in the distiller's order (empty
    /// without feature terms, or when the teacher did not run).
    pub features: Vec<FeatureValue>,
}

impl LmOutput {
    /// The counted positions' indices, `[counted]` (read back).
    fn counted_rows(&self) -> Tensor<1, Int> {
        let rows = self.counted.clone().argwhere();
        let [count, _] = rows.dims();
        rows.reshape([count])
    }
}

impl ItemLazy for LmOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        self.loss.device().flush()?;
        Ok(Self {
            loss: self.loss.without_autodiff(),
            soft: self.soft.map(Tensor::without_autodiff),
            hard: self.hard.without_autodiff(),
            token_log_probs: self.token_log_probs.without_autodiff(),
            student_top1: self.student_top1.without_autodiff(),
            teacher_top1: self.teacher_top1.map(Tensor::without_autodiff),
            counted: self.counted.without_autodiff(),
            on_policy: self.on_policy,
            features: self
                .features
                .into_iter()
                .map(FeatureValue::without_autodiff)
                .collect(),
        })
    }
}

impl Adaptor<LossInput> for LmOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

/// burn's `PerplexityMetric` takes logits and targets; it is given, per
/// counted token, the two "logits" `[log p, log(1 − p)]` (`p` the student's
/// probability of the token) and the target 0: their log-softmax at 0 is
/// `log p` exactly, so the metric's `exp(−Σ log p / tokens)` is the student's
/// perplexity, without `[tokens, vocab]` logits in the metric thread.
impl Adaptor<PerplexityInput> for LmOutput {
    fn adapt(&self) -> PerplexityInput {
        let rows = self.counted_rows();
        let [count] = rows.dims();
        let log_p = self.token_log_probs.clone().select(0, rows);
        // log(1 − p), kept finite where p rounds to 1.
        let log_rest = log_p.clone().exp().neg().log1p().clamp_min(-1e30);
        let outputs = Tensor::stack::<2>(vec![log_p, log_rest], 1);
        let targets = Tensor::<1, Int>::zeros([count], &outputs.device());
        PerplexityInput::new(outputs, targets)
    }
}

impl Adaptor<DistillLossInput> for LmOutput {
    fn adapt(&self) -> DistillLossInput {
        DistillLossInput {
            soft: self.soft.clone(),
            hard: self.hard.clone(),
            rows: self.counted_rows().dims()[0],
        }
    }
}

impl Adaptor<FeatureLossInput> for LmOutput {
    fn adapt(&self) -> FeatureLossInput {
        FeatureLossInput {
            features: self.features.clone(),
            rows: self.counted_rows().dims()[0],
        }
    }
}

impl Adaptor<AgreementInput> for LmOutput {
    fn adapt(&self) -> AgreementInput {
        let rows = self.counted_rows();
        AgreementInput {
            student_top1: self.student_top1.clone().select(0, rows.clone()),
            teacher_top1: self
                .teacher_top1
                .as_ref()
                .map(|teacher| teacher.clone().select(0, rows)),
        }
    }
}
