//! Decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge
//! Distillation", CVPR 2022), following mdistiller's `DKD.py`.
//!
//! With `p = softmax(v/T)`, `q = softmax(z/T)` and target class `t`, the KD
//! divergence splits exactly into a target-class part and a non-target part:
//!
//! ```text
//! KL(p ‖ q) = KL(b^p ‖ b^q) + (1 − p_t) · KL(p̂ ‖ q̂)
//! ```
//!
//! where `b = [p_t, 1 − p_t]` is the binary target/non-target distribution and
//! `p̂` is `p` renormalised over the non-target classes. DKD weights the two parts
//! independently, dropping the `(1 − p_t)` factor that suppresses the non-target
//! knowledge when the teacher is confident:
//!
//! ```text
//! DKD = α · T² · TCKD + β · T² · NCKD,   TCKD = KL(b^p ‖ b^q),  NCKD = KL(p̂ ‖ q̂)
//! ```
//! batch-averaged. mdistiller's CIFAR-100 defaults: α = 1, β = 8, T = 4 (with a
//! linear warm-up of the loss weight over the first 20 epochs, left to the
//! training loop). The non-target distributions exclude the target class exactly
//! (`−inf`), where mdistiller subtracts 1000 from its logit.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Int, Tensor};

use crate::divergence::{forward_kl_unchecked, masked_mean};
use crate::error::{
    DistillError, check_non_empty, check_same_shape, check_temperature, check_weight, or_panic,
};
use crate::temperature::{scaled_logsumexp, standardize, try_log_softmax};

/// Configuration of a [`DkdLoss`].
#[derive(Config, Debug)]
pub struct DkdLossConfig {
    /// Temperature `T`. Default: 4.0 (mdistiller's CIFAR-100 setting).
    #[config(default = 4.0)]
    pub temperature: f64,
    /// Weight `α` of the target-class part. Default: 1.0.
    #[config(default = 1.0)]
    pub alpha: f64,
    /// Weight `β` of the non-target part. Default: 8.0.
    #[config(default = 8.0)]
    pub beta: f64,
    /// Standardise teacher and student logits per row before the temperature
    /// ([`standardize`], Sun et al. 2024). Default: false.
    #[config(default = false)]
    pub logit_standardization: bool,
}

impl DkdLossConfig {
    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid field, with the message of [`try_init`](Self::try_init).
    pub fn init(&self) -> DkdLoss {
        or_panic(self.try_init())
    }

    /// Builds the loss, or says which field is invalid.
    pub fn try_init(&self) -> Result<DkdLoss, DistillError> {
        check_temperature("temperature", self.temperature)?;
        check_weight("alpha", self.alpha)?;
        check_weight("beta", self.beta)?;
        Ok(DkdLoss {
            temperature: self.temperature,
            alpha: self.alpha,
            beta: self.beta,
            logit_standardization: self.logit_standardization,
        })
    }
}

/// The two parts of a [`DkdLoss`], each `T²`-scaled, batch-averaged and
/// unweighted: `total = α · tckd + β · nckd`.
#[derive(Debug, Clone)]
pub struct DkdLossOutput {
    /// `α · tckd + β · nckd`, `[1]`.
    pub total: Tensor<1>,
    /// `T² · KL(b^p ‖ b^q)`, `[1]`.
    pub tckd: Tensor<1>,
    /// `T² · KL(p̂ ‖ q̂)`, `[1]`.
    pub nckd: Tensor<1>,
}

/// Decoupled KD loss; see the module documentation.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[batch, classes]`, classes ≥ 2
/// - `targets`: `[batch]`
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::dkd::DkdLossConfig;
///
/// let device = Device::flex().autodiff();
/// let z = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device).require_grad();
/// let v = Tensor::<2>::from_floats([[2.0, 1.0, -1.0]], &device);
/// let y = Tensor::<1, Int>::from_ints([0], &device);
/// let loss = DkdLossConfig::new().init().forward(z.clone(), v, y);
/// assert!(z.grad(&loss.backward()).is_some());
/// ```
#[derive(Module, Debug)]
pub struct DkdLoss {
    temperature: f64,
    alpha: f64,
    beta: f64,
    logit_standardization: bool,
}

impl DkdLoss {
    /// `α · TCKD + β · NCKD`, `T²`-scaled, batch-averaged, `[1]`.
    ///
    /// # Panics
    /// On bad shapes or labels (see [`try_forward`](Self::try_forward)).
    pub fn forward(
        &self,
        student_logits: Tensor<2>,
        teacher_logits: Tensor<2>,
        targets: Tensor<1, Int>,
    ) -> Tensor<1> {
        or_panic(self.try_forward(student_logits, teacher_logits, targets))
    }

    /// Fallible [`forward`](Self::forward).
    pub fn try_forward(
        &self,
        student_logits: Tensor<2>,
        teacher_logits: Tensor<2>,
        targets: Tensor<1, Int>,
    ) -> Result<Tensor<1>, DistillError> {
        Ok(self
            .try_forward_parts(student_logits, teacher_logits, targets)?
            .total)
    }

    /// The total and its two parts.
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn forward_parts(
        &self,
        student_logits: Tensor<2>,
        teacher_logits: Tensor<2>,
        targets: Tensor<1, Int>,
    ) -> DkdLossOutput {
        or_panic(self.try_forward_parts(student_logits, teacher_logits, targets))
    }

    /// Fallible [`forward_parts`](Self::forward_parts).
    pub fn try_forward_parts(
        &self,
        student_logits: Tensor<2>,
        teacher_logits: Tensor<2>,
        targets: Tensor<1, Int>,
    ) -> Result<DkdLossOutput, DistillError> {
        let (tckd_rows, nckd_rows) = self.rows(student_logits, teacher_logits, targets)?;
        Ok(self.combine(tckd_rows.mean(), nckd_rows.mean()))
    }

    /// The total and its parts averaged over the rows where `keep_rows` is true
    /// (token-level distillation with padding); no row kept gives exactly 0 and
    /// a zero gradient.
    ///
    /// # Panics
    /// As [`try_forward_parts_masked`](Self::try_forward_parts_masked).
    pub fn forward_parts_masked(
        &self,
        student_logits: Tensor<2>,
        teacher_logits: Tensor<2>,
        targets: Tensor<1, Int>,
        keep_rows: Tensor<1, Bool>,
    ) -> DkdLossOutput {
        or_panic(self.try_forward_parts_masked(student_logits, teacher_logits, targets, keep_rows))
    }

    /// Fallible [`forward_parts_masked`](Self::forward_parts_masked); also
    /// reports [`DistillError::MaskLength`]. Labels of dropped rows must still be
    /// valid class indices.
    pub fn try_forward_parts_masked(
        &self,
        student_logits: Tensor<2>,
        teacher_logits: Tensor<2>,
        targets: Tensor<1, Int>,
        keep_rows: Tensor<1, Bool>,
    ) -> Result<DkdLossOutput, DistillError> {
        let [batch] = targets.dims();
        let [found] = keep_rows.dims();
        if found != batch {
            return Err(DistillError::MaskLength {
                found,
                expected: batch,
            });
        }
        let (tckd_rows, nckd_rows) = self.rows(student_logits, teacher_logits, targets)?;
        Ok(self.combine(
            masked_mean(tckd_rows, keep_rows.clone()),
            masked_mean(nckd_rows, keep_rows),
        ))
    }

    fn combine(&self, tckd: Tensor<1>, nckd: Tensor<1>) -> DkdLossOutput {
        let total = tckd.clone().mul_scalar(self.alpha) + nckd.clone().mul_scalar(self.beta);
        DkdLossOutput { total, tckd, nckd }
    }

    /// `T²·TCKD` and `T²·NCKD` per row, `[batch]` each, after the checks.
    fn rows(
        &self,
        student_logits: Tensor<2>,
        teacher_logits: Tensor<2>,
        targets: Tensor<1, Int>,
    ) -> Result<(Tensor<1>, Tensor<1>), DistillError> {
        let shape = student_logits.dims();
        check_same_shape(
            "student_logits",
            &shape,
            "teacher_logits",
            &teacher_logits.dims(),
        )?;
        check_non_empty("student_logits", &shape)?;
        let [batch, classes] = shape;
        if classes < 2 {
            return Err(DistillError::InvalidParameter {
                argument: "classes",
                value: classes,
                requirement: "at least 2 (DKD splits target and non-target classes)",
            });
        }
        crate::kd::check_targets(&targets, batch, classes)?;
        let (z, v) = if self.logit_standardization {
            (
                standardize(student_logits),
                standardize(teacher_logits.detach()),
            )
        } else {
            (student_logits, teacher_logits.detach())
        };
        let t = self.temperature;
        let target_mask: Tensor<2, Bool> = targets.clone().one_hot::<2>(classes).equal_elem(1);
        let index = targets.reshape([batch, 1]);

        let (student_binary, student_rest) = split(z, t, target_mask.clone(), index.clone());
        let (teacher_binary, teacher_rest) = split(v, t, target_mask, index);
        let scale = t * t;
        let tckd = forward_kl_unchecked(student_binary, teacher_binary).mul_scalar(scale);
        let nckd = forward_kl_unchecked(student_rest, teacher_rest).mul_scalar(scale);
        Ok((tckd, nckd))
    }
}

/// From logits at temperature `t`: the binary log-distribution
/// `[log p_t, log(1 − p_t)]` `[B, 2]` and the non-target log-distribution
/// `log p̂` `[B, C]` (`−inf` at the target). `log(1 − p_t)` is the difference of
/// two log-sum-exps, free of the cancellation in `1 − p_t`.
fn split(
    logits: Tensor<2>,
    t: f64,
    target_mask: Tensor<2, Bool>,
    targets: Tensor<2, Int>,
) -> (Tensor<2>, Tensor<2>) {
    let log_all = scaled_logsumexp(logits.clone(), t, 1);
    let masked = logits.clone().mask_fill(target_mask, f32::NEG_INFINITY);
    let log_others = scaled_logsumexp(masked.clone(), t, 1);
    let log_target = logits.gather(1, targets).mul_scalar(1.0 / t) - log_all.clone();
    let binary = Tensor::cat(vec![log_target, log_others - log_all], 1);
    (binary, or_panic(try_log_softmax(masked, t, 1)))
}
