//! Fused linear distillation: the KD loss from the student's last hidden states
//! and its output layer, walking the rows (tokens) in chunks so that only a
//! `[chunk_size, vocab]` slice of either model's logits ever exists — at LLM
//! vocabularies the logits, not the model, are the memory (8192 tokens ×
//! 128,256 classes in f32 is 4.2 GB per model, before their gradient).
//!
//! Per chunk `c` of rows, with `W` `[d, V]` and `b` `[V]` the student's output
//! layer and `h_c` its hidden states:
//!
//! ```text
//! z_c = h_c W + b                       (no autodiff: a detached [chunk, V])
//! L_c, G_c = KdLoss(z_c, teacher_c)     (G_c = ∂L_c/∂z_c, by the fused kernel on the CPU)
//! ∂L/∂h_c = G_c Wᵀ,   ∂L/∂W += h_cᵀ G_c,   ∂L/∂b += Σ_rows G_c
//! ```
//!
//! Each chunk's rows are weighed as the whole batch's reduction weighs them
//! (by default, one over the tokens kept in the whole batch), so the chunks'
//! losses and gradients sum to the unchunked loss's. The teacher is never
//! differentiated.
//!
//! On flex and ndarray (f32, with this crate's feature for the backend) the
//! three gradients are summed on the host — `∂L/∂W` in place, one `[d, V]`
//! buffer for the whole call — and handed to autodiff by one node whose
//! backward scales them by the incoming gradient. On every other device and
//! dtype they are summed with tensor ops and attached by a surrogate whose
//! value is 0 and whose gradient is exactly them:
//! `L + (s − detach(s))` with `s = Σ h ⊙ ∂L/∂h + Σ W ⊙ ∂L/∂W + Σ b ⊙ ∂L/∂b`
//! (constants detached), so autodiff never sees a `[rows, V]` tensor there either.
//!
//! Peak memory beyond the inputs: `∂L/∂W` (`[d, V]`, the size of the weight),
//! `∂L/∂h`, and about four `[chunk_size, V]` buffers (measured: both models'
//! logits and their gradient among them); on the other devices a second
//! `[d, V]` buffer (each chunk's `h_cᵀ G_c` before it is added). The host path
//! reads the weight in place when it is row-major; a transposed view (a weight
//! tied to a `[V, d]` embedding) is copied for each chunk's products, so pass
//! a row-major `[d, V]` weight where memory is tight.

use burn::config::Config;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;

use crate::check::{
    BadPositions, ValueChecks, check_device, check_non_empty, check_same_shape, positions_mismatch,
};
use crate::divergence::Divergence;
use crate::error::{DistillError, or_panic};
use crate::fused;
use crate::kd::{KdLoss, KdLossConfig, KdLossOutput, try_hard_loss};
use crate::shape::{LogitsShape, flatten_rows, positions_of};
use crate::sparse::SparseTeacher;
use crate::targets::Targets;
use crate::teacher::TeacherOutput;
use crate::temperature::compute_dtype;
use crate::vocabulary::VocabularyRule;

/// Configuration of a [`FusedLinearKdLoss`].
///
/// ```
/// use burn_distill::{Divergence, FusedLinearKdLossConfig, KdLossConfig};
///
/// let kd = KdLossConfig::new().with_divergence(Divergence::Jsd { beta: 0.5 });
/// let loss = FusedLinearKdLossConfig::new(kd.clone()).with_chunk_size(Some(512)).init();
/// assert_eq!(loss.rows_per_chunk(32_000), 512);
/// // By default, rows for a [chunk, vocab] buffer of about 16 MB in f32, at least 128.
/// let loss = FusedLinearKdLossConfig::new(kd).init();
/// assert_eq!(loss.rows_per_chunk(32_000), 131);
/// assert_eq!(loss.rows_per_chunk(128_256), 128);
/// ```
#[derive(Config, Debug)]
pub struct FusedLinearKdLossConfig {
    /// The loss applied to the logits: divergence, temperature, `T²`, weights,
    /// `ignore_index`, teacher truncation.
    pub kd: KdLossConfig,
    /// Rows (tokens) per chunk, ≥ 1: the logits exist `chunk_size` rows at a
    /// time, and peak memory grows by about four `[chunk_size, vocab]` buffers.
    /// `None` (the default): as many rows as fill [`AUTO_CHUNK_ELEMENTS`]
    /// logits (16 MB in f32), but at least 128 — 131 rows at 32,000 classes,
    /// 128 at 128,256, 4194 at 1000. Below about 128 rows each chunk's update of
    /// the whole `[d, vocab]` weight gradient outweighs its matrix products
    /// (32-row chunks at 128,256 classes took twice the time of 128-row ones).
    #[config(default = "None")]
    pub chunk_size: Option<usize>,
}

impl FusedLinearKdLossConfig {
    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid field, with the message of [`try_init`](Self::try_init).
    pub fn init(&self) -> FusedLinearKdLoss {
        or_panic(self.try_init())
    }

    /// Builds the loss, or says which field is invalid (those of
    /// [`KdLossConfig::try_init`], and a `chunk_size` of 0).
    pub fn try_init(&self) -> Result<FusedLinearKdLoss, DistillError> {
        if self.chunk_size == Some(0) {
            return Err(DistillError::InvalidParameter {
                argument: "chunk_size",
                value: 0,
                requirement: "at least 1",
            });
        }
        Ok(FusedLinearKdLoss {
            kd: self.kd.try_init()?,
            chunk_size: self.chunk_size,
        })
    }
}

/// Logits per chunk when [`FusedLinearKdLossConfig::chunk_size`] is `None`:
/// 4,194,304 (16 MB in f32).
pub const AUTO_CHUNK_ELEMENTS: usize = 1 << 22;

/// The fewest rows per chunk chosen by default (see the config's `chunk_size`).
const MIN_AUTO_CHUNK_ROWS: usize = 128;

/// The teacher of a [`FusedLinearKdLoss`].
///
/// Its rank `D` is that of the student's hidden states: 2 for `[rows, d]`, 3
/// for a language model's `[batch, seq, d]`; the teacher's hidden states or
/// logits have the student's positions (`[rows]` or `[batch, seq]`).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per loss call, moved, as `TeacherOutput`
pub enum LinearTeacher<const D: usize = 2> {
    /// The teacher's last hidden states `[rows, d_teacher]` (or
    /// `[batch, seq, d_teacher]`) and output layer (`weight`
    /// `[d_teacher, vocab]`, as burn's `Linear` holds it, and an optional
    /// `bias` `[vocab]`): its logits are made chunk by chunk too.
    Hidden {
        /// `[rows, d_teacher]` or `[batch, seq, d_teacher]`.
        hidden: Tensor<D>,
        /// `[d_teacher, vocab]`.
        weight: Tensor<2>,
        /// `[vocab]`.
        bias: Option<Tensor<1>>,
    },
    /// The teacher's logits `[rows, vocab]` (or `[batch, seq, vocab]`),
    /// sliced per chunk.
    Logits(Tensor<D>),
    /// A stored top-k teacher, one row per position, sliced per chunk.
    TopK(SparseTeacher),
}

impl<const D: usize> LinearTeacher<D> {
    /// The teacher's hidden states and a burn [`Linear`] output layer.
    pub fn from_linear(hidden: Tensor<D>, output: &Linear) -> Self {
        Self::Hidden {
            hidden,
            weight: output.weight.val(),
            bias: output.bias.as_ref().map(|b| b.val()),
        }
    }

    /// The teacher flattened to rows, after checking that a dense one has the
    /// student's `positions`.
    pub(crate) fn into_rows(self, positions: &[usize]) -> Result<LinearTeacher, DistillError> {
        // `[rows]` positions: the rows check after this names both counts.
        let same = |found: Vec<usize>, argument| match found == positions || positions.len() == 1 {
            true => Ok(()),
            false => Err(positions_mismatch(argument, &found, positions)),
        };
        Ok(match self {
            Self::Hidden {
                hidden,
                weight,
                bias,
            } => {
                same(positions_of(&hidden), "teacher.hidden")?;
                LinearTeacher::Hidden {
                    hidden: flatten_rows(hidden),
                    weight,
                    bias,
                }
            }
            Self::Logits(logits) => {
                same(positions_of(&logits), "teacher_logits")?;
                LinearTeacher::Logits(flatten_rows(logits))
            }
            Self::TopK(sparse) => LinearTeacher::TopK(sparse),
        })
    }
}

impl LinearTeacher {
    /// Rows given.
    fn rows(&self) -> usize {
        match self {
            Self::Hidden { hidden, .. } => hidden.dims()[0],
            Self::Logits(logits) => logits.dims()[0],
            Self::TopK(sparse) => sparse.indices().dims()[0],
        }
    }

    /// Checks the output layer's shapes and that the teacher is on the
    /// student's device (`student`: its hidden states).
    /// The devices and layers of the teacher, and its vocabulary against the
    /// student's `vocab`, as the `vocabulary` rule and the `divergence` allow.
    fn check(
        &self,
        student: &Tensor<2>,
        vocab: usize,
        vocabulary: VocabularyRule,
        divergence: Divergence,
    ) -> Result<(), DistillError> {
        let (argument, teacher_vocab) = match self {
            Self::Hidden { weight, .. } => ("teacher.weight columns", Some(weight.dims()[1])),
            Self::Logits(logits) => ("teacher_logits columns", Some(logits.dims()[1])),
            // Top-k indices are checked against `vocab` with their values.
            Self::TopK(_) => ("teacher.indices", None),
        };
        if let Some(teacher_vocab) = teacher_vocab
            && !vocabulary.fits(teacher_vocab, vocab, divergence)
        {
            check_same_shape("weight columns", &[vocab], argument, &[teacher_vocab])?;
        }
        vocabulary.check_teacher(argument, teacher_vocab, vocab, divergence)?;
        match self {
            Self::Hidden { hidden, .. } => {
                check_device("hidden", student, "teacher.hidden", hidden)?
            }
            Self::Logits(logits) => check_device("hidden", student, "teacher_logits", logits)?,
            Self::TopK(sparse) => {
                check_device("hidden", student, "teacher.log_probs", sparse.log_probs())?
            }
        }
        if let Self::Hidden {
            hidden,
            weight,
            bias,
        } = self
        {
            check_device("teacher.hidden", hidden, "teacher.weight", weight)?;
            let (h, w) = (hidden.dims(), weight.dims());
            check_same_shape(
                "teacher.hidden columns",
                &[h[1]],
                "teacher.weight rows",
                &[w[0]],
            )?;
            if let Some(bias) = bias {
                check_device("teacher.weight", weight, "teacher.bias", bias)?;
                check_same_shape(
                    "teacher.bias",
                    &bias.dims(),
                    "teacher.weight columns",
                    &[w[1]],
                )?;
            }
        }
        Ok(())
    }

    /// The teacher on the inner backend: it is never differentiated.
    fn without_autodiff(self) -> Self {
        match self {
            Self::Hidden {
                hidden,
                weight,
                bias,
            } => Self::Hidden {
                hidden: hidden.without_autodiff(),
                weight: weight.without_autodiff(),
                bias: bias.map(Tensor::without_autodiff),
            },
            Self::Logits(logits) => Self::Logits(logits.without_autodiff()),
            Self::TopK(sparse) => Self::TopK(SparseTeacher::from_checked(
                sparse.indices().clone(),
                sparse.log_probs().clone().without_autodiff(),
            )),
        }
    }

    /// The teacher of rows `start..end`.
    fn chunk(&self, start: usize, end: usize) -> TeacherOutput {
        match self {
            Self::Hidden {
                hidden,
                weight,
                bias,
            } => {
                let h = hidden.clone().slice(start..end);
                TeacherOutput::Logits(affine(h, weight.clone(), bias.clone()))
            }
            Self::Logits(logits) => TeacherOutput::Logits(logits.clone().slice(start..end)),
            Self::TopK(sparse) => TeacherOutput::TopK(SparseTeacher::from_checked(
                sparse.indices().clone().slice(start..end),
                sparse.log_probs().clone().slice(start..end),
            )),
        }
    }
}

/// The KD loss from hidden states and an output layer, chunk by chunk; build it
/// with [`FusedLinearKdLossConfig`]. See the module documentation.
///
/// # Shapes
/// - `hidden`: `[rows, d]` or `[batch, seq, d]`; `weight`: `[d, vocab]`;
///   `bias`: `[vocab]`
/// - the teacher: see [`LinearTeacher`], the same positions
/// - `targets`: as for [`KdLoss`], with `hidden`'s positions
/// - output: `[1]`
///
/// # Example
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use burn_distill::{FusedLinearKdLossConfig, KdLossConfig, LinearTeacher};
///
/// let device = Device::flex().autodiff();
/// let hidden = Tensor::<2>::random([6, 4], Distribution::Normal(0.0, 1.0), &device).require_grad();
/// let weight = Tensor::<2>::random([4, 10], Distribution::Normal(0.0, 1.0), &device).require_grad();
/// let teacher = Tensor::<2>::random([6, 10], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<1, Int>::from_ints([0, 1, 2, 3, 4, 5], &device);
///
/// let loss = FusedLinearKdLossConfig::new(KdLossConfig::new()).with_chunk_size(Some(4)).init();
/// let value = loss.forward(hidden.clone(), weight.clone(), None, LinearTeacher::Logits(teacher), labels);
/// let grads = value.backward();
/// assert!(hidden.grad(&grads).is_some() && weight.grad(&grads).is_some());
/// ```
#[derive(Module, Debug)]
pub struct FusedLinearKdLoss {
    /// The loss applied to each chunk's logits.
    pub(crate) kd: KdLoss,
    chunk_size: Option<usize>,
}

impl FusedLinearKdLoss {
    /// The settings the loss was made with: its chunk size and the
    /// [`KdLossConfig`] of the loss applied to each chunk.
    ///
    /// ```
    /// use burn_distill::{FusedLinearKdLossConfig, KdLossConfig};
    ///
    /// let kd = KdLossConfig::new().with_temperature(2.0);
    /// let loss = FusedLinearKdLossConfig::new(kd).with_chunk_size(Some(64)).init();
    /// assert_eq!(loss.config().chunk_size, Some(64));
    /// assert_eq!(loss.config().kd.temperature, 2.0);
    /// ```
    pub fn config(&self) -> FusedLinearKdLossConfig {
        FusedLinearKdLossConfig {
            kd: self.kd.config(),
            chunk_size: self.chunk_size,
        }
    }

    /// Rows per chunk for a vocabulary of `vocab` classes: the configured
    /// `chunk_size`, or `AUTO_CHUNK_ELEMENTS / vocab` but at least 128.
    pub fn rows_per_chunk(&self, vocab: usize) -> usize {
        match self.chunk_size {
            Some(rows) => rows.max(1),
            None => (AUTO_CHUNK_ELEMENTS / vocab.max(1)).max(MIN_AUTO_CHUNK_ROWS),
        }
    }

    /// [`forward`](Self::forward) with the student's output layer as a burn [`Linear`].
    pub fn forward_linear<const D: usize>(
        &self,
        hidden: Tensor<D>,
        output: &Linear,
        teacher: LinearTeacher<D>,
        targets: impl Into<Targets>,
    ) -> Tensor<1>
    where
        Tensor<D>: LogitsShape,
    {
        let bias = output.bias.as_ref().map(|b| b.val());
        self.forward(hidden, output.weight.val(), bias, teacher, targets)
    }

    /// The KD loss of `hidden · weight + bias` against the teacher, reduced
    /// as [`KdLoss::forward`] reduces it, `[1]`; differentiable with respect
    /// to `hidden`, `weight` and `bias`. `hidden` is `[rows, d]` or a language
    /// model's `[batch, seq, d]`; the targets have its positions.
    ///
    /// # Panics
    /// On bad input, with the message of [`check`](Self::check) (bad values
    /// on a device backend: as [`KdLoss::forward`]).
    pub fn forward<const D: usize>(
        &self,
        hidden: Tensor<D>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        teacher: LinearTeacher<D>,
        targets: impl Into<Targets>,
    ) -> Tensor<1>
    where
        Tensor<D>: LogitsShape,
    {
        or_panic(self.run(hidden, weight, bias, teacher, targets.into(), false)).total
    }

    /// Checks a forward's input without computing the loss: the shapes and
    /// devices of the layers and the teacher, and the targets against the
    /// whole batch and the vocabulary, with their values read back (labels in
    /// range, top-k rows valid), as [`KdLoss::check`] checks them.
    ///
    /// ```
    /// use burn::tensor::{Device, Int, Tensor};
    /// use burn_distill::{DistillError, FusedLinearKdLossConfig, KdLossConfig, LinearTeacher, Targets};
    ///
    /// let device = Device::flex();
    /// let hidden = Tensor::<2>::zeros([6, 4], &device);
    /// let weight = Tensor::<2>::zeros([4, 10], &device);
    /// let teacher = LinearTeacher::Logits(Tensor::<2>::zeros([6, 10], &device));
    /// // 7 labels for 6 rows.
    /// let labels = Targets::new(Tensor::<1, Int>::from_ints([0, 1, 2, 3, 4, 5, 6], &device));
    /// let loss = FusedLinearKdLossConfig::new(KdLossConfig::new()).init();
    /// let error = loss.check(&hidden, &weight, None, &teacher, &labels).unwrap_err();
    /// assert!(matches!(error, DistillError::ShapeMismatch { left_argument: "targets", .. }));
    /// assert!(error.to_string().contains("[7]") && error.to_string().contains("[6]"));
    /// ```
    pub fn check<const D: usize>(
        &self,
        hidden: &Tensor<D>,
        weight: &Tensor<2>,
        bias: Option<&Tensor<1>>,
        teacher: &LinearTeacher<D>,
        targets: &Targets,
    ) -> Result<(), DistillError>
    where
        Tensor<D>: LogitsShape,
    {
        let (hidden, teacher, _, _) = self.check_input(
            hidden.clone(),
            weight,
            bias,
            teacher.clone(),
            targets,
            ValueChecks::Read,
        )?;
        // A top-k teacher's values (indices in range and distinct, masses at
        // most 1), by the batch's rows: a forward finds them chunk by chunk.
        if let LinearTeacher::TopK(sparse) = teacher {
            let [rows, _] = hidden.dims();
            sparse.check_against(rows, weight.dims()[1], ValueChecks::Read)?;
        }
        Ok(())
    }

    /// The loss as [`forward`](Self::forward) gives it (`total`, differentiable)
    /// and its two terms before weighting, as [`KdLoss::forward_parts`] defines
    /// them, for logging: `soft` and `hard` carry no gradient here (each would
    /// need its own `[d, vocab]` weight gradient). Each chunk's loss is
    /// computed in parts, which costs the fused kernel a second gradient buffer
    /// per chunk.
    ///
    /// ```
    /// use burn::tensor::{Device, Distribution, Int, Tensor};
    /// use burn_distill::{FusedLinearKdLossConfig, KdLossConfig, LinearTeacher};
    ///
    /// let device = Device::flex().autodiff();
    /// let hidden = Tensor::<2>::random([6, 4], Distribution::Normal(0.0, 1.0), &device).require_grad();
    /// let weight = Tensor::<2>::random([4, 10], Distribution::Normal(0.0, 1.0), &device).require_grad();
    /// let teacher = Tensor::<2>::random([6, 10], Distribution::Normal(0.0, 1.0), &device);
    /// let labels = Tensor::<1, Int>::from_ints([0, 1, 2, 3, 4, 5], &device);
    ///
    /// let kd = KdLossConfig::new().with_soft_weight(0.75).with_hard_weight(0.25);
    /// let loss = FusedLinearKdLossConfig::new(kd).with_chunk_size(Some(4)).init();
    /// let out = loss.forward_parts(hidden, weight, None, LinearTeacher::Logits(teacher), labels);
    /// let [total, soft, hard] = [out.total, out.soft, out.hard].map(|t| t.into_scalar::<f32>());
    /// assert!((total - (0.75 * soft + 0.25 * hard)).abs() < 1e-5);
    /// ```
    ///
    /// # Panics
    /// On bad input, with the message of [`check`](Self::check).
    pub fn forward_parts<const D: usize>(
        &self,
        hidden: Tensor<D>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        teacher: LinearTeacher<D>,
        targets: impl Into<Targets>,
    ) -> KdLossOutput
    where
        Tensor<D>: LogitsShape,
    {
        or_panic(self.run(hidden, weight, bias, teacher, targets.into(), true))
    }

    /// The checks of every forward: the layers' shapes and devices, the
    /// teacher's, and the targets against the whole batch (each chunk's loss
    /// checks its own slice again). Returns the hidden states and the teacher
    /// flattened to rows, and the positions.
    pub(crate) fn check_input<const D: usize>(
        &self,
        hidden: Tensor<D>,
        weight: &Tensor<2>,
        bias: Option<&Tensor<1>>,
        teacher: LinearTeacher<D>,
        targets: &Targets,
        values: ValueChecks,
    ) -> Result<(Tensor<2>, LinearTeacher, Vec<usize>, BadPositions), DistillError> {
        let (hidden, positions, bad) = self.check_student(hidden, weight, bias, targets, values)?;
        let teacher = teacher.into_rows(&positions)?;
        let [rows, _] = hidden.dims();
        check_same_shape("teacher rows", &[teacher.rows()], "hidden rows", &[rows])?;
        let vocab = weight.dims()[1];
        let config = &self.kd.config;
        teacher.check(&hidden, vocab, config.vocabulary, config.divergence)?;
        Ok((hidden, teacher, positions, bad))
    }

    /// The student's half of [`check_input`](Self::check_input).
    fn check_student<const D: usize>(
        &self,
        hidden: Tensor<D>,
        weight: &Tensor<2>,
        bias: Option<&Tensor<1>>,
        targets: &Targets,
        values: ValueChecks,
    ) -> Result<(Tensor<2>, Vec<usize>, BadPositions), DistillError> {
        let positions = positions_of(&hidden);
        let hidden = flatten_rows(hidden);
        let [rows, d] = hidden.dims();
        let [d_weight, vocab] = weight.dims();
        check_non_empty("hidden", &[rows, d])?;
        check_device("hidden", &hidden, "weight", weight)?;
        check_same_shape("hidden columns", &[d], "weight rows", &[d_weight])?;
        if let Some(bias) = bias {
            check_device("hidden", &hidden, "bias", bias)?;
            check_same_shape("bias", &bias.dims(), "weight columns", &[vocab])?;
        }
        let ignore_index = self.kd.config.ignore_index;
        let bad = targets.check("hidden", &hidden, vocab, &positions, ignore_index, values)?;
        Ok((hidden, positions, bad))
    }

    /// The hard-label cross-entropy of `hidden · weight + bias` alone,
    /// reduced as `targets` say, chunk by chunk; its value only (no gradient:
    /// for validation).
    pub(crate) fn try_forward_hard<const D: usize>(
        &self,
        hidden: Tensor<D>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        targets: Targets,
    ) -> Result<Tensor<1>, DistillError> {
        if targets.labels.is_none() {
            return Err(DistillError::MissingLabels);
        }
        let values = ValueChecks::for_forward(&hidden.device());
        let (hidden, positions, bad) =
            self.check_student(hidden, &weight, bias.as_ref(), &targets, values)?;
        let autodiff = hidden.is_autodiff();
        let (hidden, weight) = (hidden.without_autodiff(), weight.without_autodiff());
        let bias = bias.map(Tensor::without_autodiff);
        let ignore_index = self.kd.config.ignore_index;
        let keep = targets.kept_rows(ignore_index);
        let weights =
            targets.position_weights(keep.as_ref(), &positions, compute_dtype(hidden.dtype()));
        let [rows, _] = hidden.dims();
        let chunk_size = self.rows_per_chunk(weight.dims()[1]);
        let mut value: Option<Tensor<1>> = None;
        for start in (0..rows).step_by(chunk_size) {
            let end = (start + chunk_size).min(rows);
            let logits = affine(
                hidden.clone().slice(start..end),
                weight.clone(),
                bias.clone(),
            );
            let chunk = targets.chunk(start, end, &weights);
            let loss = try_hard_loss(logits, chunk, ignore_index)?;
            value = Some(accumulate(value, loss));
        }
        let value = bad.reduced(value.expect("rows ≥ 1 (checked)"));
        Ok(if autodiff { value.autodiff() } else { value })
    }

    /// The loss, and with `parts` its two terms (detached; zeros without).
    fn run<const D: usize>(
        &self,
        hidden: Tensor<D>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        teacher: LinearTeacher<D>,
        targets: Targets,
        parts: bool,
    ) -> Result<KdLossOutput, DistillError> {
        let values = ValueChecks::for_forward(&hidden.device());
        let (hidden, teacher, positions, bad) =
            self.check_input(hidden, &weight, bias.as_ref(), teacher, &targets, values)?;
        let [rows, _] = hidden.dims();
        let [_, vocab] = weight.dims();
        let keep = targets.kept_rows(self.kd.config.ignore_index);
        let weights =
            targets.position_weights(keep.as_ref(), &positions, compute_dtype(hidden.dtype()));

        let tracked = hidden.is_tracked() || weight.is_tracked();
        let tracked = tracked || bias.as_ref().is_some_and(Tensor::is_tracked);
        let autodiff = hidden.is_autodiff();
        // Every [chunk, vocab] and [d, vocab] computation runs on the inner
        // backend, outside autodiff's bookkeeping; only each chunk's loss is
        // differentiated, with its logits as the one leaf.
        let (h_all, w) = (
            hidden.clone().without_autodiff(),
            weight.clone().without_autodiff(),
        );
        let b = bias.clone().map(Tensor::without_autodiff);
        let teacher = teacher.without_autodiff();
        // On the CPU backends the layer's gradients are summed in place on the
        // host; elsewhere with tensor ops, chunk by chunk.
        let host_sums = match tracked {
            true => fused::layer_gradients(&h_all, &w, b.as_ref()),
            false => None,
        };
        let mut value: Option<Tensor<1>> = None;
        let (mut soft, mut hard): (Option<Tensor<1>>, Option<Tensor<1>>) = (None, None);
        let mut grad_hidden = Vec::new();
        let mut grad_weight: Option<Tensor<2>> = None;
        let mut grad_bias: Option<Tensor<1>> = None;
        let chunk_size = self.rows_per_chunk(vocab);
        for start in (0..rows).step_by(chunk_size) {
            let end = (start + chunk_size).min(rows);
            let h = h_all.clone().slice(start..end);
            let logits = affine(h.clone(), w.clone(), b.clone());
            let chunk_targets = targets.chunk(start, end, &weights);
            let chunk_teacher = teacher.chunk(start, end);
            let logits = match tracked {
                true => logits.autodiff().require_grad(),
                false => logits,
            };
            let loss = if parts {
                let out =
                    self.kd
                        .try_forward_parts(logits.clone(), chunk_teacher, chunk_targets)?;
                soft = Some(accumulate(soft, out.soft.without_autodiff()));
                hard = Some(accumulate(hard, out.hard.without_autodiff()));
                out.total
            } else {
                self.kd
                    .try_forward(logits.clone(), chunk_teacher, chunk_targets)?
            };
            if tracked {
                let grads = loss.backward();
                let g = logits
                    .grad(&grads)
                    .expect("the chunk's logits require a gradient")
                    .without_autodiff();
                drop((grads, logits));
                if let Some(sums) = &host_sums {
                    sums.add_chunk(start, &h, &g, &w);
                } else {
                    grad_hidden.push(g.clone().matmul(w.clone().transpose()));
                    grad_weight = Some(accumulate(grad_weight, h.transpose().matmul(g.clone())));
                    if b.is_some() {
                        let gb = g.sum_dim(0).squeeze_dim::<1>(0);
                        grad_bias = Some(accumulate(grad_bias, gb));
                    }
                }
            }
            value = Some(accumulate(value, loss.without_autodiff()));
        }
        let value = value.expect("rows ≥ 1 (checked)");
        let lift = |t: Tensor<1>| if autodiff { t.autodiff() } else { t };
        // The chunks' losses are NaN where their labels or teacher rows are
        // bad; this is the whole batch's (a `GlobalCount(0)` with tokens kept).
        let output = |total: Tensor<1>| KdLossOutput {
            soft: bad.reduced(lift(
                soft.unwrap_or_else(|| total.zeros_like().without_autodiff()),
            )),
            hard: bad.reduced(lift(
                hard.unwrap_or_else(|| total.zeros_like().without_autodiff()),
            )),
            total: bad.reduced(total),
        };
        if let Some(sums) = host_sums {
            return Ok(output(sums.attach(value, hidden, weight, bias)));
        }
        let value = lift(value);
        if !tracked {
            return Ok(output(value));
        }
        // The surrogate: value 0, gradient (∂L/∂h, ∂L/∂W, ∂L/∂b), the three
        // constants brought back to autodiff untracked.
        let grad_hidden = Tensor::cat(grad_hidden, 0).autodiff();
        let mut surrogate = (hidden * grad_hidden).sum();
        if let Some(gw) = grad_weight {
            surrogate = surrogate + (weight * gw.autodiff()).sum();
        }
        if let (Some(bias), Some(gb)) = (bias, grad_bias) {
            surrogate = surrogate + (bias * gb.autodiff()).sum();
        }
        Ok(output(value + (surrogate.clone() - surrogate.detach())))
    }
}

/// `total + x` (in place where the backend can), or `x` as the first term.
fn accumulate<const D: usize>(total: Option<Tensor<D>>, x: Tensor<D>) -> Tensor<D> {
    match total {
        Some(total) => total + x,
        None => x,
    }
}

/// `x · w + b`.
pub(crate) fn affine(x: Tensor<2>, w: Tensor<2>, b: Option<Tensor<1>>) -> Tensor<2> {
    let out = x.matmul(w);
    match b {
        Some(b) => out + b.unsqueeze_dim(0),
        None => out,
    }
}
