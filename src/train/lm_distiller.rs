//! The [`LmDistiller`]: a causal LM student, an LM teacher source and a
//! distillation loss as one burn-train model, over [`TokenBatch`]es —
//! micro-batched with the whole batch's normaliser, and on-policy (GKD) when
//! asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use super::lm_loss::LmLoss;
use super::lm_output::LmOutput;
use super::teacher::LmTeacherSource;
use crate::divergence::check_unit_interval;
use crate::error::DistillError;
use crate::feature::{FeatureTerms, FeatureValue, Features, NoFeatures};
use crate::kd::KdLoss;
use crate::lm::{CausalLm, SamplerConfig, TokenBatch, generate};
use crate::reduction::{PositionWeights, Reduction};
use crate::specialist::rng::SplitMix64;

/// Where a training batch's completions come from.
#[derive(Debug, Clone)]
pub enum Completions {
    /// The data's (supervised, off-policy distillation). The default; also
    /// sequence-level KD, where the data are the teacher's completions,
    /// sampled once with [`generate`].
    Data,
    /// Generalised knowledge distillation (GKD; Agarwal et al. 2024, "On-Policy
    /// Distillation of Language Models", Algorithm 1): for each training
    /// batch, with probability `lambda`, every prompt's completion is sampled
    /// from the current student with `sampler` (on-policy), otherwise the
    /// data's is kept; the teacher then scores the completions, and only
    /// completion tokens count (the batch needs a prompt mask). TRL's
    /// `GKDTrainer` defaults: `lambda = 0.5`, temperature 0.9, and the
    /// divergence [`Divergence::Jsd`](crate::Divergence::Jsd) with
    /// `beta = 0.5`.
    Gkd {
        /// The probability of an on-policy batch, in [0, 1].
        lambda: f64,
        /// How the student samples (its `seed` is combined with the step).
        sampler: SamplerConfig,
    },
}

/// A causal LM student distilled from a teacher by a loss ([`KdLoss`] by
/// default; [`DkdLoss`](crate::dkd::DkdLoss), or
/// [`FusedLinearKdLoss`](crate::FusedLinearKdLoss) from the student's hidden
/// states) over [`TokenBatch`]es, as a model burn's `Learner` trains.
///
/// Each step shifts the batch once ([`TokenBatch::next_token_targets`]),
/// runs the teacher and the student, and returns the student's gradients;
/// validation steps do the same without gradients.
///
/// # Micro-batches: the gradient of the whole batch
/// [`with_micro_batch`](Self::with_micro_batch) splits each batch into
/// micro-batches of that many sequences, each run forward and backward in
/// turn (so memory holds one micro-batch's activations), their gradients
/// summed. Every micro-batch is reduced with the **whole batch's** weights
/// (its count of kept tokens, or its per-sequence counts for
/// [`Reduction::SequenceMean`](crate::Reduction::SequenceMean)), computed on
/// the device without a read-back, so the summed loss and gradient are the
/// full batch's, whatever the split and however unequal its padding. Use it
/// instead of the Learner's `grads_accumulation`, which sums steps that were
/// each divided by their own count.
///
/// # Example
/// ```
/// use burn::module::Module;
/// use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
/// use burn::optim::AdamConfig;
/// use burn::tensor::{Bool, Device, Int, Tensor};
/// use burn::train::{Learner, TrainStep};
/// use burn_distill::KdLossConfig;
/// use burn_distill::lm::{CausalLm, OutputLayer, TokenBatch};
/// use burn_distill::train::{FrozenTeacher, LmDistiller};
///
/// #[derive(Module, Debug)]
/// struct Bigram {
///     embedding: Embedding,
///     output: Linear,
/// }
/// impl CausalLm for Bigram {
///     fn hidden(&self, tokens: Tensor<2, Int>, _padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
///         self.embedding.forward(tokens)
///     }
///     fn output_layer(&self) -> OutputLayer {
///         OutputLayer::from_linear(&self.output)
///     }
/// }
/// let bigram = |device: &Device| Bigram {
///     embedding: EmbeddingConfig::new(10, 8).init(device),
///     output: LinearConfig::new(8, 10).init(device),
/// };
///
/// let device = Device::flex().autodiff();
/// let distiller = LmDistiller::new(
///     bigram(&device),
///     FrozenTeacher::new(bigram(&device)),
///     KdLossConfig::new().with_temperature(2.0).init(),
/// )
/// .with_micro_batch(1);
/// let mut learner = Learner::new(distiller, AdamConfig::new().init(), 1e-3);
/// // Two sequences, the second padded with 0.
/// let tokens = Tensor::<2, Int>::from_ints([[1, 2, 3, 4], [5, 6, 0, 0]], &device);
/// let padding = Tensor::<2, Bool>::from_data([[false; 4], [false, false, true, true]], &device);
/// let step = learner.train_step(TokenBatch::new(tokens).with_padding_mask(padding));
/// assert!(step.item.loss.clone().into_scalar::<f32>().is_finite());
/// learner.optimizer_step(step.grads);
/// ```
#[derive(Module, Debug)]
pub struct LmDistiller<S, T, L = KdLoss, F = NoFeatures> {
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
    /// Sequences per micro-batch; 0: the whole batch at once.
    micro_batch: usize,
    #[module(skip)]
    reduction: Reduction,
    teacher_in_validation: bool,
    #[module(skip)]
    completions: Completions,
    /// Training steps run, shared by the distiller's clones: GKD's draws.
    #[module(skip)]
    steps: Arc<AtomicU64>,
}

impl<S, T, L> LmDistiller<S, T, L>
where
    S: CausalLm,
    T: LmTeacherSource,
    L: LmLoss,
{
    /// Distils `student` from `teacher` with `loss`, on the data's
    /// completions, each batch whole. Validation steps run the teacher too.
    pub fn new(student: S, teacher: T, loss: L) -> Self {
        Self {
            student,
            teacher,
            loss,
            features: NoFeatures,
            micro_batch: 0,
            reduction: Reduction::Mean,
            teacher_in_validation: true,
            completions: Completions::Data,
            steps: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<S, T, L, F> LmDistiller<S, T, L, F>
where
    S: CausalLm,
    T: LmTeacherSource,
    L: LmLoss,
    F: FeatureTerms,
{
    /// The distiller with `features` as its feature terms (replacing any it
    /// had), as [`Distiller::with_features`](super::Distiller::with_features):
    /// each term's `weight · value` between the student's and the teacher's
    /// named outputs ([`CausalLm::hidden_and_features`]; by default the last
    /// hidden states, `"hidden"`) joins the loss, the terms' projections are
    /// trained and saved with the student, and the teacher's features come
    /// without autodiff ([`LmTeacherSource::teach_with_features`]).
    ///
    /// A [`HiddenStateLoss`](crate::feature::HiddenStateLoss) on
    /// `[batch, seq, d]` states counts the positions the logit loss scores
    /// (not padding, not the prompt, not a sequence's last token), reduced
    /// with the whole batch's weights like it, so micro-batches sum to the
    /// batch's value; a loss over examples is weighed by each micro-batch's
    /// share of the sequences (RKD relates the examples of one micro-batch).
    ///
    /// # Example
    /// ```
    /// use burn::module::Module;
    /// use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
    /// use burn::tensor::{Bool, Device, Int, Tensor};
    /// use burn_distill::KdLossConfig;
    /// use burn_distill::feature::{FeatureTerm, HiddenStateDistance, HiddenStateLossConfig};
    /// use burn_distill::lm::{CausalLm, OutputLayer, TokenBatch};
    /// use burn_distill::train::{FrozenTeacher, LmDistiller};
    ///
    /// #[derive(Module, Debug)]
    /// struct Bigram {
    ///     embedding: Embedding,
    ///     output: Linear,
    /// }
    /// impl CausalLm for Bigram {
    ///     fn hidden(&self, tokens: Tensor<2, Int>, _padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
    ///         self.embedding.forward(tokens)
    ///     }
    ///     fn output_layer(&self) -> OutputLayer {
    ///         OutputLayer::from_linear(&self.output)
    ///     }
    /// }
    /// let device = Device::flex().autodiff();
    /// let bigram = |width: usize| Bigram {
    ///     embedding: EmbeddingConfig::new(10, width).init(&device),
    ///     output: LinearConfig::new(width, 10).init(&device),
    /// };
    /// // DistilBERT's cosine between the last hidden states, 8 wide against
    /// // the teacher's 16 through a trained projection.
    /// let cosine = FeatureTerm::new("hidden", HiddenStateLossConfig::new().init())
    ///     .with_projection(8, 16, &device);
    /// let distiller = LmDistiller::new(bigram(8), FrozenTeacher::new(bigram(16)), KdLossConfig::new().init())
    ///     .with_features(cosine);
    /// let tokens = Tensor::<2, Int>::from_ints([[1, 2, 3, 4]], &device);
    /// let output = distiller.forward(TokenBatch::new(tokens));
    /// assert_eq!(output.features[0].name, "hidden-state hidden");
    /// ```
    pub fn with_features<G: FeatureTerms>(self, features: G) -> LmDistiller<S, T, L, G> {
        LmDistiller {
            student: self.student,
            teacher: self.teacher,
            loss: self.loss,
            features,
            micro_batch: self.micro_batch,
            reduction: self.reduction,
            teacher_in_validation: self.teacher_in_validation,
            completions: self.completions,
            steps: self.steps,
        }
    }

    /// Runs each batch in micro-batches of `sequences` sequences (the last
    /// one may be shorter), with the whole batch's normaliser: see the
    /// [type's documentation](Self). 0: the whole batch at once.
    pub fn with_micro_batch(mut self, sequences: usize) -> Self {
        self.micro_batch = sequences;
        self
    }

    /// How each batch's token losses are reduced (default
    /// [`Reduction::Mean`], the mean over the batch's counted tokens;
    /// [`Reduction::SequenceMean`] weighs every sequence the same). Whatever
    /// the micro-batches, it is the whole batch's reduction.
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Whether validation steps run the teacher (default `true`); without
    /// it the validation loss is the hard term alone.
    pub fn with_teacher_in_validation(mut self, teacher_in_validation: bool) -> Self {
        self.teacher_in_validation = teacher_in_validation;
        self
    }

    /// Where training batches' completions come from (default
    /// [`Completions::Data`]). Validation always scores the data's.
    ///
    /// # Errors
    /// A GKD `lambda` outside [0, 1], or a bad sampler.
    pub fn with_completions(mut self, completions: Completions) -> Result<Self, DistillError> {
        if let Completions::Gkd { lambda, sampler } = &completions {
            check_unit_interval("lambda", *lambda)?;
            sampler.check()?;
        }
        self.completions = completions;
        Ok(self)
    }

    /// The batch a training step trains on: `batch` itself, or under GKD
    /// (with probability `lambda`) its prompts completed by the student.
    /// Each call is one step: it advances the draws.
    ///
    /// # Errors
    /// As [`TokenBatch::prompts`] and [`generate`] (GKD only).
    pub fn training_batch(&self, batch: TokenBatch) -> Result<(TokenBatch, bool), DistillError> {
        let step = self.steps.fetch_add(1, Ordering::Relaxed);
        let Completions::Gkd { lambda, sampler } = &self.completions else {
            return Ok((batch, false));
        };
        let mut rng = SplitMix64::new(sampler.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if rng.uniform() >= *lambda {
            return Ok((batch, false));
        }
        let prompts = batch.prompts()?;
        let device = batch.tokens.device();
        let sampler = sampler.clone().with_seed(rng.next_u64());
        let sampled = generate(&self.student, &prompts, &sampler, &device)?;
        let to = |t: Tensor<2, burn::tensor::Bool>| t.to_device(&device);
        let on_device = TokenBatch {
            tokens: sampled.tokens.to_device(&device),
            padding_mask: sampled.padding_mask.map(to),
            prompt_mask: sampled.prompt_mask.map(to),
            examples: batch.examples,
        };
        Ok((on_device, true))
    }

    /// A step's forward, without the backward: the loss's parts and the
    /// per-token scores of `batch` as given (no on-policy sampling).
    ///
    /// # Panics
    /// If the teacher source fails, or on input the loss refuses, with its
    /// message.
    pub fn forward(&self, batch: TokenBatch) -> LmOutput {
        self.run(batch, true, false, false).0
    }

    /// The step: micro-batch by micro-batch, each reduced with the whole
    /// batch's weights; the gradients summed when `backward`.
    fn run(
        &self,
        batch: TokenBatch,
        with_teacher: bool,
        backward: bool,
        on_policy: bool,
    ) -> (LmOutput, Option<GradientsParams>) {
        let fail = |error: DistillError| -> ! { panic!("LmDistiller: {error}") };
        let targets = batch
            .next_token_targets()
            .unwrap_or_else(|e| fail(e))
            .with_reduction(self.reduction);
        let [sequences, seq] = batch.dims();
        let device = batch.tokens.device();
        let keep = targets.kept_rows(self.loss.ignore_index());
        if self.reduction == Reduction::GlobalCount(0) {
            // Read back only here: a count of 0 is the rare case to refuse.
            let kept = keep.as_ref().map_or(sequences * seq, |keep| {
                keep.clone().int().sum().into_scalar::<i64>() as usize
            });
            if kept > 0 {
                fail(DistillError::ZeroGlobalCount { kept });
            }
        }
        let step = match self.micro_batch {
            0 => sequences,
            n => n.min(sequences),
        };
        let mut weights: Option<PositionWeights> = None;
        let mut accumulator = GradientsAccumulator::<Self>::new();
        let mut totals = Vec::new();
        let mut softs = Vec::new();
        let mut hards = Vec::new();
        let mut log_probs = Vec::new();
        let mut student_top1 = Vec::new();
        let mut teacher_top1 = Vec::new();
        let with_features = with_teacher && !self.features.is_empty();
        let mut features: Vec<FeatureValue> = Vec::new();
        for start in (0..sequences).step_by(step) {
            let end = (start + step).min(sequences);
            let micro = batch.sequences(start..end);
            let (student, student_features) = if with_features {
                let (hidden, named) = self
                    .student
                    .hidden_and_features(micro.tokens.clone(), micro.padding_mask.clone());
                (self.loss.student_from_hidden(&self.student, hidden), named)
            } else {
                (
                    self.loss.student_input(&self.student, &micro),
                    Features::new(),
                )
            };
            let weights = weights.get_or_insert_with(|| {
                let dtype = self.loss.compute_dtype(&student);
                targets.position_weights(keep.as_ref(), &[sequences, seq], dtype)
            });
            let chunk = targets.chunk(start * seq, end * seq, weights);
            let labels = chunk
                .labels()
                .expect("next-token targets have labels")
                .clone();
            let teacher = with_teacher.then(|| {
                let taught = if with_features {
                    self.teacher.teach_with_features(&micro, &device).and_then(
                        |(teacher, named)| {
                            Ok((self.loss.teacher_from_linear(teacher, &micro)?, named))
                        },
                    )
                } else {
                    self.loss
                        .teacher_input(&self.teacher, &micro, &device)
                        .map(|teacher| (teacher, Features::new()))
                };
                taught.unwrap_or_else(|e| fail(e))
            });
            let (teacher, teacher_features) = match teacher {
                Some((teacher, named)) => (Some(teacher), named),
                None => (None, Features::new()),
            };
            let mut micro_features = Vec::new();
            if with_features {
                // The positions the logit loss scores, with the batch's weights.
                let positions = chunk.clone().with_position_shape(&[end - start, seq]);
                let share = (end - start) as f64 / sequences as f64;
                self.features
                    .feature_values(
                        &student_features,
                        &teacher_features,
                        &positions,
                        share,
                        &mut micro_features,
                    )
                    .unwrap_or_else(|e| fail(e));
            }
            if let Some(teacher) = &teacher {
                self.loss
                    .check(&student, teacher, &chunk)
                    .unwrap_or_else(|e| fail(e));
                teacher_top1.push(self.loss.teacher_top1(teacher));
            }
            let (picked, top1) = self.loss.student_scores(&student, &labels);
            log_probs.push(picked);
            student_top1.push(top1);
            let total = match teacher {
                Some(teacher) => {
                    let parts = self.loss.forward_parts(student, teacher, chunk);
                    softs.push(parts.soft.detach());
                    hards.push(parts.hard.detach());
                    parts.total
                }
                None => {
                    let hard = self.loss.forward_hard(student, chunk);
                    hards.push(hard.clone().detach());
                    hard
                }
            };
            let total = micro_features.iter().fold(total, |total, term| {
                total + term.value.clone().mul_scalar(term.weight)
            });
            add_feature_values(&mut features, micro_features);
            if backward {
                let grads = GradientsParams::from_grads(total.backward(), self);
                accumulator.accumulate(self, grads);
                totals.push(total.detach());
            } else {
                totals.push(total);
            }
        }
        let sum = |parts: Vec<Tensor<1>>| Tensor::cat(parts, 0).sum();
        let output = LmOutput {
            loss: sum(totals),
            soft: (!softs.is_empty()).then(|| sum(softs)),
            hard: sum(hards),
            token_log_probs: Tensor::cat(log_probs, 0),
            student_top1: Tensor::cat(student_top1, 0),
            teacher_top1: (!teacher_top1.is_empty()).then(|| Tensor::cat(teacher_top1, 0)),
            counted: keep.unwrap_or_else(|| {
                Tensor::<1, burn::tensor::Int>::ones([sequences * seq], &device).equal_elem(1)
            }),
            on_policy,
            features,
        };
        (output, backward.then(|| accumulator.grads()))
    }
}

/// `micro`'s feature values added, term by term, to the batch's `sums`
/// (detached: the micro-batch's total carries the graph).
fn add_feature_values(sums: &mut Vec<FeatureValue>, micro: Vec<FeatureValue>) {
    if sums.is_empty() {
        sums.extend(micro.into_iter().map(|term| FeatureValue {
            value: term.value.detach(),
            ..term
        }));
    } else {
        for (sum, term) in sums.iter_mut().zip(micro) {
            sum.value = sum.value.clone() + term.value.detach();
        }
    }
}

impl<S, T, L, F> TrainStep for LmDistiller<S, T, L, F>
where
    S: CausalLm,
    T: LmTeacherSource,
    L: LmLoss,
    F: FeatureTerms,
{
    type Input = TokenBatch;
    type Output = LmOutput;

    fn step(&self, batch: TokenBatch) -> TrainOutput<LmOutput> {
        let (batch, on_policy) = self
            .training_batch(batch)
            .unwrap_or_else(|error| panic!("LmDistiller: {error}"));
        let (item, grads) = self.run(batch, true, true, on_policy);
        TrainOutput {
            grads: grads.expect("a backward run returns gradients"),
            item,
        }
    }
}

impl<S, T, L, F> InferenceStep for LmDistiller<S, T, L, F>
where
    S: CausalLm,
    T: LmTeacherSource,
    L: LmLoss,
    F: FeatureTerms,
{
    type Input = TokenBatch;
    type Output = LmOutput;

    fn step(&self, batch: TokenBatch) -> LmOutput {
        self.run(batch, self.teacher_in_validation, false, false).0
    }
}
