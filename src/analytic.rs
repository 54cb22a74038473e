//! The KD loss with a closed-form backward.
//!
//! On flex and ndarray with f32 tensors (with this crate's feature for that
//! backend), the per-row soft and hard terms and their gradients with respect to
//! the student logits are computed by the fused CPU kernel ([`crate::kernel`]),
//! run inside burn as a backend extension ([`crate::fused`]) whose single
//! autodiff node hands back the closed-form gradient. Elsewhere `KdLoss` uses
//! burn ops and autodiff: a tensor-op version of this closed form was measured
//! 1.8× slower than autodiff on ndarray (1.41 s vs 0.79 s at 512×32000).

use burn::backend::DeviceOps;
use burn::tensor::{DType, Int, Tensor};

use crate::error::DistillError;
#[cfg(any(feature = "flex", feature = "ndarray"))]
use crate::fused::{FusedSpec, fused_kd_columns};

/// Burn's dispatch id of the flex backend (see `burn_dispatch::DispatchDeviceId`),
/// whose tensors live in host memory: the fused kernel reads them in place and
/// the combiner reads them back as a plain copy.
const FLEX_BACKEND_ID: u16 = 4;
/// Burn's dispatch id of the ndarray backend. Its tensors live in host memory too;
/// the fused kernel reads them in place, but reading one back through burn's API
/// costs about 25 ns per element (51 ms for 64×32000, measured), so the combiner
/// does not.
const NDARRAY_BACKEND_ID: u16 = 6;

/// The loss's hyper-parameters, as the analytic path needs them.
// Only the fused kernel reads them.
#[cfg_attr(not(any(feature = "flex", feature = "ndarray")), allow(dead_code))]
pub(crate) struct AnalyticParams {
    pub temperature: f64,
    /// The temperature of the teacher's values: `T` for logits, 1 for log-probabilities.
    pub teacher_temperature: f64,
    /// T² or 1.
    pub soft_factor: f64,
}

/// Whether `device` is a flex device (with or without autodiff), whose tensors
/// live in host memory and read back cheaply.
pub(crate) fn is_flex(device: &burn::tensor::Device) -> bool {
    backend_id(device) == FLEX_BACKEND_ID
}

/// The dispatch id of the backend behind `device` (autodiff or not).
fn backend_id(device: &burn::tensor::Device) -> u16 {
    device.as_dispatch().id().type_id >> 8
}

/// Whether the fused CPU kernel serves these tensors: f32 on flex with this
/// crate's `flex` feature, or on ndarray with its `ndarray` feature (each
/// compiles the kernel in as a backend extension for that backend).
pub(crate) fn uses_host_kernel(student_logits: &Tensor<2>, teacher_logits: &Tensor<2>) -> bool {
    let backend = backend_id(&student_logits.device());
    let compiled_in = (cfg!(feature = "flex") && backend == FLEX_BACKEND_ID)
        || (cfg!(feature = "ndarray") && backend == NDARRAY_BACKEND_ID);
    compiled_in && student_logits.dtype() == DType::F32 && teacher_logits.dtype() == DType::F32
}

/// The KD terms by the fused kernel (the caller has checked
/// [`uses_host_kernel`]), `[batch, K]`: column `k` is
/// `w_s·soft_row + w_h·hard_row` for `(w_s, w_h) = weights[k]`, per row (not
/// divided by the batch size), each column differentiable with respect to the
/// student through its closed-form gradient.
///
/// Shapes must already be checked; labels are checked here.
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(crate) fn analytic_columns(
    student_logits: &Tensor<2>,
    teacher_logits: &Tensor<2>,
    targets: Option<&Tensor<1, Int>>,
    params: &AnalyticParams,
    weights: &[(f64, f64)],
) -> Result<Tensor<2>, DistillError> {
    let classes = student_logits.dims()[1];
    let labels: Option<Vec<i64>> = targets.map(|t| t.clone().into_data().iter::<i64>().collect());
    if let Some(values) = &labels {
        crate::kd::check_label_values("targets", values, classes)?;
    }
    let spec = FusedSpec {
        temperature: params.temperature,
        teacher_temperature: params.teacher_temperature,
        soft_factor: params.soft_factor,
        targets: labels.map(Into::into),
        weights: weights.to_vec(),
    };
    Ok(fused_kd_columns(student_logits, teacher_logits, spec))
}

/// Without the `flex` and `ndarray` features [`uses_host_kernel`] is always false.
#[cfg(not(any(feature = "flex", feature = "ndarray")))]
pub(crate) fn analytic_columns(
    _: &Tensor<2>,
    _: &Tensor<2>,
    _: Option<&Tensor<1, Int>>,
    _: &AnalyticParams,
    _: &[(f64, f64)],
) -> Result<Tensor<2>, DistillError> {
    unreachable!("the fused kernel needs the `flex` or `ndarray` feature")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// f32 tensors on flex and ndarray (with or without autodiff) take the fused
    /// kernel when this crate's feature for that backend compiles it in;
    /// other dtypes take the tensor-op path.
    #[test]
    #[allow(deprecated)] // Device::ndarray
    fn host_kernel_serves_f32_on_cpu_backends() {
        let cases = [
            (Device::flex(), cfg!(feature = "flex")),
            (Device::flex().autodiff(), cfg!(feature = "flex")),
            (Device::ndarray(), cfg!(feature = "ndarray")),
            (Device::ndarray().autodiff(), cfg!(feature = "ndarray")),
        ];
        for (device, compiled_in) in cases {
            let f32s = Tensor::<2>::zeros([2, 3], &device);
            assert_eq!(uses_host_kernel(&f32s, &f32s), compiled_in, "{device:?}");
            let f64s = Tensor::<2>::zeros([2, 3], (&device, DType::F64));
            assert!(!uses_host_kernel(&f64s, &f64s), "{device:?}");
        }
    }
}
