//! FitNets' hint loss: the student's feature maps, through a trainable
//! regressor to the teacher's channels, against the teacher's.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::check_same_axes_but_channels;
use super::projection::{FeatureProjection, FeatureProjectionConfig};
use crate::check::{check_device, check_non_empty, check_rank, check_width};
use crate::error::{DistillError, or_panic};
use crate::temperature::compute_dtype;

/// Configuration of a [`HintLoss`].
#[derive(Config, Debug)]
pub struct HintLossConfig {
    /// The student's channels at its guided layer (axis 1 of its features).
    pub student_channels: usize,
    /// The teacher's channels at its hint layer.
    pub teacher_channels: usize,
    /// Whether the regressor has a bias. Default: true.
    #[config(default = true)]
    pub bias: bool,
}

impl HintLossConfig {
    /// The loss with a freshly initialised regressor (as burn's `Linear`).
    ///
    /// # Panics
    /// If a channel count is 0, with the message of the error
    /// [`try_init`](Self::try_init) returns.
    pub fn init(&self, device: &Device) -> HintLoss {
        or_panic(self.try_init(device))
    }

    /// [`init`](Self::init), or [`DistillError::InvalidParameter`] naming a
    /// channel count of 0 (as `student_width` / `teacher_width`).
    pub fn try_init(&self, device: &Device) -> Result<HintLoss, DistillError> {
        Ok(HintLoss {
            regressor: FeatureProjectionConfig::new(self.student_channels, self.teacher_channels)
                .with_bias(self.bias)
                .try_init(device)?,
        })
    }
}

/// FitNets' hint loss (Romero et al. 2015, eq. 3): the mean squared
/// difference between the teacher's hint-layer features `u_h` and the
/// student's guided-layer features through a trainable regressor `r`,
///
/// `L = mean over every element of (r(v_g) − u_h)²`,
///
/// the paper's `½‖u_h − r(v_g)‖²` up to a constant factor, in the form
/// torchdistill's `FitNetsLoss` and mdistiller compute (an MSE with a mean
/// reduction). The regressor is a 1×1 convolution — a linear map over the
/// channel axis at every spatial position — from the student's channels to
/// the teacher's; it is a parameter of the student (keep this loss inside the
/// student's module, so that the optimiser trains the regressor and the
/// record saves it). The teacher's features get no gradient.
///
/// For a transformer's `[batch, seq, d]` hidden states, whose features are
/// the last axis, use [`FeatureProjection`] and a
/// [`HiddenStateLoss`](super::HiddenStateLoss) instead.
///
/// # Shapes
/// - `student_features`: `[batch, student_channels, …]` (e.g. a CNN's
///   `[batch, c, h, w]`, or `[batch, c]`), any float dtype (f16 and bf16 are
///   computed in f32 and the result given back in their dtype)
/// - `teacher_features`: `[batch, teacher_channels, …]`, the student's other
///   axes, on the same device
/// - output: `[1]`, or `[batch]` (each example's mean) without reduction
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::feature::HintLossConfig;
///
/// let device = Device::flex();
/// // A student with 4 channels, a teacher with 8, both 5×5 maps.
/// let hint = HintLossConfig::new(4, 8).init(&device);
/// let student = Tensor::<4>::zeros([2, 4, 5, 5], &device);
/// let teacher = Tensor::<4>::ones([2, 8, 5, 5], &device);
/// // Zero features meet the regressor's bias alone.
/// let loss = hint.forward(student, teacher);
/// assert!(loss.into_scalar::<f32>().is_finite());
/// ```
#[derive(Module, Debug)]
pub struct HintLoss {
    /// The regressor from the student's channels to the teacher's.
    pub regressor: FeatureProjection,
}

impl HintLoss {
    /// The mean over every element, `[1]`.
    ///
    /// # Panics
    /// On bad input, with the message of the error [`check`](Self::check)
    /// returns.
    pub fn forward<const D: usize>(
        &self,
        student_features: Tensor<D>,
        teacher_features: Tensor<D>,
    ) -> Tensor<1> {
        let dtype = student_features.dtype();
        let per_example = self.per_example(student_features, teacher_features);
        per_example.mean().cast(dtype)
    }

    /// Each example's mean over its elements, `[batch]`.
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn forward_no_reduction<const D: usize>(
        &self,
        student_features: Tensor<D>,
        teacher_features: Tensor<D>,
    ) -> Tensor<1> {
        let dtype = student_features.dtype();
        self.per_example(student_features, teacher_features)
            .cast(dtype)
    }

    /// Checks the input as the forwards do: a rank of at least 2, the
    /// channels against the regressor's widths, the other axes equal, nothing
    /// empty, one device.
    pub fn check<const D: usize>(
        &self,
        student_features: &Tensor<D>,
        teacher_features: &Tensor<D>,
    ) -> Result<(), DistillError> {
        check_rank(
            "student_features",
            D,
            2,
            "a rank of at least 2: [batch, channels, …]",
        )?;
        let (student, teacher) = (student_features.dims(), teacher_features.dims());
        self.regressor
            .check_width("student_features", &student, 1)?;
        check_non_empty("teacher_features", &teacher)?;
        check_width(
            "teacher_features",
            teacher[1],
            self.regressor.teacher_width(),
        )?;
        check_same_axes_but_channels(&student, &teacher)?;
        check_device(
            "student_features",
            student_features,
            "teacher_features",
            teacher_features,
        )
    }

    /// `[batch]` means, in the compute dtype, after the checks.
    fn per_example<const D: usize>(
        &self,
        student_features: Tensor<D>,
        teacher_features: Tensor<D>,
    ) -> Tensor<1> {
        or_panic(self.check(&student_features, &teacher_features));
        let compute = compute_dtype(student_features.dtype());
        let batch = student_features.dims()[0];
        let regressed = self
            .regressor
            .forward_channels(student_features.cast(compute));
        let teacher = teacher_features.detach().cast(compute);
        (regressed - teacher)
            .flatten::<2>(1, D - 1)
            .powi_scalar(2)
            .mean_dim(1)
            .reshape([batch])
    }
}
