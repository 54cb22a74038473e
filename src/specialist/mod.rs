//! Generalist/specialist ensembles (Hinton, Vinyals & Dean 2015, §5).
//!
//! A generalist model predicts all `C` classes. Specialists each cover a subset
//! `S_m` of classes that the generalist confuses, plus one *dustbin* class for
//! everything else, and are combined with the generalist at inference:
//!
//! 1. [`ConfusableSubsetsConfig`] finds the subsets without labels, by K-means on
//!    the columns of the covariance of the generalist's predicted probabilities
//!    ([`class_covariance`]).
//! 2. [`Specialist`] maps labels to `|S| + 1` outputs (dustbin last), collapses the
//!    generalist's soft targets onto them (for fine-tuning with
//!    [`KdLoss`](crate::KdLoss) and [`TeacherOutput`](crate::TeacherOutput)), and
//!    corrects the dustbin logit for the biased training set.
//! 3. [`SpecialistSampler`] draws the training indices: half from `S`, half from
//!    the rest.
//! 4. [`SpecialistCombiner`] finds, per example, the distribution `q` minimising
//!    `KL(p^g ‖ q) + Σ_{m active} KL(p^m ‖ A_m q)` (eq. 5).

mod combine;
mod combine_host;
mod partition;
pub(crate) mod rng;
mod sampler;
mod targets;

pub use combine::{CombinedPrediction, SpecialistCombiner, SpecialistCombinerConfig};
pub use partition::{ConfusableSubsetsConfig, SubsetOverlap, class_covariance};
pub use sampler::{SpecialistSample, SpecialistSampler};
pub use targets::Specialist;

use crate::error::DistillError;

/// A validated set of class indices: non-empty, each below the number of
/// classes, no duplicates; kept in increasing order.
///
/// ```
/// use burn_distill::specialist::ClassSubset;
///
/// let s = ClassSubset::new(vec![7, 3, 5], 10).unwrap();
/// assert_eq!(s.classes(), &[3, 5, 7]);
/// assert!(ClassSubset::new(vec![3, 3], 10).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClassSubset {
    classes: Vec<usize>,
    num_classes: usize,
}

impl ClassSubset {
    /// Validates `classes` as a subset of `0..num_classes`.
    pub fn new(mut classes: Vec<usize>, num_classes: usize) -> Result<Self, DistillError> {
        if classes.is_empty() {
            return Err(DistillError::EmptySubset);
        }
        if let Some(&class) = classes.iter().find(|&&c| c >= num_classes) {
            return Err(DistillError::ClassOutOfRange { class, num_classes });
        }
        classes.sort_unstable();
        if let Some(pair) = classes.windows(2).find(|w| w[0] == w[1]) {
            return Err(DistillError::DuplicateClass { class: pair[0] });
        }
        Ok(Self {
            classes,
            num_classes,
        })
    }

    /// The classes, in increasing order (`|S|` of them, at least one).
    pub fn classes(&self) -> &[usize] {
        &self.classes
    }

    /// The number of classes `C` of the full problem.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Whether `class` is in the subset.
    pub fn contains(&self, class: usize) -> bool {
        self.classes.binary_search(&class).is_ok()
    }
}
