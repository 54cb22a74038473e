//! # burn-distill
//!
//! Knowledge-distillation losses for [burn](https://burn.dev): temperature softmax,
//! the Hinton KD loss with its `T²` scaling and any of eight divergences
//! ([`Divergence`]), decoupled KD, top-k teachers, teachers with another
//! vocabulary ([`VocabularyRule`], [`Divergence::Uld`]) or tokenizer
//! ([`gold`]), ensembles, hidden-state (feature) losses and the paper's
//! generalist/specialist machinery. At its core are small pure functions over
//! `Tensor`s (the reference), with [`Config`](burn::config::Config)/[`Module`](burn::module::Module)
//! losses in burn's style on top, and a fused CPU kernel for every divergence, the
//! top-k teacher and DKD. With the `train` feature (default), `train::Distiller`
//! runs the KD loss inside burn-train's `Learner`, the teacher frozen.
//!
//! It chooses no device: every function runs on the device of the tensors it is
//! given (flex, ndarray, wgpu, cuda, …), with or without autodiff.
//!
//! ## Conventions
//! - The soft loss is the KL divergence `KL(p‖q)` of the student `q` from the teacher
//!   `p`, not the soft cross-entropy: it is 0 when the student matches the teacher.
//! - Losses are averaged over the batch ("batchmean": sum over classes, mean over rows).
//! - The soft term is multiplied by `T²` (configurable) so its gradient's size does
//!   not depend on the temperature.
//! - Arguments are named `student_*` and `teacher_*`; the teacher never gets a gradient.
//! - Bad input is reported before any tensor operation, as a [`DistillError`]
//!   (see Checks below). One rule: a loss's `forward`, `forward_parts` and
//!   `forward_no_reduction` and a config's `init` panic with the error's
//!   message, which the loss's `check` and the config's `try_init` return;
//!   every other function that can fail returns `Result<_, DistillError>`.
//! - Every forward takes `(student_logits, teacher, targets)`: the teacher as a
//!   [`TeacherOutput`] (or logits), the targets as [`Targets`] (or labels), which
//!   also carry a padding mask and the [`Reduction`].
//! - Logits are `[rows, classes]` or a language model's `[batch, seq, vocab]`
//!   ([`LogitsShape`]); labels and masks have their shape without the class
//!   axis. Masks follow burn: in a padding mask, `true` is padding.
//!
//! ## Checks
//! Every loss checks its input in two kinds, and `check` (on [`KdLoss`],
//! [`DkdLoss`], [`FusedLinearKdLoss`], and [`DistillLoss`] for all three)
//! makes both without computing the loss, returning the [`DistillError`]:
//! - **Shapes, dtypes, devices and settings**, known without reading a
//!   tensor: every forward checks them and panics with the error's message
//!   (as burn-nn's losses do).
//! - **Values** — labels in `0..classes` (or `ignore_index`), top-k indices in
//!   range and distinct in each row, a top-k row's stored mass `Σ exp(log_probs)`
//!   at most 1 and not NaN, probabilities not negative or NaN, a
//!   [`Reduction::GlobalCount`] of 0 with tokens kept. Checking them needs the values on the host. Where the
//!   tensors are in host memory (flex, ndarray) that is a copy, and a forward
//!   reads them and panics as above. On a device backend (wgpu, CUDA, …) it
//!   would make every training step wait for the device, so a forward reads
//!   nothing there ([`diagnostics::device_reads`] counts it: 0 per forward):
//!   it finds bad values on the device instead, and the loss is NaN at each bad
//!   position (`forward_no_reduction`) and as a whole (the reduced loss, even
//!   where the bad position is padding), with finite gradients. PyTorch's losses do
//!   the same on CUDA, by a device-side assert. Call `check` on a batch (it
//!   reads) to have the error name the argument and the value.
//!
//! ## Example
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use burn_distill::KdLossConfig;
//!
//! let device = Device::flex().autodiff();
//! let student = Tensor::<2>::from_floats([[0.2, 1.0, -0.5]], &device).require_grad();
//! let teacher = Tensor::<2>::from_floats([[0.0, 3.0, -1.0]], &device);
//! let labels = Tensor::<1, Int>::from_ints([1], &device);
//!
//! let kd = KdLossConfig::new().with_temperature(4.0).init();
//! let parts = kd.forward_parts(student.clone(), teacher, labels);
//! let grads = parts.total.backward();
//! assert!(student.grad(&grads).is_some());
//! ```
//!
//! Reference: G. Hinton, O. Vinyals, J. Dean, *Distilling the Knowledge in a Neural
//! Network*, NIPS 2014 Deep Learning Workshop, arXiv:1503.02531 (2015).

mod backend;
mod check;
pub mod diagnostics;
mod display;
pub mod divergence;
pub mod dkd;
pub mod ensemble;
mod error;
pub mod feature;
mod fused;
pub mod gold;
mod kd;
pub mod linear;
pub mod lm;
mod loss;
mod reduction;
mod shape;
pub mod sparse;
pub mod specialist;
#[cfg(feature = "store")]
pub mod store;
mod targets;
mod teacher;
pub mod temperature;
mod vocabulary;
// The selection is built everywhere; only the CPU backends and the store run it.
#[cfg_attr(
    not(any(feature = "flex", feature = "ndarray", feature = "store")),
    allow(dead_code)
)]
mod top_k;
#[cfg(feature = "train")]
pub mod train;

pub use divergence::Divergence;
pub use dkd::{DkdLoss, DkdLossConfig, DkdLossOutput};
pub use error::{DistillError, IoSource};
pub use kd::{KdLoss, KdLossConfig, KdLossOutput};
pub use linear::{FusedLinearKdLoss, FusedLinearKdLossConfig, LinearTeacher};
pub use loss::{DistillLoss, LinearStudent};
pub use reduction::Reduction;
pub use shape::LogitsShape;
pub use sparse::SparseTeacher;
pub use targets::Targets;
pub use teacher::TeacherOutput;
pub use vocabulary::VocabularyRule;
