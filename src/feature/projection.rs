//! A trainable linear map from the student's feature width to the teacher's.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::check::{self, check_non_empty};
use crate::error::{DistillError, or_panic};

/// Configuration of a [`FeatureProjection`].
#[derive(Config, Debug)]
pub struct FeatureProjectionConfig {
    /// The student's feature width: its hidden size, or its channels.
    pub student_width: usize,
    /// The teacher's feature width.
    pub teacher_width: usize,
    /// Whether the map has a bias. Default: true (burn's `Linear`, FitNets'
    /// regressor).
    #[config(default = true)]
    pub bias: bool,
}

impl FeatureProjectionConfig {
    /// The projection, initialised as burn's `LinearConfig` initialises a
    /// `Linear`.
    ///
    /// # Panics
    /// If a width is 0, with the message of the error
    /// [`try_init`](Self::try_init) returns.
    pub fn init(&self, device: &Device) -> FeatureProjection {
        or_panic(self.try_init(device))
    }

    /// [`init`](Self::init), or [`DistillError::InvalidParameter`] naming a
    /// width of 0.
    pub fn try_init(&self, device: &Device) -> Result<FeatureProjection, DistillError> {
        for (argument, value) in [
            ("student_width", self.student_width),
            ("teacher_width", self.teacher_width),
        ] {
            if value == 0 {
                return Err(DistillError::InvalidParameter {
                    argument,
                    value,
                    requirement: "at least 1 feature",
                });
            }
        }
        Ok(FeatureProjection {
            linear: LinearConfig::new(self.student_width, self.teacher_width)
                .with_bias(self.bias)
                .init(device),
        })
    }
}

/// `x W + b` over the student's feature axis, from its width to the
/// teacher's, so that a feature loss compares equal widths where the models'
/// differ: DistillKit's projection of hidden states, FitNets' regressor
/// (Romero et al. 2015, the `r(·; W_r)` of eq. 3). It is a parameter of the
/// student — keep it in the student's module, so that the optimiser trains
/// it and the record saves it with the student; the teacher never sees it.
///
/// # Shapes
/// - input: `[..., student_width]` (hidden states: the feature axis last)
/// - output: `[..., teacher_width]`
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::Targets;
/// use burn_distill::feature::{FeatureProjectionConfig, HiddenStateLossConfig};
///
/// let device = Device::flex();
/// // A 4-wide student, an 8-wide teacher: `[batch, seq, d]` hidden states.
/// let projection = FeatureProjectionConfig::new(4, 8).init(&device);
/// let student = Tensor::<3>::ones([2, 3, 4], &device);
/// let teacher = Tensor::<3>::ones([2, 3, 8], &device);
/// let loss = HiddenStateLossConfig::new().init().forward(
///     projection.forward(student),
///     teacher,
///     Targets::unlabelled(),
/// );
/// assert!(loss.into_scalar::<f32>().is_finite());
/// ```
#[derive(Module, Debug)]
pub struct FeatureProjection {
    /// The map: weight `[student_width, teacher_width]`, bias
    /// `[teacher_width]`. Public, so that a projection can start from known
    /// weights.
    pub linear: Linear,
}

impl FeatureProjection {
    /// The student's width, the input's last axis.
    pub(crate) fn student_width(&self) -> usize {
        self.linear.weight.shape().dims::<2>()[0]
    }

    /// The teacher's width, the output's last axis.
    pub(crate) fn teacher_width(&self) -> usize {
        self.linear.weight.shape().dims::<2>()[1]
    }

    /// The student's features mapped to the teacher's width over their last
    /// axis, in their dtype (f16 and bf16 go through the map in the weight's
    /// dtype).
    ///
    /// # Panics
    /// If the last axis is not `student_width`, or the features are empty,
    /// with [`DistillError::ShapeMismatch`]'s or
    /// [`DistillError::EmptyTensor`]'s message.
    pub fn forward<const D: usize>(&self, student_features: Tensor<D>) -> Tensor<D> {
        or_panic(self.check_width("student_features", &student_features.dims(), D - 1));
        let dtype = student_features.dtype();
        self.linear
            .forward(student_features.cast(self.linear.weight.val().dtype()))
            .cast(dtype)
    }

    /// The student's `[batch, channels, …]` feature maps mapped over their
    /// channel axis (1): a 1×1 convolution, FitNets' regressor for
    /// convolutional features.
    pub(crate) fn forward_channels<const D: usize>(
        &self,
        student_features: Tensor<D>,
    ) -> Tensor<D> {
        let dtype = student_features.dtype();
        let mut shape = student_features.dims();
        let (batch, positions) = (shape[0], shape[2..].iter().product::<usize>());
        let weight = self.linear.weight.val();
        let [student_width, teacher_width] = weight.dims();
        // `Wᵀ X` with the batch's positions side by side, `X` the
        // `[channels, batch · positions]` maps: one matmul. (Moving the
        // channels last for `Linear` and back took 2.2× as long, a batched
        // matmul 1.1×, on flex; `benches/features.rs`, hint.)
        let maps = student_features
            .reshape([batch, student_width, positions])
            .swap_dims(0, 1)
            .reshape([student_width, batch * positions])
            .cast(weight.dtype());
        let mut out = weight
            .transpose()
            .matmul(maps)
            .reshape([teacher_width, batch, positions])
            .swap_dims(0, 1);
        if let Some(bias) = &self.linear.bias {
            out = out + bias.val().reshape([1, teacher_width, 1]);
        }
        shape[1] = teacher_width;
        out.reshape(shape).cast(dtype)
    }

    /// `shape[axis]` is the student's width, and nothing is empty.
    pub(crate) fn check_width(
        &self,
        argument: &'static str,
        shape: &[usize],
        axis: usize,
    ) -> Result<(), DistillError> {
        check_non_empty(argument, shape)?;
        check::check_width(argument, shape[axis], self.student_width())
    }
}
