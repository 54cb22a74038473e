//! The KD loss with a closed-form backward.
//!
//! On flex with f32 tensors, the values of the per-row soft and hard terms and
//! their gradients with respect to the student logits are computed outside the
//! autodiff graph by the fused CPU kernel ([`crate::kernel`]), then tied to the
//! student by [`attach`]: a value-neutral surrogate whose only gradient is the
//! one computed. Elsewhere `KdLoss` uses burn ops and autodiff: a tensor-op
//! version of this closed form was measured 1.8× slower than autodiff on
//! ndarray (1.41 s vs 0.79 s at 512×32000), and no GPU was available to measure.

use burn::backend::DeviceOps;
use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::error::DistillError;
use crate::kernel::{KernelSpec, kd_rows};

/// Burn's dispatch id of the flex backend (see `burn_dispatch::DispatchDeviceId`),
/// whose tensors live in host memory and read back as a plain copy. ndarray's
/// also live there, but reading one back costs about 25 ns per element (51 ms
/// for 64×32000, measured), more than the whole loss by autodiff, so ndarray
/// takes the autodiff path.
const FLEX_BACKEND_ID: u16 = 4;

/// The loss's hyper-parameters, as the analytic path needs them.
pub(crate) struct AnalyticParams {
    pub temperature: f64,
    /// The temperature of the teacher's values: `T` for logits, 1 for log-probabilities.
    pub teacher_temperature: f64,
    /// T² or 1.
    pub soft_factor: f64,
    pub chunk_rows: Option<usize>,
}

/// Per-row values (outside the graph) and the requested gradients.
pub(crate) struct AnalyticTerms {
    /// `soft_factor · KL(p‖q)` per row, `[batch]`.
    pub soft_rows: Tensor<1>,
    /// Cross-entropy per row, `[batch]`, when targets were given.
    pub hard_rows: Option<Tensor<1>>,
    /// One `[batch, classes]` gradient per requested weight pair.
    pub gradients: Vec<Tensor<2>>,
    /// Whether any student logit is `−inf`.
    pub student_has_neg_inf: bool,
}

/// Whether `device` is a flex device (with or without autodiff), whose tensors
/// live in host memory and read back cheaply.
pub(crate) fn is_flex(device: &burn::tensor::Device) -> bool {
    device.as_dispatch().id().type_id >> 8 == FLEX_BACKEND_ID
}

/// Whether the fused CPU kernel serves these tensors.
pub(crate) fn uses_host_kernel(student_logits: &Tensor<2>, teacher_logits: &Tensor<2>) -> bool {
    is_flex(&student_logits.device())
        && student_logits.dtype() == DType::F32
        && teacher_logits.dtype() == DType::F32
}

/// Values and gradients of the KD terms, by the fused kernel (the caller has
/// checked [`uses_host_kernel`]). `gradient_weights[k] = (w_s, w_h)` asks
/// for the gradient `w_s·∂soft_row/∂z + w_h·∂hard_row/∂z` (per row, not divided
/// by the batch size: the caller's reduction does that through autodiff).
///
/// Shapes must already be checked; labels are checked here.
pub(crate) fn analytic_terms(
    student_logits: &Tensor<2>,
    teacher_logits: &Tensor<2>,
    targets: Option<&Tensor<1, Int>>,
    params: &AnalyticParams,
    gradient_weights: &[(f64, f64)],
) -> Result<AnalyticTerms, DistillError> {
    let [batch, classes] = student_logits.dims();
    let chunk = params.chunk_rows.unwrap_or(batch).clamp(1, batch);
    let labels: Option<Vec<i64>> = targets.map(|t| t.clone().into_data().iter::<i64>().collect());
    if let Some(values) = &labels {
        crate::kd::check_label_values("targets", values, classes)?;
    }

    let mut blocks = Vec::new();
    for start in (0..batch).step_by(chunk) {
        let rows = start..(start + chunk).min(batch);
        let slice = |t: &Tensor<2>| {
            if chunk == batch {
                t.clone()
            } else {
                t.clone().slice([rows.clone(), 0..classes])
            }
        };
        let (z, v) = (slice(student_logits), slice(teacher_logits));
        let block_labels = labels.as_ref().map(|l| &l[rows.clone()]);
        let block = host_block(z, v, block_labels, params, gradient_weights);
        blocks.push(block);
    }
    Ok(concat_blocks(blocks))
}

/// Ties per-row `values` to `student_logits` so that the result has those values
/// and, through autodiff, exactly the gradient `gradient` (per row).
///
/// `values + y − detach(y)` with `y = Σ_classes z ⊙ G`: the last two terms cancel
/// exactly in the forward pass, and `∂/∂z` of the sum is `G`. A `−inf` student
/// logit (where `G` is 0) is clamped first, so that `−inf · 0` cannot make NaN.
/// Outside autodiff nothing is attached.
pub(crate) fn attach(
    student_logits: &Tensor<2>,
    values: Tensor<1>,
    gradient: Tensor<2>,
    student_has_neg_inf: bool,
) -> Tensor<1> {
    if !student_logits.is_autodiff() {
        return values;
    }
    let z = if student_has_neg_inf {
        student_logits.clone().clamp_min(f32::MIN)
    } else {
        student_logits.clone()
    };
    let y = (z * gradient).sum_dim(1).squeeze_dim::<1>(1);
    values + y.clone() - y.detach()
}

/// One block of rows through the fused CPU kernel.
fn host_block(
    student_logits: Tensor<2>,
    teacher_logits: Tensor<2>,
    labels: Option<&[i64]>,
    params: &AnalyticParams,
    gradient_weights: &[(f64, f64)],
) -> AnalyticTerms {
    let [rows, classes] = student_logits.dims();
    let device = student_logits.device();
    let z = student_logits.into_data();
    let v = teacher_logits.into_data();
    let spec = KernelSpec {
        classes,
        temperature: params.temperature,
        teacher_temperature: params.teacher_temperature,
        soft_factor: params.soft_factor,
        targets: labels,
        gradient_weights,
    };
    let out = kd_rows(
        z.as_slice::<f32>().expect("f32 student logits"),
        v.as_slice::<f32>().expect("f32 teacher logits"),
        &spec,
    );
    let vector =
        |values: Vec<f32>| Tensor::<1>::from_data(TensorData::new(values, [rows]), &device);
    AnalyticTerms {
        soft_rows: vector(out.soft_rows),
        hard_rows: labels.map(|_| vector(out.hard_rows)),
        gradients: out
            .gradients
            .into_iter()
            .map(|g| Tensor::<2>::from_data(TensorData::new(g, [rows, classes]), &device))
            .collect(),
        student_has_neg_inf: out.student_has_neg_inf,
    }
}

/// Joins the blocks of a chunked computation along the batch.
fn concat_blocks(mut blocks: Vec<AnalyticTerms>) -> AnalyticTerms {
    if blocks.len() == 1 {
        return blocks.pop().expect("one block");
    }
    let n_grads = blocks[0].gradients.len();
    let may_have_neg_inf = blocks.iter().any(|b| b.student_has_neg_inf);
    let has_hard = blocks[0].hard_rows.is_some();
    let mut soft = Vec::new();
    let mut hard = Vec::new();
    let mut grads: Vec<Vec<Tensor<2>>> = (0..n_grads).map(|_| Vec::new()).collect();
    for block in blocks {
        soft.push(block.soft_rows);
        hard.extend(block.hard_rows);
        for (all, g) in grads.iter_mut().zip(block.gradients) {
            all.push(g);
        }
    }
    AnalyticTerms {
        soft_rows: Tensor::cat(soft, 0),
        hard_rows: has_hard.then(|| Tensor::cat(hard, 0)),
        gradients: grads.into_iter().map(|g| Tensor::cat(g, 0)).collect(),
        student_has_neg_inf: may_have_neg_inf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// f32 tensors on flex (with or without autodiff) take the fused kernel;
    /// other dtypes, and ndarray, take the tensor-op path.
    #[test]
    #[allow(deprecated)] // Device::ndarray
    fn host_kernel_serves_f32_on_flex() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            let f32s = Tensor::<2>::zeros([2, 3], &device);
            assert!(uses_host_kernel(&f32s, &f32s), "{device:?}");
            let f64s = Tensor::<2>::zeros([2, 3], (&device, DType::F64));
            assert!(!uses_host_kernel(&f64s, &f64s), "{device:?}");
        }
        for device in [Device::ndarray(), Device::ndarray().autodiff()] {
            let f32s = Tensor::<2>::zeros([2, 3], &device);
            assert!(!uses_host_kernel(&f32s, &f32s), "{device:?}");
        }
    }
}
