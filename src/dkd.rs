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

use crate::check::{BadPositions, ValueChecks, check_temperature, check_weight};
use crate::divergence::{Divergence, forward_kl_unchecked};
use crate::error::{DistillError, or_panic};
use crate::fused::{self, FusedLoss, FusedSpec};
use crate::reduction::Reducer;
use crate::shape::{LogitsShape, to_rows};
use crate::targets::{Targets, blank_left_out_rows, usable_labels};
use crate::teacher::{PreparedTeacher, TeacherOutput};
use crate::temperature::{compute_dtype, log_softmax_unchecked, scaled_logsumexp, standardize};
use crate::vocabulary::VocabularyRule;

/// Below this target probability `log(1 − p_t)` is computed by its series.
const SERIES_BELOW: f64 = 0.01;

/// Why DKD refuses a top-k teacher.
const TOP_K_REASON: &str = "DKD needs the teacher's whole distribution, not its top-k classes";

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
    /// Where it serves (f32 compute on flex or ndarray, and on Cube devices
    /// with the `cube-kernel` feature, as for
    /// [`KdLossConfig::fused_kernel`](crate::KdLossConfig::fused_kernel)),
    /// compute the values and the gradient in closed form in the fused
    /// kernel, `T·[α(q_y − p_y)(δ_iy − q̂_i) + β(q̂_i − p̂_i)]` per class, with
    /// one autodiff node; elsewhere, and with `false`, burn ops and autodiff
    /// (the reference). Default: true.
    #[config(default = true)]
    pub fused_kernel: bool,
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
            fused_kernel: self.fused_kernel,
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
/// Its forwards take the same [`TeacherOutput`] (logits, probabilities or
/// log-probabilities; not top-k, whose non-target distribution is unknown) and
/// [`Targets`] (labels required; row masks and the normaliser apply) as
/// [`KdLoss`](crate::KdLoss), and panic on bad input with the message of
/// [`check`](DkdLoss::check).
///
/// # Shapes
/// - `student_logits`: `[rows, classes]` or `[batch, seq, vocab]`, classes ≥ 2
/// - `teacher`: the same shape
/// - `targets`: labels with the logits' positions (`[rows]` or `[batch, seq]`)
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
    fused_kernel: bool,
}

impl DkdLoss {
    /// `α · TCKD + β · NCKD`, `T²`-scaled, reduced over the kept positions
    /// (by default their mean), `[1]`.
    ///
    /// # Panics
    /// On bad input, with the message of [`check`](Self::check) — on a
    /// device backend only where knowing it needs no tensor values; bad
    /// values make the loss NaN there (see the crate's "Checks").
    pub fn forward<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: impl Into<TeacherOutput<D>>,
        targets: impl Into<Targets>,
    ) -> Tensor<1>
    where
        Tensor<D>: LogitsShape,
    {
        let dtype = student_logits.dtype();
        let weights = [(self.alpha, self.beta)];
        let (rows, [total]) =
            or_panic(self.rows(student_logits, teacher.into(), targets.into(), weights));
        rows.reducer.reduce(total).cast(dtype)
    }

    /// The total and its two parts.
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn forward_parts<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: impl Into<TeacherOutput<D>>,
        targets: impl Into<Targets>,
    ) -> DkdLossOutput
    where
        Tensor<D>: LogitsShape,
    {
        let dtype = student_logits.dtype();
        let weights = [(1.0, 0.0), (0.0, 1.0)];
        let (rows, [tckd, nckd]) =
            or_panic(self.rows(student_logits, teacher.into(), targets.into(), weights));
        let (tckd, nckd) = (rows.reducer.reduce(tckd), rows.reducer.reduce(nckd));
        let total = tckd.clone().mul_scalar(self.alpha) + nckd.clone().mul_scalar(self.beta);
        DkdLossOutput {
            total: total.cast(dtype),
            tckd: tckd.cast(dtype),
            nckd: nckd.cast(dtype),
        }
    }

    /// `α · T²·TCKD + β · T²·NCKD` per position (`[rows]` or `[batch, seq]`);
    /// positions that do not count are 0.
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn forward_no_reduction<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: impl Into<TeacherOutput<D>>,
        targets: impl Into<Targets>,
    ) -> <Tensor<D> as LogitsShape>::PerPosition
    where
        Tensor<D>: LogitsShape,
    {
        let dtype = student_logits.dtype();
        let weights = [(self.alpha, self.beta)];
        let (rows, [total]) =
            or_panic(self.rows(student_logits, teacher.into(), targets.into(), weights));
        let values = rows.reducer.per_position(total);
        <Tensor<D> as LogitsShape>::per_position(values.cast(dtype), &rows.positions)
    }

    /// Checks everything the forwards check, without computing the loss.
    pub fn check<const D: usize>(
        &self,
        student_logits: &Tensor<D>,
        teacher: &TeacherOutput<D>,
        targets: &Targets,
    ) -> Result<(), DistillError>
    where
        Tensor<D>: LogitsShape,
    {
        let (student, teacher, positions) = to_rows(student_logits.clone(), teacher.clone())?;
        self.check_rows(&student, &teacher, targets, &positions, ValueChecks::Read)
            .map(|_| ())
    }

    /// [`check`](Self::check) on the flattened input.
    fn check_rows(
        &self,
        student_logits: &Tensor<2>,
        teacher: &TeacherOutput,
        targets: &Targets,
        positions: &[usize],
        values: ValueChecks,
    ) -> Result<BadPositions, DistillError> {
        let [_, classes] = student_logits.dims();
        if let TeacherOutput::TopK(_) = teacher {
            return Err(DistillError::UnsupportedTeacher {
                teacher: "teacher.log_probs",
                reason: TOP_K_REASON,
            });
        }
        // The same classes (NCKD, like every term here, is a forward KL).
        let same = (VocabularyRule::Same, Divergence::ForwardKl);
        let bad = teacher.check(student_logits, same.0, same.1, values)?;
        if classes < 2 {
            return Err(DistillError::InvalidParameter {
                argument: "classes",
                value: classes,
                requirement: "at least 2 (DKD splits target and non-target classes)",
            });
        }
        if self.logit_standardization && !matches!(teacher, TeacherOutput::Logits(_)) {
            return Err(DistillError::UnsupportedTeacher {
                teacher: teacher.tensor().1,
                reason: "logit_standardization needs the teacher's logits",
            });
        }
        if targets.labels.is_none() {
            return Err(DistillError::MissingLabels);
        }
        let labels = targets.check(
            "student_logits",
            student_logits,
            classes,
            positions,
            None,
            values,
        )?;
        Ok(bad.union(labels))
    }

    /// Per row, `[batch]` each, after the checks, in the compute dtype (f32
    /// for half-precision input): for each `(w_t, w_n)` of `weights`,
    /// `w_t·T²·TCKD + w_n·T²·NCKD`.
    fn rows<const D: usize, const K: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: TeacherOutput<D>,
        targets: Targets,
        weights: [(f64, f64); K],
    ) -> Result<(Reducing, [Tensor<1>; K]), DistillError> {
        let (student_logits, teacher, positions) = to_rows(student_logits, teacher)?;
        let values = ValueChecks::for_forward(&student_logits.device());
        let bad = self.check_rows(&student_logits, &teacher, &targets, &positions, values)?;
        let [batch, classes] = student_logits.dims();
        let compute = compute_dtype(student_logits.dtype());
        let z = student_logits.cast(compute);
        let t = self.temperature;
        let (v, teacher_t) = match teacher.prepare(classes, t, compute, self.logit_standardization)
        {
            PreparedTeacher::Dense(dense) => (dense.values, dense.temperature),
            PreparedTeacher::TopK { .. } => {
                return Err(DistillError::UnsupportedTeacher {
                    teacher: "teacher.log_probs",
                    reason: TOP_K_REASON,
                });
            }
        };
        let keep = targets.kept_rows(None);
        let reducing = Reducing {
            reducer: Reducer {
                weights: targets.position_weights(keep.as_ref(), &positions, compute),
                keep: keep.clone(),
                bad,
            },
            positions,
        };
        let kernel = self
            .fused_kernel
            .then(|| fused::plan(&z, &v, false, FusedLoss::Dkd))
            .flatten();
        // Wherever autodiff runs through the rows (its path, or standardisation
        // before the kernel), left-out rows are zeroed first.
        let (z, v) = match kernel.is_none() || self.logit_standardization {
            true => (
                blank_left_out_rows(z, keep.as_ref()),
                blank_left_out_rows(v, keep.as_ref()),
            ),
            false => (z, v),
        };
        let z = match self.logit_standardization {
            true => standardize(z),
            false => z,
        };
        let labels = usable_labels(
            targets.labels.expect("checked: DKD has labels"),
            None,
            classes,
        );
        let scale = t * t;
        if let Some(kernel) = kernel {
            let spec = FusedSpec {
                temperature: t,
                teacher_temperature: teacher_t,
                soft_factor: scale,
                weights: weights.to_vec(),
                loss: FusedLoss::Dkd,
            };
            let out = fused::columns(kernel, &z, &v, None, Some(&labels), spec);
            let columns =
                std::array::from_fn(|k| out.clone().slice([0..batch, k..k + 1]).squeeze_dim(1));
            return Ok((reducing, columns));
        }
        // Not burn's `one_hot`, which reads the labels back to check them.
        let class_ids = Tensor::<1, Int>::arange(0..classes as i64, &labels.device());
        let target_mask = class_ids
            .reshape([1, classes])
            .expand([batch, classes])
            .equal(labels.clone().reshape([batch, 1]).expand([batch, classes]));
        let index = labels.reshape([batch, 1]);

        let (student_binary, student_rest) = split(z, t, target_mask.clone(), index.clone());
        let (teacher_binary, teacher_rest) = split(v, teacher_t, target_mask, index);
        let tckd = forward_kl_unchecked(student_binary, teacher_binary).mul_scalar(scale);
        let nckd = forward_kl_unchecked(student_rest, teacher_rest).mul_scalar(scale);
        // A zero weight contributes nothing, even when its part is infinite.
        let part = |w: f64, rows: &Tensor<1>| match w {
            0.0 => rows.zeros_like(),
            w => rows.clone().mul_scalar(w),
        };
        Ok((
            reducing,
            weights.map(|(wt, wn)| part(wt, &tckd) + part(wn, &nckd)),
        ))
    }
}

/// How a call's per-position values are reduced, and the student's positions.
struct Reducing {
    reducer: Reducer,
    positions: Vec<usize>,
}

/// From logits at temperature `t`: the binary log-distribution
/// `[log p_t, log(1 − p_t)]` `[B, 2]` and the non-target log-distribution
/// `log p̂` `[B, C]` (`−inf` at the target).
///
/// `log(1 − p_t)`: where `p_t < 0.01`, the series `−p(1 + p/2 + p²/3 + p³/4)`
/// (relative error below 3e-9), accurate however small `p_t` is — the
/// difference of two log-sum-exps loses it (20% relative error at `p_t = 2e-5`
/// in f32), and so does `log(1 − p_t)`, which is what `log1p` becomes on
/// backends without one (WGSL has none); elsewhere that difference, which has
/// no cancellation there.
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
    let threshold = SERIES_BELOW.ln();
    let small_target = log_target.clone().lower_elem(threshold);
    // Clamped so that the branch not taken stays finite (its gradient is
    // multiplied by 0, and 0·inf would be NaN).
    let p = log_target.clone().clamp_max(threshold).exp();
    let horner = p.clone().mul_scalar(0.25).add_scalar(1.0 / 3.0);
    let horner = (p.clone() * horner).add_scalar(0.5);
    let horner = (p.clone() * horner).add_scalar(1.0);
    let by_series = (p * horner).neg();
    let by_difference = log_others - log_all;
    let log_rest = by_difference.mask_where(small_target, by_series);
    let binary = Tensor::cat(vec![log_target, log_rest], 1);
    (binary, log_softmax_unchecked(masked, t, 1))
}
