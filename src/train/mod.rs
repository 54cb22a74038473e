//! Distillation inside burn's `Learner` (feature `train`).
//!
//! A [`Distiller`] is a `#[derive(Module)]` that holds a student, a teacher
//! source and a [`KdLoss`](crate::KdLoss), and implements burn-train's
//! `TrainStep` and `InferenceStep` for [`ClassificationBatch`]es: give it to
//! `Learner::new` and `SupervisedTraining::launch` and it distils with no
//! hand-written loop. [`LmDistiller`] is its twin for causal language
//! models over [`TokenBatch`](crate::lm::TokenBatch)es: micro-batched with
//! the whole batch's normaliser, and on-policy (GKD) when asked.
//!
//! What the user writes: [`Classifier`] for the student's and the teacher's
//! model types (one method, their logits; a second,
//! [`logits_and_features`](Classifier::logits_and_features), for
//! [feature terms](Distiller::with_features)). It is a trait rather than closures
//! because the Learner clones its model into worker threads, forks it to
//! devices and saves it in checkpoints: the distiller must be a `Module`, and
//! a closure can be none of these.
//!
//! # The teacher
//! - [`FrozenTeacher`] holds a live teacher model in evaluation mode
//!   (`Module::valid`): it runs without autodiff on inputs moved off autodiff,
//!   so its forward records no graph node, it gets no gradient, and the
//!   optimizer never sees its parameters.
//! - [`StoredTeacher`] (feature `store`) reads the teacher's top-k outputs
//!   from a [`TeacherStore`](crate::store::TeacherStore) by the batch's
//!   example indices: no teacher runs at all.
//!
//! The teacher is not a parameter of the distiller: `fork`, `to_device`,
//! records and checkpoints carry the student only. So multi-device strategies
//! (which fork the model to each device on every step) do not copy the
//! teacher; it runs where it was made, on inputs moved there, and its logits
//! come back to each student's device. With a teacher copy per device made
//! once ([`FrozenTeacher::with_replicas`]) each worker uses the copy on its
//! own device instead.
//!
//! # Metrics
//! [`DistillOutput`] adapts to burn-train's `LossMetric` (the trained total),
//! `AccuracyMetric` and `TopKAccuracyMetric` (the student against the labels:
//! the task, not the loss), and to this module's [`DistillLossMetric`] (the
//! soft and hard terms separately), [`FeatureLossMetric`] (each feature
//! term) and [`AgreementMetric`] (student–teacher top-1 agreement).

mod batch;
mod classifier;
mod distiller;
mod lm_distiller;
mod lm_loss;
mod lm_output;
mod metrics;
mod output;
mod teacher;

pub use batch::ClassificationBatch;
pub use classifier::{Classifier, DistillInput};
pub use distiller::Distiller;
pub use lm_distiller::{Completions, LmDistiller};
pub use lm_loss::LmLoss;
pub use lm_output::LmOutput;
pub use metrics::{
    AgreementInput, AgreementMetric, DistillLossInput, DistillLossMetric, FeatureLossInput,
    FeatureLossMetric,
};
pub use output::DistillOutput;
#[cfg(feature = "store")]
pub use teacher::StoredTeacher;
pub use teacher::{FrozenTeacher, LmTeacherSource, TeacherSource};
