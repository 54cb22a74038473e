//! What the user implements for a [`Distiller`](super::Distiller): the
//! models' logits, and inputs the teacher can take a constant copy of.

use burn::module::{Module, ModuleDisplay};
use burn::tensor::{Device, Int, Tensor};

use crate::feature::Features;

/// A model a [`Distiller`](super::Distiller) trains (the student) or learns
/// from (a [`FrozenTeacher`](super::FrozenTeacher)): logits for a batch of
/// inputs.
///
/// Implemented on the model type itself, usually by calling its `forward`.
/// The student and a live teacher take the same [`Input`](Self::Input).
/// (`ModuleDisplay` and `Sync` come with `#[derive(Module)]` on a struct of
/// modules and tensors; the Learner needs them.)
///
/// ```
/// use burn::module::{Module, ModuleDisplay};
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::train::Classifier;
///
/// #[derive(Module, Debug)]
/// struct Net {
///     layer: Linear,
/// }
///
/// impl Classifier for Net {
///     type Input = Tensor<2>;
///     fn logits(&self, inputs: Tensor<2>) -> Tensor<2> {
///         self.layer.forward(inputs)
///     }
/// }
///
/// let device = Device::flex();
/// let net = Net { layer: LinearConfig::new(4, 3).init(&device) };
/// assert_eq!(net.logits(Tensor::zeros([2, 4], &device)).dims(), [2, 3]);
/// ```
pub trait Classifier: Module + ModuleDisplay + Sync + 'static {
    /// The batch's inputs, e.g. `Tensor<3>` images or `Tensor<2, Int>` tokens.
    type Input: DistillInput;

    /// Logits `[batch, classes]` for `inputs`.
    fn logits(&self, inputs: Self::Input) -> Tensor<2>;

    /// The logits and named intermediate outputs for `inputs`, from one
    /// forward: what a [`Distiller`](super::Distiller)'s feature terms read
    /// (see [`Distiller::with_features`](super::Distiller::with_features)).
    /// Called instead of [`logits`](Self::logits) only when the distiller
    /// has feature terms. By default the logits and no features.
    ///
    /// ```
    /// use burn::module::Module;
    /// use burn::nn::{Linear, LinearConfig, Relu};
    /// use burn::tensor::{Device, Tensor};
    /// use burn_distill::feature::Features;
    /// use burn_distill::train::Classifier;
    ///
    /// #[derive(Module, Debug)]
    /// struct Mlp {
    ///     hidden: Linear,
    ///     out: Linear,
    /// }
    ///
    /// impl Classifier for Mlp {
    ///     type Input = Tensor<2>;
    ///     fn logits(&self, inputs: Tensor<2>) -> Tensor<2> {
    ///         self.logits_and_features(inputs).0
    ///     }
    ///     fn logits_and_features(&self, inputs: Tensor<2>) -> (Tensor<2>, Features) {
    ///         let hidden = Relu::new().forward(self.hidden.forward(inputs));
    ///         let logits = self.out.forward(hidden.clone());
    ///         (logits, Features::new().with("hidden", hidden))
    ///     }
    /// }
    ///
    /// let device = Device::flex();
    /// let mlp = Mlp {
    ///     hidden: LinearConfig::new(4, 8).init(&device),
    ///     out: LinearConfig::new(8, 3).init(&device),
    /// };
    /// let (logits, features) = mlp.logits_and_features(Tensor::zeros([2, 4], &device));
    /// assert_eq!(logits.dims(), [2, 3]);
    /// assert_eq!(features.get("hidden").unwrap().dims(), [2, 8]);
    /// ```
    fn logits_and_features(&self, inputs: Self::Input) -> (Tensor<2>, Features) {
        (self.logits(inputs), Features::new())
    }
}

/// Inputs a live teacher can take: a copy without autodiff on the teacher's
/// device, so that its forward records nothing on the student's graph.
///
/// Implemented for every float and integer tensor and for pairs of them
/// (e.g. token ids and an attention mask).
pub trait DistillInput: Clone + Send + Sync + 'static {
    /// This input without autodiff, on `device`.
    fn constant_on(&self, device: &Device) -> Self;
}

impl<const D: usize> DistillInput for Tensor<D> {
    fn constant_on(&self, device: &Device) -> Self {
        self.clone()
            .without_autodiff()
            .to_device(&device.clone().without_autodiff())
    }
}

impl<const D: usize> DistillInput for Tensor<D, Int> {
    fn constant_on(&self, device: &Device) -> Self {
        self.clone()
            .without_autodiff()
            .to_device(&device.clone().without_autodiff())
    }
}

impl<A: DistillInput, B: DistillInput> DistillInput for (A, B) {
    fn constant_on(&self, device: &Device) -> Self {
        (self.0.constant_on(device), self.1.constant_on(device))
    }
}
