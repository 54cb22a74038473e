//! The knowledge-distillation loss (Hinton, Vinyals & Dean 2015, §2), with the
//! divergence as a setting.
//!
//! ```text
//! L = soft_weight · T² · D(softmax(v/T), softmax(z/T))  +  hard_weight · CE(softmax(z), y)
//! ```
//! with student logits `z`, teacher logits `v`, labels `y`, temperature `T` and
//! `D` the configured [`Divergence`] (by default `KL(p ‖ q)`, the paper's).
//! Both terms are "batchmean": summed over classes, averaged over rows — never a
//! mean over classes too, which would silently divide the soft term by the
//! number of classes (a bug reported against several KD codebases).
//!
//! Why `T²`: the soft term's gradient is `∂KL/∂z_i = (q_i − p_i)/T` (eq. 2), so it
//! shrinks as `1/T²` once the logits are small next to `T` (eq. 4). Multiplying
//! by `T²` keeps the soft gradient's size — and so the balance between the two
//! weights — unchanged when `T` is tuned. Every divergence here is a smooth
//! function of `p` and `q` that vanishes at `q = p`, so the same holds for each.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::tensor::{DType, Int, Tensor};

use crate::check::{BadPositions, ValueChecks, check_temperature, check_weight};
use crate::display::one_line_display;
use crate::divergence::Divergence;
use crate::error::{DistillError, or_panic};
use crate::fused::{self, FusedLoss, FusedSpec, Kernel};
use crate::reduction::Reducer;
use crate::shape::{LogitsShape, flatten_rows, positions_of, to_rows};
use crate::sparse::bucket_log_probs;
use crate::targets::{Targets, blank_left_out_rows, usable_labels};
use crate::teacher::{PreparedTeacher, TeacherOutput};
use crate::temperature::{compute_dtype, log_softmax_unchecked, standardize};
use crate::vocabulary::VocabularyRule;

/// Configuration of a [`KdLoss`].
///
/// ```
/// use burn_distill::{Divergence, KdLossConfig};
///
/// let loss = KdLossConfig::new().with_temperature(20.0).init();
/// assert_eq!(loss.config().temperature, 20.0);
/// assert_eq!(loss.config().soft_weight, 0.9);
/// assert_eq!(loss.config().divergence, Divergence::ForwardKl);
/// let jsd = KdLossConfig::new().with_divergence(Divergence::Jsd { beta: 0.5 }).init();
/// assert_eq!(jsd.config().divergence, Divergence::Jsd { beta: 0.5 });
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
    /// The divergence of the soft term. Default: [`Divergence::ForwardKl`].
    #[config(default = "Divergence::ForwardKl")]
    pub divergence: Divergence,
    /// Where it serves — f32 compute (f32, f16 and bf16 inputs) on flex
    /// (with this crate's `flex` feature, on by default) or ndarray (with
    /// its `ndarray` feature), with a dense or a top-k teacher — compute the
    /// values and the gradient with respect to the student in closed form for
    /// every [`Divergence`], `soft_weight·(f/T)·(h − q·Σh) + hard_weight·(softmax(z) − onehot)`
    /// per row (`f` = T² or 1, `h_j = q_j·∂D/∂q_j` the divergence's own
    /// factor), in one fused, multi-threaded CPU kernel that reads burn's
    /// buffers in place and registers a single autodiff node, instead of
    /// letting autodiff walk back through every softmax, log and product.
    /// Same values and gradients, an order of magnitude faster at large
    /// vocabularies (BENCHMARKS.md). With the `cube-kernel` feature, the same
    /// on burn's Cube devices (wgpu, CUDA, …) for a dense teacher, by a
    /// CubeCL kernel. Elsewhere, and with `false`, the loss is
    /// burn ops differentiated by autodiff (the reference the kernel is
    /// tested against). Default: true.
    #[config(default = true)]
    pub fused_kernel: bool,
    /// Rows whose label equals this (e.g. `-100` for padding tokens, as in
    /// PyTorch) are left out: they contribute 0, get no gradient, and are not
    /// counted by [`Reduction::Mean`](crate::Reduction::Mean).
    /// Default: None.
    #[config(default = "None")]
    pub ignore_index: Option<i64>,
    /// How a dense teacher with another number of classes than the student
    /// is matched to it, by id ([`VocabularyRule`]: cut a wider teacher, pad a
    /// narrower one with zero mass, or take the soft term over the shared
    /// ids). Default: [`VocabularyRule::Same`], where any difference is a
    /// shape mismatch, because a vocabulary silently matched by id is wrong
    /// whenever the two do not share their ids.
    #[config(default = "VocabularyRule::Same")]
    pub vocabulary: VocabularyRule,
    /// Standardise teacher and student logits per row before the temperature
    /// ([`standardize`]; Sun et al., CVPR 2024), for the soft term only. Needs
    /// finite logits, at least 2 classes, and the teacher as logits. Default: false.
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
    /// finite and > 0, a weight that is negative or not finite, both weights 0,
    /// or a divergence parameter out of its range.
    pub fn try_init(&self) -> Result<KdLoss, DistillError> {
        check_temperature("temperature", self.temperature)?;
        check_weight("soft_weight", self.soft_weight)?;
        check_weight("hard_weight", self.hard_weight)?;
        self.divergence.check()?;
        if self.soft_weight == 0.0 && self.hard_weight == 0.0 {
            return Err(DistillError::AllWeightsZero {
                soft_weight: self.soft_weight,
                hard_weight: self.hard_weight,
            });
        }
        Ok(KdLoss {
            config: self.clone(),
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
    /// The soft term before weighting: `T² · D(p_T, q_T)` (or `D` alone when
    /// `scale_by_t_squared` is off), reduced over the kept positions as the
    /// targets' [`Reduction`](crate::Reduction) says, `[1]`.
    pub soft: Tensor<1>,
    /// The hard term before weighting: cross-entropy of the student at `T = 1`
    /// against the labels, reduced the same way, `[1]`; 0 without labels.
    pub hard: Tensor<1>,
}

/// The knowledge-distillation loss; build it with [`KdLossConfig`].
///
/// A [`Module`] with no parameters, so it can be a field of a model. Three
/// forwards share one computation: [`forward`](Self::forward) (the mean),
/// [`forward_parts`](Self::forward_parts) (the mean and its two terms) and
/// [`forward_no_reduction`](Self::forward_no_reduction) (per position). Each
/// panics on bad input with the message of the [`DistillError`] that
/// [`check`](Self::check) returns for it, before any tensor operation.
///
/// # Shapes
/// - `student_logits`: `[rows, classes]`, or a language model's
///   `[batch, seq, vocab]` (its positions are then its tokens; see
///   [`LogitsShape`]), any float dtype (f16 and bf16 are computed in f32
///   inside and the results returned in the input dtype)
/// - `teacher`: a [`TeacherOutput`] (or a tensor of logits) of the same
///   shape, on the same device; a teacher of another float dtype is cast to
///   the student's compute dtype
/// - `targets`: [`Targets`] (or an `Int` tensor of labels) with the logits'
///   positions, `[rows]` or `[batch, seq]`; a padding mask there too
/// - output: `[1]`, or the positions' shape without reduction
///
/// The flattening of `[batch, seq, vocab]` to `[batch·seq, vocab]` is the
/// loss's: the result equals the same loss on the flattened tensors.
///
/// # Masked classes
/// A class that is `−inf` in both the teacher's and the student's logits
/// contributes exactly 0 to the loss and the gradient. A class the teacher gives
/// a finite logit but the student `−inf` makes forward KL `+inf` — the
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
    /// The settings, checked by [`KdLossConfig::try_init`].
    #[module(skip)]
    pub(crate) config: KdLossConfig,
}

impl ModuleDisplay for KdLoss {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        one_line_display()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("temperature", &self.config.temperature)
            .add("soft_weight", &self.config.soft_weight)
            .add("hard_weight", &self.config.hard_weight)
            .add("scale_by_t_squared", &self.config.scale_by_t_squared)
            .add("divergence", &format!("{:?}", self.config.divergence))
            .add("fused_kernel", &self.config.fused_kernel)
            .add("ignore_index", &format!("{:?}", self.config.ignore_index))
            .add("vocabulary", &format!("{:?}", self.config.vocabulary))
            .add("logit_standardization", &self.config.logit_standardization)
            .optional()
    }
}

/// Which columns a computation returns.
#[derive(Clone, Copy, PartialEq)]
enum Columns {
    /// The weighted total per row.
    Total,
    /// The unweighted soft and hard terms per row.
    Parts,
}

/// Per-position results before the reduction.
struct Rows {
    /// `[total]` or `[soft, hard]` (hard is `None` without labels).
    total_or_soft: Tensor<1>,
    hard: Option<Tensor<1>>,
    /// Positions that count, their weights, bad positions.
    reducer: Reducer,
    /// The student's positions (`[rows]` or `[batch, seq]`).
    positions: Vec<usize>,
    /// The student's dtype, to which the results are cast back.
    dtype: DType,
}

impl Rows {
    /// `values` reduced as the targets say (NaN if a position is bad).
    fn reduce(&self, values: Tensor<1>) -> Tensor<1> {
        self.reducer.reduce(values)
    }

    /// `values` per position, 0 where a position does not count, NaN where
    /// it is bad.
    fn per_position(&self, values: Tensor<1>) -> Tensor<1> {
        self.reducer.per_position(values)
    }
}

impl KdLoss {
    /// The settings the loss was made with: every field of its
    /// [`KdLossConfig`]. Each is also shown by the loss's `Display`.
    ///
    /// ```
    /// use burn_distill::{KdLossConfig, VocabularyRule};
    ///
    /// let kd = KdLossConfig::new()
    ///     .with_ignore_index(Some(-100))
    ///     .with_vocabulary(VocabularyRule::TruncateTeacher)
    ///     .with_logit_standardization(true)
    ///     .init();
    /// let config = kd.config();
    /// assert_eq!(config.ignore_index, Some(-100));
    /// assert!(config.vocabulary == VocabularyRule::TruncateTeacher && config.logit_standardization);
    /// let shown = kd.to_string();
    /// for setting in ["ignore_index: Some(-100)", "vocabulary: TruncateTeacher", "logit_standardization: true"] {
    ///     assert!(shown.contains(setting), "{setting} not in {shown}");
    /// }
    /// ```
    pub fn config(&self) -> KdLossConfig {
        self.config.clone()
    }

    /// `soft_weight · T² · D + hard_weight · CE`, reduced over the kept
    /// positions (by default their mean); `[1]`.
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
        or_panic(self.try_forward(student_logits, teacher.into(), targets.into()))
    }

    /// [`forward`](Self::forward), with bad input as the `DistillError` of
    /// [`check`](Self::check) (made once, here).
    pub(crate) fn try_forward<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: TeacherOutput<D>,
        targets: Targets,
    ) -> Result<Tensor<1>, DistillError> {
        let rows = self.rows(student_logits, teacher, targets, Columns::Total)?;
        Ok(rows.reduce(rows.total_or_soft.clone()).cast(rows.dtype))
    }

    /// The total and its two unweighted terms; see [`KdLossOutput`]. Each term
    /// carries its own gradient, so any combination of them trains.
    ///
    /// # Panics
    /// As [`forward`](Self::forward).
    pub fn forward_parts<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: impl Into<TeacherOutput<D>>,
        targets: impl Into<Targets>,
    ) -> KdLossOutput
    where
        Tensor<D>: LogitsShape,
    {
        or_panic(self.try_forward_parts(student_logits, teacher.into(), targets.into()))
    }

    /// [`forward_parts`](Self::forward_parts), or the error of [`check`](Self::check).
    pub(crate) fn try_forward_parts<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: TeacherOutput<D>,
        targets: Targets,
    ) -> Result<KdLossOutput, DistillError> {
        let rows = self.rows(student_logits, teacher, targets, Columns::Parts)?;
        let soft = rows.reduce(rows.total_or_soft.clone());
        let hard = match rows.hard.clone() {
            Some(hard) => rows.reduce(hard),
            None => soft.zeros_like(),
        };
        let total =
            weighted(&soft, self.config.soft_weight) + weighted(&hard, self.config.hard_weight);
        Ok(KdLossOutput {
            total: total.cast(rows.dtype),
            soft: soft.cast(rows.dtype),
            hard: hard.cast(rows.dtype),
        })
    }

    /// The weighted total per position — `[rows]` for `[rows, classes]`
    /// logits, `[batch, seq]` for `[batch, seq, vocab]`; positions that do not
    /// count are 0. With the default [`Reduction::Mean`](crate::Reduction::Mean),
    /// its mean over the kept positions is [`forward`](Self::forward).
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
        let rows = or_panic(self.rows(
            student_logits,
            teacher.into(),
            targets.into(),
            Columns::Total,
        ));
        let values = rows
            .per_position(rows.total_or_soft.clone())
            .cast(rows.dtype);
        <Tensor<D> as LogitsShape>::per_position(values, &rows.positions)
    }

    /// Checks everything the forwards check, without computing the loss: for
    /// callers that must validate untrusted input without panicking, and for
    /// the checks of values a forward on a device backend leaves to the
    /// device (see the crate's "Checks"). Reads back the labels' bounds, a
    /// top-k teacher's indices (their range, and no class twice in a row) and,
    /// for [`TeacherOutput::Probs`], their minimum (a few scalars and the
    /// `[batch, k]` indices; on a GPU each read is a wait for the device).
    ///
    /// ```
    /// use burn::tensor::{Device, Int, Tensor};
    /// use burn_distill::{DistillError, KdLossConfig, TeacherOutput, Targets};
    ///
    /// let device = Device::flex();
    /// let kd = KdLossConfig::new().init();
    /// let student = Tensor::<2>::zeros([2, 151936], &device);
    /// let teacher = TeacherOutput::Logits(Tensor::<2>::zeros([2, 152064], &device));
    /// let labels = Targets::new(Tensor::<1, Int>::from_ints([0, 1], &device));
    /// let error = kd.check(&student, &teacher, &labels).unwrap_err();
    /// assert!(matches!(error, DistillError::ShapeMismatch { .. }));
    /// assert!(error.to_string().contains("152064"));
    /// ```
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
        let classes = student_logits.dims()[1];
        let (vocabulary, divergence) = (self.config.vocabulary, self.config.divergence);
        let bad = teacher.check(student_logits, vocabulary, divergence, values)?;
        if self.config.logit_standardization {
            if !matches!(teacher, TeacherOutput::Logits(_)) {
                return Err(DistillError::UnsupportedTeacher {
                    teacher: teacher.tensor().1,
                    reason: "logit_standardization needs the teacher's logits",
                });
            }
            if classes < 2 {
                return Err(DistillError::InvalidParameter {
                    argument: "classes",
                    value: classes,
                    requirement: "at least 2 with logit_standardization (a z-score needs two values)",
                });
            }
        }
        let labels = targets.check(
            "student_logits",
            student_logits,
            classes,
            positions,
            self.config.ignore_index,
            values,
        )?;
        Ok(bad.union(labels))
    }

    /// The per-position terms after the checks.
    fn rows<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: TeacherOutput<D>,
        targets: Targets,
        columns: Columns,
    ) -> Result<Rows, DistillError> {
        let (student_logits, teacher, positions) = to_rows(student_logits, teacher)?;
        let values = ValueChecks::for_forward(&student_logits.device());
        let bad = self.check_rows(&student_logits, &teacher, &targets, &positions, values)?;
        let classes = student_logits.dims()[1];
        // The classes of the soft term (the student's, or the ids both have;
        // each model's own for ULD), decided here for every path.
        let (soft_classes, teacher_classes) =
            teacher.classes().map_or((classes, classes), |found| {
                let config = &self.config;
                config
                    .vocabulary
                    .soft_classes(found, classes, config.divergence)
            });
        let dtype = student_logits.dtype();
        let (t, standardized) = (self.config.temperature, self.config.logit_standardization);
        let (student, teacher) = match self.kernel_reads_half(&student_logits, &teacher) {
            // The Cube kernel reads f16/bf16 logits into f32 itself: no f32 copy.
            Some(teacher_dtype) => (
                student_logits,
                teacher.prepare(teacher_classes, t, teacher_dtype, standardized),
            ),
            None => {
                let compute = compute_dtype(dtype);
                (
                    student_logits.cast(compute),
                    teacher.prepare(teacher_classes, t, compute, standardized),
                )
            }
        };
        let keep = targets.kept_rows(self.config.ignore_index);
        let weights = targets.position_weights(keep.as_ref(), &positions, compute_dtype(dtype));
        let labels = targets
            .labels
            .map(|labels| usable_labels(labels, self.config.ignore_index, classes));
        let kernel = self.kernel(&student, &teacher);
        // Wherever autodiff runs through the rows (its path, or a view of the
        // student before the kernel), left-out rows are zeroed first (see
        // `blank_left_out_rows`); the kernel alone needs no such copy.
        let views = self.views_student(soft_classes, classes);
        let (student, teacher) = match kernel.is_none() || views {
            true => (
                blank_left_out_rows(student, keep.as_ref()),
                teacher.blank_left_out_rows(keep.as_ref()),
            ),
            false => (student, teacher),
        };
        let (total_or_soft, hard) = match kernel {
            Some(kernel) => {
                self.kernel_rows(kernel, student, &teacher, labels, soft_classes, columns)
            }
            None => {
                let view = self.student_view(student.clone(), soft_classes);
                let soft = self.soft_rows(view, teacher);
                let hard = labels.map(|labels| hard_rows(student, labels));
                self.arrange(soft, hard, columns)
            }
        };
        Ok(Rows {
            total_or_soft,
            hard,
            reducer: Reducer { keep, weights, bad },
            positions,
            dtype,
        })
    }

    /// The factor applied to the divergence: `T²`, or 1 when scaling is off.
    fn soft_factor(&self) -> f64 {
        if self.config.scale_by_t_squared {
            self.config.temperature * self.config.temperature
        } else {
            1.0
        }
    }

    /// The fused engine that computes the terms, if the setting is on and
    /// one serves these tensors ([`fused::plan`]).
    fn kernel(&self, student: &Tensor<2>, teacher: &PreparedTeacher) -> Option<Kernel> {
        let (values, top_k) = match teacher {
            PreparedTeacher::Dense(dense) => (&dense.values, false),
            PreparedTeacher::TopK { log_probs, .. } => (log_probs, true),
        };
        let loss = FusedLoss::Kd(self.config.divergence);
        self.config
            .fused_kernel
            .then(|| fused::plan(student, values, top_k, loss))
            .flatten()
    }

    /// `Some(the teacher's dtype)` when the fused Cube kernel will take these
    /// f16/bf16 logits as they are: the kernel on, no standardisation (burn
    /// ops in f32 there), a teacher of logits or log-probabilities (not
    /// probabilities, whose log would be taken in half precision; not top-k).
    fn kernel_reads_half(&self, student: &Tensor<2>, teacher: &TeacherOutput) -> Option<DType> {
        let values = match teacher {
            TeacherOutput::Logits(v) | TeacherOutput::LogProbs(v) => v,
            _ => return None,
        };
        // Another vocabulary is cut or padded first, in f32.
        if values.dims()[1] != student.dims()[1] {
            return None;
        }
        let native = self.config.fused_kernel
            && !self.config.logit_standardization
            && fused::reads_half(student, values, FusedLoss::Kd(self.config.divergence));
        native.then(|| values.dtype())
    }

    /// Whether the soft term is computed apart from the hard term: on other
    /// logits (standardised ones, or the ids a narrower teacher shares,
    /// [`VocabularyRule::SharedIds`]) or by ULD's kernel, which computes the
    /// soft term alone.
    fn views_student(&self, soft_classes: usize, classes: usize) -> bool {
        self.config.logit_standardization
            || soft_classes < classes
            || self.config.divergence == Divergence::Uld
    }

    /// The student's logits as the soft term sees them: its first
    /// `soft_classes`, standardised when `logit_standardization` is on (inside
    /// the graph, so autodiff carries the gradient through both).
    fn student_view(&self, student: Tensor<2>, soft_classes: usize) -> Tensor<2> {
        let [batch, classes] = student.dims();
        let student = match soft_classes < classes {
            true => student.slice([0..batch, 0..soft_classes]),
            false => student,
        };
        match self.config.logit_standardization {
            true => standardize(student),
            false => student,
        }
    }

    /// The per-row terms by the fused kernel. Where the soft term sees the
    /// student's logits as they are, both terms come from it (one gradient
    /// buffer for the total); where it sees a view (standardised, or the
    /// shared ids), the kernel takes the view for the soft term and the hard
    /// term is autodiff on the raw logits.
    fn kernel_rows(
        &self,
        kernel: Kernel,
        student: Tensor<2>,
        teacher: &PreparedTeacher,
        labels: Option<Tensor<1, Int>>,
        soft_classes: usize,
        columns: Columns,
    ) -> (Tensor<1>, Option<Tensor<1>>) {
        let [batch, classes] = student.dims();
        // A top-k teacher's log-probabilities are already at the temperature.
        let (values, indices, teacher_temperature) = match teacher {
            PreparedTeacher::Dense(dense) => (dense.values.clone(), None, dense.temperature),
            PreparedTeacher::TopK { indices, log_probs } => (log_probs.clone(), Some(indices), 1.0),
        };
        let spec = |weights| FusedSpec {
            temperature: self.config.temperature,
            teacher_temperature,
            soft_factor: self.soft_factor(),
            weights,
            loss: FusedLoss::Kd(self.config.divergence),
        };
        let kernel = |student: &Tensor<2>, labels: Option<&Tensor<1, Int>>, weights| {
            fused::columns(kernel, student, &values, indices, labels, spec(weights))
        };
        if self.views_student(soft_classes, classes) {
            let view = self.student_view(student.clone(), soft_classes);
            let soft = kernel(&view, None, vec![(1.0, 0.0)]);
            let hard = labels.map(|labels| hard_rows(student, labels));
            return self.arrange(soft.squeeze_dim(1), hard, columns);
        }
        let weights = match (columns, labels.is_some()) {
            (Columns::Total, _) => vec![(self.config.soft_weight, self.config.hard_weight)],
            (Columns::Parts, true) => vec![(1.0, 0.0), (0.0, 1.0)],
            (Columns::Parts, false) => vec![(1.0, 0.0)],
        };
        let out = kernel(&student, labels.as_ref(), weights);
        let column = |k: usize| out.clone().slice([0..batch, k..k + 1]).squeeze_dim(1);
        match (columns, labels.is_some()) {
            (Columns::Parts, true) => (column(0), Some(column(1))),
            _ => (column(0), None),
        }
    }

    /// The unweighted terms as `columns` asks: both, or their weighted sum.
    fn arrange(
        &self,
        soft: Tensor<1>,
        hard: Option<Tensor<1>>,
        columns: Columns,
    ) -> (Tensor<1>, Option<Tensor<1>>) {
        match (columns, hard) {
            (Columns::Parts, hard) => (soft, hard),
            (Columns::Total, Some(hard)) => (
                weighted(&soft, self.config.soft_weight) + weighted(&hard, self.config.hard_weight),
                None,
            ),
            (Columns::Total, None) => (weighted(&soft, self.config.soft_weight), None),
        }
    }

    /// `T² · D(p, q)` per row from burn ops, differentiated by autodiff (the
    /// reference path), for a dense or a top-k teacher.
    fn soft_rows(&self, student: Tensor<2>, teacher: PreparedTeacher) -> Tensor<1> {
        let (student_log_probs, teacher_log_probs) = match teacher {
            // The temperatures were validated by try_init.
            PreparedTeacher::Dense(dense) => (
                log_softmax_unchecked(student, self.config.temperature, 1),
                log_softmax_unchecked(dense.values, dense.temperature, 1),
            ),
            PreparedTeacher::TopK { indices, log_probs } => {
                bucket_log_probs(student, indices, log_probs, self.config.temperature)
            }
        };
        let rows = self
            .config
            .divergence
            .rows_unchecked(student_log_probs, teacher_log_probs);
        match self.config.scale_by_t_squared {
            true => rows.mul_scalar(self.soft_factor()),
            false => rows,
        }
    }
}

/// `w · term`, where a zero weight contributes nothing even when the term is
/// infinite (no `0 · inf` NaN).
fn weighted(term: &Tensor<1>, weight: f64) -> Tensor<1> {
    if weight == 0.0 {
        term.zeros_like()
    } else {
        term.clone().mul_scalar(weight)
    }
}

/// The hard-label cross-entropy at `T = 1` alone, reduced as `targets` say
/// (labels required; `ignore_index` as [`KdLossConfig::ignore_index`]), `[1]`.
pub(crate) fn try_hard_loss<const D: usize>(
    student_logits: Tensor<D>,
    targets: Targets,
    ignore_index: Option<i64>,
) -> Result<Tensor<1>, DistillError> {
    let positions = positions_of(&student_logits);
    let student = flatten_rows(student_logits);
    let classes = student.dims()[1];
    let Some(labels) = targets.labels.clone() else {
        return Err(DistillError::MissingLabels);
    };
    let bad = targets.check(
        "student_logits",
        &student,
        classes,
        &positions,
        ignore_index,
        ValueChecks::for_forward(&student.device()),
    )?;
    let dtype = student.dtype();
    let keep = targets.kept_rows(ignore_index);
    let weights = targets.position_weights(keep.as_ref(), &positions, compute_dtype(dtype));
    let student = blank_left_out_rows(student.cast(compute_dtype(dtype)), keep.as_ref());
    let rows = hard_rows(student, usable_labels(labels, ignore_index, classes));
    let reducer = Reducer { keep, weights, bad };
    Ok(reducer.reduce(rows).cast(dtype))
}

/// Cross-entropy of `softmax(logits)` (T = 1) against integer labels, per row.
pub(crate) fn hard_rows(student_logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [batch] = labels.dims();
    let log_probs = log_softmax_unchecked(student_logits, 1.0, 1);
    log_probs
        .gather(1, labels.reshape([batch, 1]))
        .reshape([batch])
        .neg()
}
