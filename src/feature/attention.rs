//! Attention transfer: the student's spatial attention maps against the
//! teacher's.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::tensor::Tensor;

use super::check_same_axes_but_channels;
use crate::check::{check_device, check_non_empty, check_rank};
use crate::display::one_line_display;
use crate::error::{DistillError, or_panic};
use crate::temperature::compute_dtype;

/// The distance between two normalised attention maps of an
/// [`AttentionTransferLoss`].
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum AttentionDistance {
    /// `mean_j (â_s,j − â_t,j)²` over the spatial positions: the authors'
    /// code (`at_loss`), torchdistill's `ATLoss` with `mode="code"`.
    MeanSquared,
    /// `‖â_s − â_t‖₂`: the paper's eq. 2 with `p = 2`, torchdistill's
    /// `ATLoss` with `mode="paper"`.
    Norm,
}

/// Configuration of an [`AttentionTransferLoss`].
#[derive(Config, Debug)]
pub struct AttentionTransferLossConfig {
    /// The distance between the maps. Default: the authors' code's mean
    /// square, as torchdistill defaults to.
    #[config(default = "AttentionDistance::MeanSquared")]
    pub distance: AttentionDistance,
}

impl AttentionTransferLossConfig {
    /// The loss.
    pub fn init(&self) -> AttentionTransferLoss {
        AttentionTransferLoss {
            distance: self.distance,
        }
    }
}

/// Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to
/// Attention", eq. 2, `p = 2`): each example's spatial attention map
/// `a = mean_c f_c²` over the channels, normalised to unit length
/// ([`attention_map`]), compared between student and teacher. Student and
/// teacher may have different channel counts; their batch and spatial axes
/// must agree. The paper's total adds `β/2 · Σ_j` of this loss over the
/// chosen layer pairs `j` (`β = 1000` there) to the student's cross-entropy:
/// weight and sum the pairs as that says. The teacher's maps get no gradient.
///
/// # Shapes
/// - `student_features`: `[batch, channels, spatial…]` (a CNN's
///   `[batch, c, h, w]`), any float dtype (f16 and bf16 are computed in f32
///   and the result given back in their dtype)
/// - `teacher_features`: `[batch, teacher_channels, spatial…]`, the same
///   batch and spatial axes, on the same device
/// - output: `[1]`, the mean over the batch, or `[batch]` without reduction
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::feature::AttentionTransferLossConfig;
///
/// let device = Device::flex();
/// // 16 student channels, 64 teacher channels, the same 8×8 maps.
/// let student = Tensor::<4>::ones([2, 16, 8, 8], &device);
/// let teacher = Tensor::<4>::ones([2, 64, 8, 8], &device).mul_scalar(3.0);
/// // Uniform maps normalise to the same map, whatever their scale: 0.
/// let loss = AttentionTransferLossConfig::new().init().forward(student, teacher);
/// assert!(loss.into_scalar::<f32>().abs() < 1e-7);
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct AttentionTransferLoss {
    #[module(skip)]
    distance: AttentionDistance,
}

impl ModuleDisplay for AttentionTransferLoss {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        one_line_display()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("distance", &format!("{:?}", self.distance))
            .optional()
    }
}

/// `max(‖a‖, ε)` of the normalisation, PyTorch's `F.normalize` default.
const NORMALIZE_EPSILON: f64 = 1e-12;

impl AttentionTransferLoss {
    /// The distance between the maps.
    pub fn distance(&self) -> AttentionDistance {
        self.distance
    }

    /// The mean over the batch, `[1]`.
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
        self.per_example(student_features, teacher_features)
            .mean()
            .cast(dtype)
    }

    /// Each example's distance, `[batch]`.
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

    /// Checks the input as the forwards do: a rank of at least 3, the batch
    /// and spatial axes equal, nothing empty, one device.
    pub fn check<const D: usize>(
        &self,
        student_features: &Tensor<D>,
        teacher_features: &Tensor<D>,
    ) -> Result<(), DistillError> {
        check_feature_maps(student_features, teacher_features)
    }

    fn per_example<const D: usize>(
        &self,
        student_features: Tensor<D>,
        teacher_features: Tensor<D>,
    ) -> Tensor<1> {
        or_panic(self.check(&student_features, &teacher_features));
        let batch = student_features.dims()[0];
        let difference = maps(student_features) - maps(teacher_features.detach());
        let squares = difference.powi_scalar(2);
        match self.distance {
            AttentionDistance::MeanSquared => squares.mean_dim(1),
            // The norm's gradient is 0/0 where the maps agree exactly: there
            // the value is set to 0 and its gradient with it (PyTorch's norm
            // gives 0 there too); the floor keeps the masked-out branch finite.
            AttentionDistance::Norm => {
                let sum = squares.sum_dim(1);
                let agree = sum.clone().equal_elem(0.0);
                sum.clamp_min(NORMALIZE_EPSILON * NORMALIZE_EPSILON)
                    .sqrt()
                    .mask_fill(agree, 0.0)
            }
        }
        .reshape([batch])
    }
}

/// The normalised spatial attention map of `[batch, channels, spatial…]`
/// feature maps, `[batch, positions]` (the spatial axes flattened):
/// `a = mean_c f_c²`, then `a / max(‖a‖₂, 1e-12)` per example — the authors'
/// `at(x)` and torchdistill's `attention_transfer`, PyTorch's
/// `F.normalize(x.pow(2).mean(1).flatten(1))`. The reference form of
/// [`AttentionTransferLoss`]; computed in f32 for f16 and bf16, and given
/// back in the features' dtype.
///
/// # Panics
/// If the rank is below 3 or the features are empty, naming the argument.
pub fn attention_map<const D: usize>(features: Tensor<D>) -> Tensor<2> {
    or_panic(check_map_rank("features", &features));
    let dtype = features.dtype();
    maps(features).cast(dtype)
}

/// `[batch, positions]` normalised maps in the compute dtype.
fn maps<const D: usize>(features: Tensor<D>) -> Tensor<2> {
    let compute = compute_dtype(features.dtype());
    let features = features.cast(compute);
    let dims = features.dims();
    let (batch, positions) = (dims[0], dims[2..].iter().product::<usize>());
    let map = features
        .powi_scalar(2)
        .mean_dim(1)
        .reshape([batch, positions]);
    // `√max(‖a‖², ε²)` = `max(‖a‖, ε)`, floored before the square root so
    // that none is taken at 0 (an infinite gradient there, and 0 · ∞ = NaN).
    let norm = map
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .clamp_min(NORMALIZE_EPSILON * NORMALIZE_EPSILON)
        .sqrt();
    map / norm
}

/// Rank at least 3, nothing empty, the batch and spatial axes equal, one
/// device.
fn check_feature_maps<const D: usize>(
    student_features: &Tensor<D>,
    teacher_features: &Tensor<D>,
) -> Result<(), DistillError> {
    check_map_rank("student_features", student_features)?;
    check_non_empty("teacher_features", &teacher_features.dims())?;
    check_same_axes_but_channels(&student_features.dims(), &teacher_features.dims())?;
    check_device(
        "student_features",
        student_features,
        "teacher_features",
        teacher_features,
    )
}

/// `[batch, channels, spatial…]`: a rank of at least 3, nothing empty.
fn check_map_rank<const D: usize>(
    argument: &'static str,
    features: &Tensor<D>,
) -> Result<(), DistillError> {
    check_rank(
        argument,
        D,
        3,
        "a rank of at least 3: [batch, channels, spatial…]",
    )?;
    check_non_empty(argument, &features.dims())
}
