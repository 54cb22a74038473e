//! Training indices for a specialist: half from its subset, half from the rest.

use burn::tensor::{Int, Tensor};

use super::ClassSubset;
use super::rng::SplitMix64;
use crate::error::DistillError;

/// Draws a specialist's training examples: half whose label is in the subset
/// `S`, half from the rest of the data, shuffled together (the paper's §5).
///
/// ```
/// use burn_distill::specialist::{ClassSubset, SpecialistSampler};
///
/// let labels = [0i64, 1, 2, 3, 0, 1, 2, 3, 0, 1];
/// let subset = ClassSubset::new(vec![0], 4).unwrap();
/// let sampler = SpecialistSampler::new(&labels, &subset).unwrap();
/// let sample = sampler.sample(8, 42);
/// assert_eq!(sample.indices.len(), 8);
/// assert_eq!(sample.from_subset, 4);
/// // Class 0 is 30% of the data but 50% of the training set: odds ×(0.5/0.5)/(0.3/0.7).
/// assert!((sampler.oversampling() - 7.0 / 3.0).abs() < 1e-12);
/// ```
#[derive(Debug, Clone)]
pub struct SpecialistSampler {
    in_subset: Vec<usize>,
    rest: Vec<usize>,
}

/// One draw of training indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialistSample {
    /// Indices into the data set, shuffled.
    pub indices: Vec<usize>,
    /// How many of them have a label in the subset (`n / 2`, rounded down).
    pub from_subset: usize,
}

impl SpecialistSampler {
    /// Splits the example indices of `labels` by membership of their label in `subset`.
    ///
    /// Errors if there is no example inside, or none outside, the subset, or a
    /// label out of range.
    pub fn new(labels: &[i64], subset: &ClassSubset) -> Result<Self, DistillError> {
        crate::check::check_label_values("labels", labels, subset.num_classes())?;
        let (in_subset, rest): (Vec<usize>, Vec<usize>) =
            (0..labels.len()).partition(|&i| subset.contains(labels[i] as usize));
        if in_subset.is_empty() {
            return Err(DistillError::NoExamples {
                side: "in the subset",
            });
        }
        if rest.is_empty() {
            return Err(DistillError::NoExamples {
                side: "outside the subset",
            });
        }
        Ok(Self { in_subset, rest })
    }

    /// [`new`](Self::new) from a label tensor (read back to the host once).
    pub fn from_tensor(labels: Tensor<1, Int>, subset: &ClassSubset) -> Result<Self, DistillError> {
        let labels: Vec<i64> = labels.into_data().iter::<i64>().collect();
        Self::new(&labels, subset)
    }

    /// `n` indices, `n / 2` from the subset and the rest from outside it, each
    /// side drawn without replacement while it lasts (then reshuffled and drawn
    /// again), all shuffled together. Deterministic for a `seed`.
    pub fn sample(&self, n: usize, seed: u64) -> SpecialistSample {
        let mut rng = SplitMix64::new(seed);
        let from_subset = n / 2;
        let mut indices = draw(&self.in_subset, from_subset, &mut rng);
        indices.extend(draw(&self.rest, n - from_subset, &mut rng));
        rng.shuffle(&mut indices);
        SpecialistSample {
            indices,
            from_subset,
        }
    }

    /// The fraction of the data whose label is in the subset.
    pub fn subset_fraction(&self) -> f64 {
        self.in_subset.len() as f64 / (self.in_subset.len() + self.rest.len()) as f64
    }

    /// How much more likely "in the subset" is, relative to "dustbin", in the
    /// half/half training set than in the data: the odds ratio
    /// `(0.5 / 0.5) / (π_S / (1 − π_S)) = (1 − π_S) / π_S`.
    pub fn oversampling(&self) -> f64 {
        let pi = self.subset_fraction();
        (1.0 - pi) / pi
    }

    /// `ln(oversampling)`: add it to the trained specialist's dustbin logit
    /// (see [`Specialist::correct_dustbin`](super::Specialist::correct_dustbin))
    /// so that its outputs reflect the data's proportions again.
    pub fn dustbin_logit_correction(&self) -> f64 {
        self.oversampling().ln()
    }
}

/// `count` items from `pool`: whole shuffled passes, then part of one more.
fn draw(pool: &[usize], count: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut out = Vec::with_capacity(count);
    let mut order = pool.to_vec();
    while out.len() < count {
        rng.shuffle(&mut order);
        let take = (count - out.len()).min(order.len());
        out.extend_from_slice(&order[..take]);
    }
    out
}
