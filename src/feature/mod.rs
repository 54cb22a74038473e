//! Feature distillation: losses between a student's and a teacher's
//! intermediate outputs, beside (or instead of) the losses on logits. Every
//! loss here detaches the teacher's side, computes f16/bf16 in f32, and
//! refuses bad input with a [`DistillError`] naming the
//! argument.
//!
//! | loss | paper | compares |
//! |---|---|---|
//! | [`HiddenStateLoss`] | DistilBERT (Sanh et al. 2019) | hidden states per position, MSE or cosine, with padding masks and reductions |
//! | [`HintLoss`] | FitNets (Romero et al. 2015) | feature maps after a trainable regressor to the teacher's channels, MSE |
//! | [`AttentionTransferLoss`] | Zagoruyko & Komodakis 2017 | normalised spatial attention maps of feature maps |
//! | [`RkdLoss`] | Park et al. 2019 | the distances and angles between a batch's embeddings |
//!
//! Where a student's width differs from its teacher's, [`FeatureProjection`]
//! is the trainable linear map between them: a parameter of the student,
//! trained and saved with it (DistillKit's projection for hidden states; the
//! regressor inside [`HintLoss`]).

mod attention;
mod hidden_state;
mod hint;
mod named;
mod projection;
mod relation;
mod term;

pub use attention::{
    AttentionDistance, AttentionTransferLoss, AttentionTransferLossConfig, attention_map,
};
pub use hidden_state::{
    HiddenStateDistance, HiddenStateLoss, HiddenStateLossConfig, hidden_state_cosine,
    hidden_state_mse,
};
pub use hint::{HintLoss, HintLossConfig};
pub use named::{Feature, Features};
pub use projection::{FeatureProjection, FeatureProjectionConfig};
pub use relation::{RkdLoss, RkdLossConfig, rkd_angle, rkd_distance};
pub use term::{FeatureLoss, FeatureTerm, FeatureTerms, FeatureValue, NoFeatures};

use crate::check::shape_mismatch;
use crate::error::DistillError;

/// Student and teacher features agree in every axis but the channels (1).
fn check_same_axes_but_channels(student: &[usize], teacher: &[usize]) -> Result<(), DistillError> {
    let but_channels = |shape: &[usize]| {
        let mut shape = shape.to_vec();
        shape.remove(1);
        shape
    };
    if but_channels(student) == but_channels(teacher) {
        Ok(())
    } else {
        Err(shape_mismatch(
            "student_features",
            student,
            "teacher_features",
            teacher,
            "they must have the same shape but for the channels (axis 1)",
        ))
    }
}
