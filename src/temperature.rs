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

use burn::tensor::Tensor;

use crate::error::{DistillError, check_dim, check_temperature, or_panic};

/// `log_softmax(logits / temperature)` along `dim`, computed stably.
///
/// # Panics
/// If `temperature` is not finite and > 0, or `dim >= D`; the message names
/// the argument and value (see [`try_log_softmax`]).
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
/// let log_q = log_softmax(z, 2.0, 1).into_data().to_vec::<f32>().unwrap();
/// // softmax([1, 0]) = [e/(e+1), 1/(e+1)]
/// let e = std::f32::consts::E;
/// assert!((log_q[0] - (e / (e + 1.0)).ln()).abs() < 1e-6);
/// assert!((log_q[1] - (1.0 / (e + 1.0)).ln()).abs() < 1e-6);
/// ```
pub fn log_softmax<const D: usize>(logits: Tensor<D>, temperature: f64, dim: usize) -> Tensor<D> {
    or_panic(try_log_softmax(logits, temperature, dim))
}

/// `softmax(logits / temperature)` along `dim`, computed stably.
///
/// # Panics
/// If `temperature` is not finite and > 0, or `dim >= D` (see [`try_softmax`]).
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
/// let q = softmax(z, 4.0, 1).into_data().to_vec::<f32>().unwrap();
/// let e = std::f32::consts::E;
/// assert!((q[0] - e / (e + 1.0)).abs() < 1e-6);
/// assert_eq!(q[2], 0.0); // a masked class gets exactly zero probability
/// ```
pub fn softmax<const D: usize>(logits: Tensor<D>, temperature: f64, dim: usize) -> Tensor<D> {
    or_panic(try_softmax(logits, temperature, dim))
}

/// Fallible [`log_softmax`]: returns [`DistillError::InvalidTemperature`] or
/// [`DistillError::InvalidDim`] instead of panicking.
pub fn try_log_softmax<const D: usize>(
    logits: Tensor<D>,
    temperature: f64,
    dim: usize,
) -> Result<Tensor<D>, DistillError> {
    check_temperature("temperature", temperature)?;
    check_dim("dim", dim, D)?;
    let shifted = shifted_scaled_logits(logits, temperature, dim);
    let log_normaliser = shifted.clone().exp().sum_dim(dim).log();
    Ok(shifted - log_normaliser)
}

/// Fallible [`softmax`]: returns [`DistillError::InvalidTemperature`] or
/// [`DistillError::InvalidDim`] instead of panicking.
pub fn try_softmax<const D: usize>(
    logits: Tensor<D>,
    temperature: f64,
    dim: usize,
) -> Result<Tensor<D>, DistillError> {
    check_temperature("temperature", temperature)?;
    check_dim("dim", dim, D)?;
    let unnormalised = shifted_scaled_logits(logits, temperature, dim).exp();
    let normaliser = unnormalised.clone().sum_dim(dim);
    Ok(unnormalised / normaliser)
}

/// `z/T − max(z/T)` along `dim`: the largest entry of each slice becomes 0, so
/// `exp` cannot overflow.
///
/// The max is detached: subtracting a per-row constant does not change the
/// (log-)softmax, so its true gradient contribution is zero, and detaching
/// spares autodiff a max-backward node. A row's max is `−inf` only when the
/// whole row is masked, which is documented as unsupported.
fn shifted_scaled_logits<const D: usize>(
    logits: Tensor<D>,
    temperature: f64,
    dim: usize,
) -> Tensor<D> {
    // Multiply by 1/T rather than divide by T: in burn 0.22.1 the backward of
    // `div_scalar` rounds 1/T to f32 even for f64 tensors (a 1.5e-8 relative error
    // at T = 20), while `mul_scalar`'s backward keeps the tensor's precision.
    let scaled = if temperature == 1.0 {
        logits
    } else {
        logits.mul_scalar(1.0 / temperature)
    };
    let row_max = scaled.clone().max_dim(dim).detach();
    scaled - row_max
}
