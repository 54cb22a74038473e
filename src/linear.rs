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
//! Each chunk is normalised by the rows kept in the whole batch
//! ([`Normalizer::GlobalCount`]), so the chunks' losses and gradients sum to
//! the unchunked loss's. The three gradients are attached to the result by a
//! surrogate whose value is 0 and whose gradient is exactly them:
//! `L + (s − detach(s))` with `s = Σ h ⊙ ∂L/∂h + Σ W ⊙ ∂L/∂W + Σ b ⊙ ∂L/∂b`
//! (constants detached), so autodiff scales them by the incoming gradient and
//! never sees a `[rows, V]` tensor. The teacher is never differentiated.
//!
//! It runs on every device through burn ops (bounded memory everywhere; the
//! fused row kernel where it serves). Peak memory: a few `[chunk_size, V]`
//! buffers, `∂L/∂W` (`[d, V]`, the size of the weight) and `∂L/∂h`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;

use crate::check::{check_non_empty, check_same_shape};
use crate::error::{DistillError, or_panic};
use crate::kd::{KdLoss, KdLossConfig};
use crate::sparse::SparseTeacher;
use crate::targets::{Normalizer, Targets};
use crate::teacher::TeacherOutput;

/// Configuration of a [`FusedLinearKdLoss`].
///
/// ```
/// use burn_distill::{Divergence, FusedLinearKdLossConfig, KdLossConfig};
///
/// let kd = KdLossConfig::new().with_divergence(Divergence::Jsd { beta: 0.5 });
/// let loss = FusedLinearKdLossConfig::new(kd).with_chunk_size(512).init();
/// assert_eq!(loss.chunk_size(), 512);
/// ```
#[derive(Config, Debug)]
pub struct FusedLinearKdLossConfig {
    /// The loss applied to the logits: divergence, temperature, `T²`, weights,
    /// `ignore_index`, teacher truncation.
    pub kd: KdLossConfig,
    /// Rows (tokens) per chunk, ≥ 1: the logits exist `chunk_size` rows at a
    /// time. Default: 1024.
    #[config(default = 1024)]
    pub chunk_size: usize,
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
        if self.chunk_size == 0 {
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

/// The teacher of a [`FusedLinearKdLoss`].
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per loss call, moved, as `TeacherOutput`
pub enum LinearTeacher {
    /// The teacher's last hidden states `[rows, d_teacher]` and output layer
    /// (`weight` `[d_teacher, vocab]`, as burn's `Linear` holds it, and an
    /// optional `bias` `[vocab]`): its logits are made chunk by chunk too.
    Hidden {
        /// `[rows, d_teacher]`.
        hidden: Tensor<2>,
        /// `[d_teacher, vocab]`.
        weight: Tensor<2>,
        /// `[vocab]`.
        bias: Option<Tensor<1>>,
    },
    /// The teacher's logits `[rows, vocab]`, sliced per chunk.
    Logits(Tensor<2>),
    /// A stored top-k teacher, sliced per chunk.
    TopK(SparseTeacher),
}

impl LinearTeacher {
    /// The teacher's hidden states and a burn [`Linear`] output layer.
    pub fn from_linear(hidden: Tensor<2>, output: &Linear) -> Self {
        Self::Hidden {
            hidden,
            weight: output.weight.val(),
            bias: output.bias.as_ref().map(|b| b.val()),
        }
    }

    /// Rows given.
    fn rows(&self) -> usize {
        match self {
            Self::Hidden { hidden, .. } => hidden.dims()[0],
            Self::Logits(logits) => logits.dims()[0],
            Self::TopK(sparse) => sparse.indices().dims()[0],
        }
    }

    /// Checks the output layer's shapes.
    fn check(&self) -> Result<(), DistillError> {
        if let Self::Hidden {
            hidden,
            weight,
            bias,
        } = self
        {
            let (h, w) = (hidden.dims(), weight.dims());
            check_same_shape(
                "teacher.hidden columns",
                &[h[1]],
                "teacher.weight rows",
                &[w[0]],
            )?;
            if let Some(bias) = bias {
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
            Self::TopK(sparse) => Self::TopK(SparseTeacher::new(
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
            Self::TopK(sparse) => TeacherOutput::TopK(SparseTeacher::new(
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
/// - `hidden`: `[rows, d]`; `weight`: `[d, vocab]`; `bias`: `[vocab]`
/// - the teacher: see [`LinearTeacher`], `rows` rows
/// - `targets`: as for [`KdLoss`]
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
/// let loss = FusedLinearKdLossConfig::new(KdLossConfig::new()).with_chunk_size(4).init();
/// let value = loss.forward(hidden.clone(), weight.clone(), None, LinearTeacher::Logits(teacher), labels);
/// let grads = value.backward();
/// assert!(hidden.grad(&grads).is_some() && weight.grad(&grads).is_some());
/// ```
#[derive(Module, Debug)]
pub struct FusedLinearKdLoss {
    kd: KdLoss,
    chunk_size: usize,
}

impl FusedLinearKdLoss {
    /// Rows per chunk.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// The loss applied to each chunk's logits.
    pub fn kd(&self) -> &KdLoss {
        &self.kd
    }

    /// [`forward`](Self::forward) with the student's output layer as a burn [`Linear`].
    pub fn forward_linear(
        &self,
        hidden: Tensor<2>,
        output: &Linear,
        teacher: LinearTeacher,
        targets: impl Into<Targets>,
    ) -> Tensor<1> {
        let bias = output.bias.as_ref().map(|b| b.val());
        self.forward(hidden, output.weight.val(), bias, teacher, targets)
    }

    /// The KD loss of `hidden · weight + bias` against the teacher, averaged
    /// as [`KdLoss::forward`] averages it, `[1]`; differentiable with respect
    /// to `hidden`, `weight` and `bias`.
    ///
    /// # Panics
    /// On bad input, with the message of [`try_forward`](Self::try_forward).
    pub fn forward(
        &self,
        hidden: Tensor<2>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        teacher: LinearTeacher,
        targets: impl Into<Targets>,
    ) -> Tensor<1> {
        or_panic(self.try_forward(hidden, weight, bias, teacher, targets.into()))
    }

    /// Fallible [`forward`](Self::forward): the shapes of the layers, and every
    /// check of [`KdLoss::check`] on each chunk (an error stops at the first
    /// chunk that has it).
    pub fn try_forward(
        &self,
        hidden: Tensor<2>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        teacher: LinearTeacher,
        targets: Targets,
    ) -> Result<Tensor<1>, DistillError> {
        let [rows, d] = hidden.dims();
        let [d_weight, vocab] = weight.dims();
        check_non_empty("hidden", &[rows, d])?;
        check_same_shape("hidden columns", &[d], "weight rows", &[d_weight])?;
        if let Some(bias) = &bias {
            check_same_shape("bias", &bias.dims(), "weight columns", &[vocab])?;
        }
        check_same_shape("teacher rows", &[teacher.rows()], "hidden rows", &[rows])?;
        teacher.check()?;
        let kept = match targets.normalizer {
            Normalizer::GlobalCount(count) => count,
            Normalizer::KeptRows => match targets.kept_rows(self.kd.ignore_index()) {
                Some(keep) => keep.int().sum().into_scalar::<i64>() as usize,
                None => rows,
            },
        };

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
        let mut value: Option<Tensor<1>> = None;
        let mut grad_hidden = Vec::new();
        let mut grad_weight: Option<Tensor<2>> = None;
        let mut grad_bias: Option<Tensor<1>> = None;
        for start in (0..rows).step_by(self.chunk_size) {
            let end = (start + self.chunk_size).min(rows);
            let h = h_all.clone().slice(start..end);
            let logits = affine(h.clone(), w.clone(), b.clone());
            let chunk_targets = chunk_targets(&targets, start, end, kept);
            let chunk_teacher = teacher.chunk(start, end);
            let logits = match tracked {
                true => logits.autodiff().require_grad(),
                false => logits,
            };
            let loss = self
                .kd
                .try_forward(logits.clone(), chunk_teacher, chunk_targets)?;
            if tracked {
                let grads = loss.backward();
                let g = logits
                    .grad(&grads)
                    .expect("the chunk's logits require a gradient")
                    .without_autodiff();
                grad_hidden.push(g.clone().matmul(w.clone().transpose()));
                grad_weight = Some(accumulate(grad_weight, h.transpose().matmul(g.clone())));
                if b.is_some() {
                    let gb = g.sum_dim(0).squeeze_dim::<1>(0);
                    grad_bias = Some(accumulate(grad_bias, gb));
                }
            }
            value = Some(accumulate(value, loss.without_autodiff()));
        }
        let value = value.expect("rows ≥ 1 (checked)");
        let value = if autodiff { value.autodiff() } else { value };
        if !tracked {
            return Ok(value);
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
        Ok(value + (surrogate.clone() - surrogate.detach()))
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
fn affine(x: Tensor<2>, w: Tensor<2>, b: Option<Tensor<1>>) -> Tensor<2> {
    let out = x.matmul(w);
    match b {
        Some(b) => out + b.unsqueeze_dim(0),
        None => out,
    }
}

/// The targets of rows `start..end`, normalised by the whole batch's `kept` rows.
fn chunk_targets(targets: &Targets, start: usize, end: usize, kept: usize) -> Targets {
    let mut chunk = match targets.labels() {
        Some(labels) => Targets::new(labels.clone().slice(start..end)),
        None => Targets::unlabelled(),
    };
    if let Some(keep) = targets.keep_rows() {
        chunk = chunk.with_keep_rows(keep.clone().slice(start..end));
    }
    chunk.with_normalizer(Normalizer::GlobalCount(kept))
}
