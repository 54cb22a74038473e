//! A model's named intermediate outputs: what a feature term of a
//! [`Distiller`](crate::train::Distiller) reads from the student and the
//! teacher by name.

#[cfg(feature = "train")]
use burn::tensor::Device;
use burn::tensor::Tensor;

use crate::error::DistillError;

/// One intermediate output of a model, of rank 2 to 5: `[batch, d]`
/// embeddings, `[batch, seq, d]` hidden states, `[batch, c, h, w]` feature
/// maps, `[batch, c, t, h, w]` video maps. Made from a tensor with `into()`.
#[derive(Debug, Clone)]
pub enum Feature {
    /// `[batch, d]`, e.g. a pooled embedding.
    Rank2(Tensor<2>),
    /// `[batch, seq, d]`, e.g. a transformer's hidden states.
    Rank3(Tensor<3>),
    /// `[batch, c, h, w]`, e.g. a CNN's feature maps.
    Rank4(Tensor<4>),
    /// `[batch, c, t, h, w]`.
    Rank5(Tensor<5>),
}

macro_rules! feature_from {
    ($($rank:literal => $variant:ident),*) => {
        $(impl From<Tensor<$rank>> for Feature {
            fn from(tensor: Tensor<$rank>) -> Self {
                Self::$variant(tensor)
            }
        })*
    };
}
feature_from!(2 => Rank2, 3 => Rank3, 4 => Rank4, 5 => Rank5);

/// `$body` with `$tensor` bound to the feature's tensor, whatever its rank.
macro_rules! on_tensor {
    ($feature:expr, |$tensor:ident| $body:expr) => {
        match $feature {
            Feature::Rank2($tensor) => $body,
            Feature::Rank3($tensor) => $body,
            Feature::Rank4($tensor) => $body,
            Feature::Rank5($tensor) => $body,
        }
    };
}

impl Feature {
    /// Its shape.
    pub fn dims(&self) -> Vec<usize> {
        on_tensor!(self, |tensor| tensor.dims().to_vec())
    }

    /// The same values without autodiff, on `device`: how a teacher's
    /// features reach the student's loss.
    #[cfg(feature = "train")]
    pub(crate) fn constant_on(self, device: &Device) -> Self {
        let device = device.clone().without_autodiff();
        on_tensor!(self, |tensor| tensor
            .without_autodiff()
            .to_device(&device)
            .into())
    }
}

/// A model's named intermediate outputs for one batch, in the order they
/// were added.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::feature::Features;
///
/// let device = Device::flex();
/// let features = Features::new()
///     .with("block2", Tensor::<4>::zeros([2, 16, 7, 7], &device))
///     .with("pooled", Tensor::<2>::zeros([2, 32], &device));
/// assert_eq!(features.names(), ["block2", "pooled"]);
/// assert_eq!(features.get("block2").unwrap().dims(), [2, 16, 7, 7]);
/// assert!(features.get("block3").is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Features {
    entries: Vec<(String, Feature)>,
}

impl Features {
    /// No features.
    pub fn new() -> Self {
        Self::default()
    }

    /// These features and `feature` under `name` (replacing an earlier one
    /// of that name).
    pub fn with(mut self, name: impl Into<String>, feature: impl Into<Feature>) -> Self {
        let (name, feature) = (name.into(), feature.into());
        match self.entries.iter_mut().find(|(known, _)| *known == name) {
            Some(entry) => entry.1 = feature,
            None => self.entries.push((name, feature)),
        }
        self
    }

    /// The feature named `name`.
    ///
    /// # Errors
    /// [`DistillError::MissingFeature`] naming it and the names there are.
    pub fn get(&self, name: &str) -> Result<&Feature, DistillError> {
        self.entries
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, feature)| feature)
            .ok_or_else(|| DistillError::MissingFeature {
                name: name.to_string(),
                available: self.names().iter().map(|name| name.to_string()).collect(),
            })
    }

    /// The names, in the order they were added.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Every feature without autodiff, on `device`.
    #[cfg(feature = "train")]
    pub(crate) fn constant_on(self, device: &Device) -> Self {
        Self {
            entries: self
                .entries
                .into_iter()
                .map(|(name, feature)| (name, feature.constant_on(device)))
                .collect(),
        }
    }
}
