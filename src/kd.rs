//! The Hinton knowledge-distillation loss (Hinton, Vinyals & Dean 2015, §2).
//!
//! ```text
//! L = soft_weight · T² · KL(softmax(v/T) ‖ softmax(z/T))  +  hard_weight · CE(softmax(z), y)
//! ```
//! with student logits `z`, teacher logits `v`, labels `y` and temperature `T`.
//! Both terms are "batchmean": summed over classes, averaged over rows — never a
//! mean over classes too, which would silently divide the soft term by the
//! number of classes (anchors.md, bug 2).
//!
//! Why `T²`: the soft term's gradient is `∂KL/∂z_i = (q_i − p_i)/T` (eq. 2), so it
//! shrinks as `1/T²` once the logits are small next to `T` (eq. 4). Multiplying
//! by `T²` keeps the soft gradient's size — and so the balance between the two
//! weights — unchanged when `T` is tuned.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::tensor::{Bool, Int, Tensor};

use crate::analytic::{AnalyticParams, analytic_columns, uses_host_kernel};
use crate::divergence::forward_kl_unchecked;
use crate::error::{
    DistillError, check_non_empty, check_same_shape, check_temperature, check_weight, or_panic,
};
use crate::temperature::{standardize, try_log_softmax};

/// Configuration of a [`KdLoss`].
///
/// ```
/// use burn_distill::KdLossConfig;
///
/// let loss = KdLossConfig::new().with_temperature(20.0).init();
/// assert_eq!(loss.temperature(), 20.0);
/// assert_eq!(loss.soft_weight(), 0.9);
/// ```
#[derive(Config, Debug)]
pub struct KdLossConfig {
    /// Distillation temperature `T`, finite and > 0. Default: 4.0 (the common
    /// CIFAR recipe; the paper's MNIST experiment used 20).
    #[config(default = 4.0)]
    pub temperature: f64,
    /// Weight of the soft (teacher-matching) term, ≥ 0. Default: 0.9.
    #[config(default = 0.9)]
    pub soft_weight: f64,
    /// Weight of the hard-label cross-entropy at `T = 1`, ≥ 0. Default: 0.1
    /// (the paper found a considerably lower weight on the hard term best).
    #[config(default = 0.1)]
    pub hard_weight: f64,
    /// Multiply the soft term by `T²` so its gradient's size does not depend on
    /// `T` (the paper's recommendation). Default: true.
    #[config(default = true)]
    pub scale_by_t_squared: bool,
    /// On flex and ndarray with f32 tensors (with this crate's `flex` feature,
    /// on by default, or its `ndarray` feature), compute the values and the
    /// gradient with respect to the student in closed form —
    /// `soft_weight·(f/T)(q − p) + hard_weight·(softmax(z) − onehot)` per row,
    /// `f` = T² or 1 — in one fused, multi-threaded CPU kernel that reads burn's
    /// buffers in place, and register a single autodiff node whose backward is
    /// that gradient instead of letting autodiff walk back through every
    /// softmax, log and product. Same values and gradients, an order of magnitude
    /// faster at large vocabularies (BENCHMARKS.md). On other devices and dtypes,
    /// and with `false`, the loss is plain burn ops differentiated by autodiff
    /// (the reference the fast path is tested against). Default: true.
    #[config(default = true)]
    pub analytic_backward: bool,
    /// Retired; kept so that existing configs still load. It split the fused
    /// path's work into row blocks to bound the host copies of the logits. The
    /// kernel now reads the logits in burn's own buffers, and its only
    /// `[batch, classes]` allocation is the gradient itself (one buffer of extra
    /// peak memory at 512×32000, see BENCHMARKS.md), so blocks have nothing
    /// left to bound. Checked (at least 1), otherwise ignored. Default: None.
    #[config(default = "None")]
    pub chunk_rows: Option<usize>,
    /// Rows whose target equals this label (e.g. `-100` for padding tokens, as
    /// in PyTorch) are left out: they contribute 0 and get no gradient, and
    /// the means are over the remaining rows (0 when none remain). Default: None.
    #[config(default = "None")]
    pub ignore_index: Option<i64>,
    /// When the teacher has more classes than the student, keep only its first
    /// `classes` columns (and renormalise) instead of reporting a shape mismatch:
    /// for vocabularies that differ only by padding rows at the end (e.g. 152064
    /// vs 151936 in the Qwen family). Off by default, because a silently
    /// truncated vocabulary is wrong whenever the two do not share a prefix.
    #[config(default = false)]
    pub truncate_teacher_classes: bool,
    /// Standardise teacher and student logits per row before the temperature
    /// ([`standardize`](crate::temperature::standardize); Sun et al., CVPR 2024).
    /// Needs finite logits (no `−inf` masking). Default: false.
    #[config(default = false)]
    pub logit_standardization: bool,
}

impl KdLossConfig {
    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid field, with the message [`try_init`](Self::try_init) would return.
    pub fn init(&self) -> KdLoss {
        or_panic(self.try_init())
    }

    /// Builds the loss, or says which field is invalid: a temperature that is not
    /// finite and > 0, a weight that is negative or not finite, or both weights 0.
    pub fn try_init(&self) -> Result<KdLoss, DistillError> {
        check_temperature("temperature", self.temperature)?;
        check_weight("soft_weight", self.soft_weight)?;
        check_weight("hard_weight", self.hard_weight)?;
        if self.chunk_rows == Some(0) {
            return Err(DistillError::InvalidChunkRows { value: 0 });
        }
        if self.soft_weight == 0.0 && self.hard_weight == 0.0 {
            return Err(DistillError::AllWeightsZero {
                soft_weight: self.soft_weight,
                hard_weight: self.hard_weight,
            });
        }
        Ok(KdLoss {
            temperature: self.temperature,
            soft_weight: self.soft_weight,
            hard_weight: self.hard_weight,
            scale_by_t_squared: self.scale_by_t_squared,
            analytic_backward: self.analytic_backward,
            ignore_index: self.ignore_index,
            truncate_teacher_classes: self.truncate_teacher_classes,
            logit_standardization: self.logit_standardization,
        })
    }
}

/// The parts of a [`KdLoss`], for logging.
///
/// `total = soft_weight · soft + hard_weight · hard`.
#[derive(Debug, Clone)]
pub struct KdLossOutput {
    /// The weighted sum that is trained on, `[1]`.
    pub total: Tensor<1>,
    /// The soft term before weighting: `T² · KL(p_T ‖ q_T)` (or `KL` alone when
    /// `scale_by_t_squared` is off), batch-averaged, `[1]`.
    pub soft: Tensor<1>,
    /// The hard term before weighting: cross-entropy of the student at `T = 1`
    /// against the labels, batch-averaged, `[1]`.
    pub hard: Tensor<1>,
}

/// Hinton knowledge-distillation loss; build it with [`KdLossConfig`].
///
/// A [`Module`] with no parameters, so it can be a field of a model.
///
/// The teacher logits are detached inside: the teacher never receives a
/// gradient, whether or not its tensor was tracked.
///
/// # Shapes
/// - `student_logits`: `[batch, classes]`
/// - `teacher_logits`: `[batch, classes]` (the same shape; checked before any tensor op)
/// - `targets`: `[batch]`, class indices in `0..classes`
///
/// # Masked classes
/// A class that is `−inf` in both the teacher's and the student's logits
/// contributes exactly 0 to the loss and the gradient. A class the teacher gives
/// a finite logit but the student `−inf` makes the soft term `+inf` — the
/// student assigns zero probability to something the teacher considers possible.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::KdLossConfig;
///
/// let device = Device::flex().autodiff();
/// let student = Tensor::<2>::from_floats([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]], &device).require_grad();
/// let teacher = Tensor::<2>::from_floats([[1.5, 3.0, 0.0], [0.0, 1.0, 4.0]], &device);
/// let targets = Tensor::<1, Int>::from_ints([1, 2], &device);
///
/// let kd = KdLossConfig::new().with_temperature(2.0).init();
/// let loss = kd.forward(student.clone(), teacher, targets);
/// let grads = loss.backward();
/// assert!(student.grad(&grads).is_some());
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct KdLoss {
    temperature: f64,
    soft_weight: f64,
    hard_weight: f64,
    scale_by_t_squared: bool,
    analytic_backward: bool,
    ignore_index: Option<i64>,
    truncate_teacher_classes: bool,
    logit_standardization: bool,
}

impl ModuleDisplay for KdLoss {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("temperature", &self.temperature)
            .add("soft_weight", &self.soft_weight)
            .add("hard_weight", &self.hard_weight)
            .add("scale_by_t_squared", &self.scale_by_t_squared)
            .add("analytic_backward", &self.analytic_backward)
            .optional()
    }
}

impl KdLoss {
    /// The temperature `T`.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The weight of the soft term.
    pub fn soft_weight(&self) -> f64 {
        self.soft_weight
    }

    /// The weight of the hard term.
    pub fn hard_weight(&self) -> f64 {
        self.hard_weight
    }

    /// Whether the soft term is multiplied by `T²`.
    pub fn scale_by_t_squared(&self) -> bool {
        self.scale_by_t_squared
    }

    /// Whether the closed-form backward is used (see [`KdLossConfig::analytic_backward`]).
    pub fn analytic_backward(&self) -> bool {
        self.analytic_backward
    }

    /// The factor applied to the KL divergence: `T²`, or 1 when scaling is off.
    fn soft_factor(&self) -> f64 {
        if self.scale_by_t_squared {
            self.temperature * self.temperature
        } else {
            1.0
        }
    }

    /// `soft_weight · T² · KL(p_T ‖ q_T) + hard_weight · CE`, averaged over the batch; `[1]`.
    ///
    /// `teacher` is the teacher's logits (a `Tensor<2>`), or a [`TeacherOutput`]
    /// holding a distribution — an ensemble's, or a specialist's collapsed targets.
    ///
    /// # Panics
    /// On mismatched shapes or out-of-range labels, with the message of
    /// [`try_forward`](Self::try_forward).
    pub fn forward(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
        targets: Tensor<1, Int>,
    ) -> Tensor<1> {
        or_panic(self.try_forward(student_logits, teacher, targets))
    }

    /// Fallible [`forward`](Self::forward).
    ///
    /// Checking the labels reads their minimum and maximum back from the device
    /// (two integers); the fused CPU kernel reads the labels anyway.
    pub fn try_forward(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
        targets: Tensor<1, Int>,
    ) -> Result<Tensor<1>, DistillError> {
        let keep = self.kept_rows(&targets, None)?;
        let rows = self.try_forward_no_reduction(student_logits, teacher, targets)?;
        Ok(reduce(rows, keep))
    }

    /// [`forward`](Self::forward) averaged over the rows where `keep_rows` is
    /// true (and whose target is not `ignore_index`): token-level distillation
    /// with padding. No row kept gives exactly 0 and a zero gradient.
    ///
    /// # Panics
    /// As [`try_forward_masked`](Self::try_forward_masked).
    pub fn forward_masked(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
        targets: Tensor<1, Int>,
        keep_rows: Tensor<1, Bool>,
    ) -> Tensor<1> {
        or_panic(self.try_forward_masked(student_logits, teacher, targets, keep_rows))
    }

    /// Fallible [`forward_masked`](Self::forward_masked); also reports
    /// [`DistillError::MaskLength`].
    pub fn try_forward_masked(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
        targets: Tensor<1, Int>,
        keep_rows: Tensor<1, Bool>,
    ) -> Result<Tensor<1>, DistillError> {
        let keep = self.kept_rows(&targets, Some(keep_rows))?;
        let rows = self.try_forward_no_reduction(student_logits, teacher, targets)?;
        Ok(reduce(rows, keep))
    }

    /// [`soft_loss`](Self::soft_loss) averaged over the rows where `keep_rows` is true.
    ///
    /// # Panics
    /// As [`try_soft_loss_masked`](Self::try_soft_loss_masked).
    pub fn soft_loss_masked(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
        keep_rows: Tensor<1, Bool>,
    ) -> Tensor<1> {
        or_panic(self.try_soft_loss_masked(student_logits, teacher, keep_rows))
    }

    /// Fallible [`soft_loss_masked`](Self::soft_loss_masked).
    pub fn try_soft_loss_masked(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
        keep_rows: Tensor<1, Bool>,
    ) -> Result<Tensor<1>, DistillError> {
        let rows = self.try_soft_loss_no_reduction(student_logits, teacher)?;
        crate::divergence::try_masked_mean(rows, keep_rows)
    }

    /// The rows to average over: `keep_rows` and/or the rows whose target is not
    /// `ignore_index`; `None` when all rows count.
    fn kept_rows(
        &self,
        targets: &Tensor<1, Int>,
        keep_rows: Option<Tensor<1, Bool>>,
    ) -> Result<Option<Tensor<1, Bool>>, DistillError> {
        if let Some(keep) = &keep_rows {
            let [found] = keep.dims();
            let [expected] = targets.dims();
            if found != expected {
                return Err(DistillError::MaskLength { found, expected });
            }
        }
        let labelled = self
            .ignore_index
            .map(|ignore| targets.clone().not_equal_elem(ignore));
        Ok(match (keep_rows, labelled) {
            (Some(a), Some(b)) => Some(a.bool_and(b)),
            (a, b) => a.or(b),
        })
    }

    /// Targets with `ignore_index` replaced by class 0, so that ignored rows pass
    /// the label check and index safely; their values are masked out afterwards.
    fn usable_targets(&self, targets: Tensor<1, Int>) -> Tensor<1, Int> {
        match self.ignore_index {
            Some(ignore) => {
                let ignored = targets.clone().equal_elem(ignore);
                targets.mask_fill(ignored, 0)
            }
            None => targets,
        }
    }

    /// The total loss and its two unweighted parts; see [`KdLossOutput`]. Each
    /// part carries its own gradient, so any combination of them trains.
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn forward_parts(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
        targets: Tensor<1, Int>,
    ) -> KdLossOutput {
        or_panic(self.try_forward_parts(student_logits, teacher, targets))
    }

    /// Fallible [`forward_parts`](Self::forward_parts).
    pub fn try_forward_parts(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
        targets: Tensor<1, Int>,
    ) -> Result<KdLossOutput, DistillError> {
        let teacher = self.prepare(&student_logits, teacher.into(), Some(&targets))?;
        let keep = self.kept_rows(&targets, None)?;
        let targets = self.usable_targets(targets);
        let (soft_rows, hard_rows) = self.split_rows(student_logits, teacher, targets)?;
        let soft = reduce(soft_rows, keep.clone());
        let hard = reduce(hard_rows, keep);
        let total =
            soft.clone().mul_scalar(self.soft_weight) + hard.clone().mul_scalar(self.hard_weight);
        Ok(KdLossOutput { total, soft, hard })
    }

    /// Per-example total loss `soft_weight · T² · KL_b + hard_weight · CE_b`,
    /// `[batch]`, for custom weighting or masking of rows. Its mean is
    /// [`forward`](Self::forward).
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn forward_no_reduction(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
        targets: Tensor<1, Int>,
    ) -> Tensor<1> {
        or_panic(self.try_forward_no_reduction(student_logits, teacher, targets))
    }

    /// Fallible [`forward_no_reduction`](Self::forward_no_reduction).
    pub fn try_forward_no_reduction(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
        targets: Tensor<1, Int>,
    ) -> Result<Tensor<1>, DistillError> {
        let teacher = self.prepare(&student_logits, teacher.into(), Some(&targets))?;
        let ignored = self.kept_rows(&targets, None)?.map(|keep| keep.bool_not());
        let targets = self.usable_targets(targets);
        let rows = if self.fused(&student_logits, &teacher) && !self.logit_standardization {
            // One gradient buffer for the weighted total, not one per term.
            self.analytic_total_rows(&student_logits, &teacher, &targets)?
        } else {
            let (soft, hard) = self.split_rows(student_logits, teacher, targets)?;
            soft.mul_scalar(self.soft_weight) + hard.mul_scalar(self.hard_weight)
        };
        // Ignored rows: exactly 0, and no gradient.
        Ok(match ignored {
            Some(ignored) => rows.mask_fill(ignored, 0.0),
            None => rows,
        })
    }

    /// The unweighted soft and hard terms per row, each carrying its own
    /// gradient: by the fused kernel, by autodiff, or — with logit
    /// standardisation — soft on the standardised and hard on the raw logits.
    fn split_rows(
        &self,
        student_logits: Tensor<2>,
        teacher: PreparedTeacher,
        targets: Tensor<1, Int>,
    ) -> Result<(Tensor<1>, Tensor<1>), DistillError> {
        if self.logit_standardization {
            return self.standardized_rows(student_logits, teacher, targets);
        }
        if !self.fused(&student_logits, &teacher) {
            check_targets(&targets, student_logits.dims()[0], student_logits.dims()[1])?;
            let hard = hard_rows(student_logits.clone(), targets);
            return Ok((self.soft_rows(student_logits, teacher), hard));
        }
        let columns = analytic_columns(
            &student_logits,
            &teacher.values,
            Some(&targets),
            &self.analytic_params(&teacher),
            &[(1.0, 0.0), (0.0, 1.0)],
        )?;
        let batch = columns.dims()[0];
        let column = |k: usize| columns.clone().slice([0..batch, k..k + 1]).squeeze_dim(1);
        Ok((column(0), column(1)))
    }

    /// The weighted per-row total through the closed-form backward.
    fn analytic_total_rows(
        &self,
        student_logits: &Tensor<2>,
        teacher: &PreparedTeacher,
        targets: &Tensor<1, Int>,
    ) -> Result<Tensor<1>, DistillError> {
        let columns = analytic_columns(
            student_logits,
            &teacher.values,
            Some(targets),
            &self.analytic_params(teacher),
            &[(self.soft_weight, self.hard_weight)],
        )?;
        Ok(columns.squeeze_dim(1))
    }

    /// The soft term alone, `T² · KL(p_T ‖ q_T)` averaged over the batch, `[1]`:
    /// for transfer sets without labels. Not multiplied by `soft_weight`, which only
    /// balances the soft term against the hard one.
    ///
    /// # Panics
    /// If the shapes differ or are empty (see [`try_soft_loss`](Self::try_soft_loss)).
    pub fn soft_loss(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
    ) -> Tensor<1> {
        or_panic(self.try_soft_loss(student_logits, teacher))
    }

    /// Fallible [`soft_loss`](Self::soft_loss).
    pub fn try_soft_loss(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
    ) -> Result<Tensor<1>, DistillError> {
        Ok(self
            .try_soft_loss_no_reduction(student_logits, teacher)?
            .mean())
    }

    /// The soft term per example, `T² · KL_b`, `[batch]`.
    ///
    /// # Panics
    /// As [`soft_loss`](Self::soft_loss).
    pub fn soft_loss_no_reduction(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
    ) -> Tensor<1> {
        or_panic(self.try_soft_loss_no_reduction(student_logits, teacher))
    }

    /// Fallible [`soft_loss_no_reduction`](Self::soft_loss_no_reduction).
    pub fn try_soft_loss_no_reduction(
        &self,
        student_logits: Tensor<2>,
        teacher: impl Into<TeacherOutput>,
    ) -> Result<Tensor<1>, DistillError> {
        let teacher = self.prepare(&student_logits, teacher.into(), None)?;
        self.soft_term_rows(self.student_view(student_logits), teacher)
    }

    /// `T²·KL` per row, by the closed-form backward or by autodiff.
    fn soft_term_rows(
        &self,
        student_logits: Tensor<2>,
        teacher: PreparedTeacher,
    ) -> Result<Tensor<1>, DistillError> {
        if !self.fused(&student_logits, &teacher) {
            return Ok(self.soft_rows(student_logits, teacher));
        }
        let columns = analytic_columns(
            &student_logits,
            &teacher.values,
            None,
            &self.analytic_params(&teacher),
            &[(1.0, 0.0)],
        )?;
        Ok(columns.squeeze_dim(1))
    }

    /// Soft rows on the standardised student, hard rows on the raw one (Sun et
    /// al. standardise only the KD term's logits).
    fn standardized_rows(
        &self,
        student_logits: Tensor<2>,
        teacher: PreparedTeacher,
        targets: Tensor<1, Int>,
    ) -> Result<(Tensor<1>, Tensor<1>), DistillError> {
        let [batch, classes] = student_logits.dims();
        check_targets(&targets, batch, classes)?;
        let hard = hard_rows(student_logits.clone(), targets);
        let soft = self.soft_term_rows(standardize(student_logits), teacher)?;
        Ok((soft, hard))
    }

    /// Checks shapes (and the targets' length) before any tensor op, and puts the
    /// teacher in the form `p = softmax(values / temperature)`, detached.
    fn prepare(
        &self,
        student_logits: &Tensor<2>,
        teacher: TeacherOutput,
        targets: Option<&Tensor<1, Int>>,
    ) -> Result<PreparedTeacher, DistillError> {
        let student_shape = student_logits.dims();
        let teacher = self.truncated(teacher, student_shape);
        let (tensor, argument) = teacher.parts();
        check_same_shape("student_logits", &student_shape, argument, &tensor.dims())?;
        check_non_empty("student_logits", &student_shape)?;
        if let Some(targets) = targets {
            check_targets_length(targets, student_shape[0])?;
        }
        Ok(match teacher {
            TeacherOutput::Logits(v) if self.logit_standardization => PreparedTeacher {
                values: standardize(v.detach()),
                temperature: self.temperature,
            },
            TeacherOutput::Logits(v) => PreparedTeacher {
                values: v.detach(),
                temperature: self.temperature,
            },
            TeacherOutput::Probs(p) => PreparedTeacher {
                values: p.detach().log(),
                temperature: 1.0,
            },
            TeacherOutput::LogProbs(log_p) => PreparedTeacher {
                values: log_p.detach(),
                temperature: 1.0,
            },
        })
    }

    /// The teacher cut to the student's classes when `truncate_teacher_classes`
    /// allows it; otherwise unchanged (and checked by the caller).
    fn truncated(&self, teacher: TeacherOutput, student_shape: [usize; 2]) -> TeacherOutput {
        let [batch, classes] = student_shape;
        let [teacher_batch, teacher_classes] = teacher.parts().0.dims();
        if !self.truncate_teacher_classes || teacher_batch != batch || teacher_classes <= classes {
            return teacher;
        }
        let cut = |t: Tensor<2>| t.slice([0..batch, 0..classes]);
        match teacher {
            TeacherOutput::Logits(t) => TeacherOutput::Logits(cut(t)),
            // Renormalised by the log-softmax every path applies to the teacher.
            TeacherOutput::Probs(t) => TeacherOutput::LogProbs(cut(t).log()),
            TeacherOutput::LogProbs(t) => TeacherOutput::LogProbs(cut(t)),
        }
    }

    /// The student's logits as the loss sees them: standardised when
    /// `logit_standardization` is on (inside the graph, so autodiff carries the
    /// gradient through the standardisation).
    fn student_view(&self, student_logits: Tensor<2>) -> Tensor<2> {
        if self.logit_standardization {
            standardize(student_logits)
        } else {
            student_logits
        }
    }

    /// Whether the fused kernel computes this loss (see [`KdLossConfig::analytic_backward`]).
    fn fused(&self, student_logits: &Tensor<2>, teacher: &PreparedTeacher) -> bool {
        self.analytic_backward && uses_host_kernel(student_logits, &teacher.values)
    }

    fn analytic_params(&self, teacher: &PreparedTeacher) -> AnalyticParams {
        AnalyticParams {
            temperature: self.temperature,
            teacher_temperature: teacher.temperature,
            soft_factor: self.soft_factor(),
        }
    }

    /// `T² · KL(p ‖ softmax(z/T))` per row from burn ops, differentiated by
    /// autodiff (the reference path).
    fn soft_rows(&self, student_logits: Tensor<2>, teacher: PreparedTeacher) -> Tensor<1> {
        // The temperatures were validated by try_init, so these cannot fail.
        let student_log_probs = or_panic(try_log_softmax(student_logits, self.temperature, 1));
        let teacher_log_probs = or_panic(try_log_softmax(teacher.values, teacher.temperature, 1));
        let kl = forward_kl_unchecked(student_log_probs, teacher_log_probs);
        match self.scale_by_t_squared {
            true => kl.mul_scalar(self.soft_factor()),
            false => kl,
        }
    }
}

/// What the teacher provides to [`KdLoss`].
///
/// A `Tensor<2>` converts into [`TeacherOutput::Logits`], so
/// `kd.forward(student, teacher_logits, labels)` needs no wrapper.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::{KdLossConfig, TeacherOutput};
///
/// let device = Device::flex();
/// let student = Tensor::<2>::from_floats([[1.0, 0.0]], &device);
/// let kd = KdLossConfig::new().with_temperature(2.0).init();
/// // The teacher's softened distribution itself, e.g. an ensemble's average.
/// let soft_targets = Tensor::<2>::from_floats([[0.7, 0.3]], &device);
/// let loss = kd.soft_loss(student.clone(), TeacherOutput::Probs(soft_targets));
/// // The same targets as logits at T = 2: 2·ln(0.7), 2·ln(0.3).
/// let logits = Tensor::<2>::from_floats([[2.0 * 0.7f32.ln(), 2.0 * 0.3f32.ln()]], &device);
/// let same = kd.soft_loss(student, logits);
/// let (a, b) = (loss.into_scalar::<f32>(), same.into_scalar::<f32>());
/// assert!((a - b).abs() < 1e-5);
/// ```
#[derive(Debug, Clone)]
pub enum TeacherOutput {
    /// Raw logits `v`, `[batch, classes]`: the soft targets are `softmax(v / T)`.
    Logits(Tensor<2>),
    /// Soft targets already at the distillation temperature, as probabilities
    /// (each row summing to 1; zeros allowed, meaning classes ruled out).
    Probs(Tensor<2>),
    /// The same as log-probabilities (`−inf` allowed).
    LogProbs(Tensor<2>),
}

impl From<Tensor<2>> for TeacherOutput {
    fn from(logits: Tensor<2>) -> Self {
        Self::Logits(logits)
    }
}

impl TeacherOutput {
    /// The tensor and the argument name that errors use for it.
    fn parts(&self) -> (&Tensor<2>, &'static str) {
        match self {
            Self::Logits(t) => (t, "teacher_logits"),
            Self::Probs(t) => (t, "teacher_probs"),
            Self::LogProbs(t) => (t, "teacher_log_probs"),
        }
    }
}

/// The teacher as `p = softmax(values / temperature)`, outside the graph.
struct PreparedTeacher {
    values: Tensor<2>,
    temperature: f64,
}

/// Batch mean, or the mean over the kept rows.
fn reduce(rows: Tensor<1>, keep_rows: Option<Tensor<1, Bool>>) -> Tensor<1> {
    match keep_rows {
        Some(keep) => or_panic(crate::divergence::try_masked_mean(rows, keep)),
        None => rows.mean(),
    }
}

/// Cross-entropy of `softmax(logits)` (T = 1) against integer labels, per row.
fn hard_rows(student_logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [batch] = targets.dims();
    let log_probs = or_panic(try_log_softmax(student_logits, 1.0, 1));
    log_probs
        .gather(1, targets.reshape([batch, 1]))
        .reshape([batch])
        .neg()
}

/// One label per row.
fn check_targets_length(targets: &Tensor<1, Int>, batch: usize) -> Result<(), DistillError> {
    let [length] = targets.dims();
    if length == batch {
        Ok(())
    } else {
        Err(DistillError::TargetsLength {
            targets: length,
            batch,
        })
    }
}

/// One label per row, each in `0..classes`.
///
/// Reads back the labels' minimum and maximum (one small transfer) so that a bad
/// label is reported by value instead of gathering out of bounds inside burn.
pub(crate) fn check_targets(
    targets: &Tensor<1, Int>,
    batch: usize,
    classes: usize,
) -> Result<(), DistillError> {
    check_targets_length(targets, batch)?;
    check_index_bounds("targets", targets, classes)
}

/// Every entry of `indices` lies in `0..classes`. Reads back only their
/// minimum and maximum (one small transfer).
pub(crate) fn check_index_bounds(
    argument: &'static str,
    indices: &Tensor<1, Int>,
    classes: usize,
) -> Result<(), DistillError> {
    let bounds = Tensor::cat(vec![indices.clone().min(), indices.clone().max()], 0).into_data();
    check_label_values(argument, &bounds.iter::<i64>().collect::<Vec<_>>(), classes)
}

/// Every label in `values` lies in `0..classes`; otherwise the smallest negative
/// label, or else the largest too-large one, is reported.
pub(crate) fn check_label_values(
    argument: &'static str,
    values: &[i64],
    classes: usize,
) -> Result<(), DistillError> {
    let min = values.iter().copied().min().unwrap_or(0);
    let max = values.iter().copied().max().unwrap_or(0);
    let offending = if min < 0 {
        Some(min)
    } else if max >= classes as i64 {
        Some(max)
    } else {
        None
    };
    match offending {
        Some(label) => Err(DistillError::LabelOutOfRange {
            argument,
            label,
            num_classes: classes,
        }),
        None => Ok(()),
    }
}
