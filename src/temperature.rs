//! Temperature-scaled softmax and log-softmax (Hinton, Vinyals & Dean 2015, eq. 1).
//!
//! `q_i = exp(z_i / T) / Σ_j exp(z_j / T)`. `T = 1` is the ordinary softmax;
//! a larger `T` gives a softer distribution with the same order of classes.
//!
//! Both functions work in log space — `z/T − max(z/T) − log Σ exp(z/T − max(z/T))` —
//! so that f32 logits up to `|z| = 1e4` at `T = 0.05` (a scaled logit of 2·10⁵)
//! neither overflow nor turn into NaN. A logit of `−inf` is a masked class: it
//! gets probability exactly 0 (log-probability `−inf`), and the other classes are
//! unaffected. Every row along `dim` needs at least one finite logit; a row of
//! only `−inf` has no distribution and yields NaN.

use burn::tensor::{DType, Tensor};

use crate::check::{check_dim, check_temperature};
use crate::error::DistillError;

/// `log_softmax(logits / temperature)` along `dim`, computed stably.
///
/// # Errors
/// [`DistillError::InvalidTemperature`] unless `temperature` is finite and > 0,
/// [`DistillError::InvalidDim`] if `dim >= D`.
///
/// # Shapes
/// - `logits`: any shape; output: the same shape.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::temperature::log_softmax;
///
/// let device = Device::flex();
/// let z = Tensor::<2>::from_floats([[2.0, 0.0]], &device);
/// let log_q = log_softmax(z, 2.0, 1)?.into_data().to_vec::<f32>().unwrap();
/// // softmax([1, 0]) = [e/(e+1), 1/(e+1)]
/// let e = std::f32::consts::E;
/// assert!((log_q[0] - (e / (e + 1.0)).ln()).abs() < 1e-6);
/// assert!((log_q[1] - (1.0 / (e + 1.0)).ln()).abs() < 1e-6);
/// # Ok::<(), burn_distill::DistillError>(())
/// ```
pub fn log_softmax<const D: usize>(
    logits: Tensor<D>,
    temperature: f64,
    dim: usize,
) -> Result<Tensor<D>, DistillError> {
    check_temperature("temperature", temperature)?;
    check_dim("dim", dim, D)?;
    Ok(log_softmax_unchecked(logits, temperature, dim))
}

/// `softmax(logits / temperature)` along `dim`, computed stably.
///
/// # Errors
/// As [`log_softmax`].
///
/// # Shapes
/// - `logits`: any shape; output: the same shape, each slice along `dim` summing to 1.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::temperature::softmax;
///
/// let device = Device::flex();
/// let z = Tensor::<2>::from_floats([[4.0, 0.0, f32::NEG_INFINITY]], &device);
/// let q = softmax(z, 4.0, 1)?.into_data().to_vec::<f32>().unwrap();
/// let e = std::f32::consts::E;
/// assert!((q[0] - e / (e + 1.0)).abs() < 1e-6);
/// assert_eq!(q[2], 0.0); // a masked class gets exactly zero probability
/// # Ok::<(), burn_distill::DistillError>(())
/// ```
pub fn softmax<const D: usize>(
    logits: Tensor<D>,
    temperature: f64,
    dim: usize,
) -> Result<Tensor<D>, DistillError> {
    Ok(log_softmax(logits, temperature, dim)?.exp())
}

/// [`log_softmax`] for callers that validated the temperature and `dim` once
/// (the losses, at `try_init`).
pub(crate) fn log_softmax_unchecked<const D: usize>(
    logits: Tensor<D>,
    temperature: f64,
    dim: usize,
) -> Tensor<D> {
    let (shifted, _) = shifted_scaled_logits(logits, temperature, dim);
    let log_normaliser = shifted.clone().exp().sum_dim(dim).log();
    shifted - log_normaliser
}

/// `(z − max z)/T` along `dim`, and `max z / T`: the largest entry of each
/// slice becomes 0, so `exp` cannot overflow. The max is subtracted before the
/// division, so that logits near `±f32::MAX` at `T < 1` do not overflow to
/// `inf − inf = NaN` (a gap that overflows becomes `−inf`: probability 0, which
/// is what it rounds to anyway).
///
/// The max is detached: subtracting a per-row constant does not change the
/// (log-)softmax, so its true gradient contribution is zero, and detaching
/// spares autodiff a max-backward node. A row's max is `−inf` only when the
/// whole row is masked, which is documented as unsupported.
fn shifted_scaled_logits<const D: usize>(
    logits: Tensor<D>,
    temperature: f64,
    dim: usize,
) -> (Tensor<D>, Tensor<D>) {
    let row_max = logits.clone().max_dim(dim).detach();
    let shifted = scale(logits - row_max.clone(), temperature);
    (shifted, scale(row_max, temperature))
}

/// `log Σ exp(logits / T)` along `dim` (kept as a size-1 dimension), stably; its
/// gradient is `softmax(logits / T) / T`.
pub(crate) fn scaled_logsumexp<const D: usize>(
    logits: Tensor<D>,
    temperature: f64,
    dim: usize,
) -> Tensor<D> {
    let (shifted, row_max) = shifted_scaled_logits(logits, temperature, dim);
    shifted.exp().sum_dim(dim).log() + row_max
}

/// `logits / T`.
fn scale<const D: usize>(logits: Tensor<D>, temperature: f64) -> Tensor<D> {
    // Multiply by 1/T rather than divide by T: in burn 0.22.1 the backward of
    // `div_scalar` rounds 1/T to f32 even for f64 tensors (a 1.5e-8 relative error
    // at T = 20), while `mul_scalar`'s backward keeps the tensor's precision.
    if temperature == 1.0 {
        logits
    } else {
        logits.mul_scalar(1.0 / temperature)
    }
}

/// Logit standardisation (Sun et al., "Logit Standardization in Knowledge
/// Distillation", CVPR 2024): each row's z-score `(z − mean) / (std + 1e-7)`
/// along dim 1, with the unbiased standard deviation (as `torch.std`, which
/// the authors' code uses). Apply it to teacher and student logits before the
/// temperature, so that the student matches the teacher's logit *shape*
/// rather than its scale. Rows need at least 2 classes and finite logits.
///
/// # Shapes
/// - `logits`: `[batch, classes]`; output: the same.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::temperature::standardize;
///
/// let device = Device::flex();
/// let z = Tensor::<2>::from_floats([[1.0, 2.0, 3.0]], &device);
/// let s = standardize(z).into_data().to_vec::<f32>().unwrap();
/// assert!((s[0] + 1.0).abs() < 1e-5 && s[1].abs() < 1e-6 && (s[2] - 1.0).abs() < 1e-5);
/// ```
pub fn standardize(logits: Tensor<2>) -> Tensor<2> {
    let [_, classes] = logits.dims();
    // A sum over the row divided by its length, not `mean_dim`: burn 0.22.1's
    // mean on wgpu is wrong past 65,535 elements (see `reduction::reduce`).
    let mean = logits.clone().sum_dim(1).mul_scalar(1.0 / classes as f64);
    let centred = logits - mean;
    // Divided by the row's largest deviation first (at least 1), so that the
    // squares cannot overflow (rows like [1e30, 0, −1e30] in f32). The z-score
    // is the same for any such scale s: (c/s) / (σ/s + ε/s), so s carries no
    // gradient and is detached.
    let scale = centred.clone().abs().max_dim(1).clamp_min(1.0).detach();
    let scaled = centred / scale.clone();
    let variance = scaled
        .clone()
        .square()
        .sum_dim(1)
        .mul_scalar(1.0 / (classes.max(2) - 1) as f64);
    // A constant row has variance 0, where sqrt's derivative is infinite; the
    // clamp (zero gradient below its floor) keeps the gradient finite, and
    // sqrt(f32::MIN_POSITIVE) ≈ 1e-19 is far below ε.
    let std = variance.clamp_min(f64::from(f32::MIN_POSITIVE)).sqrt();
    scaled / (std + scale.recip().mul_scalar(1e-7))
}

/// f16 and bf16 are computed in f32: their range and precision lose the loss
/// (a logit of 4000 at T = 0.05 overflows f16).
pub(crate) fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}
