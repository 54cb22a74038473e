//! What the teacher provides to a loss: its logits, its distribution at the
//! distillation temperature, or its top-k classes; checked and put in one
//! form here for every loss.

use burn::tensor::{Bool, DType, Int, Tensor};

use crate::check::{BadPositions, ValueChecks, check_device, check_non_empty, check_same_shape};
use crate::diagnostics::read_back;
use crate::divergence::Divergence;
use crate::error::DistillError;
use crate::sparse::SparseTeacher;
use crate::targets::blank_left_out_rows;
use crate::temperature::standardize;
use crate::vocabulary::VocabularyRule;

/// What the teacher provides to [`KdLoss`](crate::KdLoss) and
/// [`DkdLoss`](crate::dkd::DkdLoss).
///
/// Its rank `D` is the student's: 2 for `[rows, classes]` logits, 3 for a
/// language model's `[batch, seq, vocab]`; the teacher has the student's
/// positions (its shape without the class axis).
///
/// A `Tensor<D>` converts into [`TeacherOutput::Logits`] and a
/// [`SparseTeacher`] into [`TeacherOutput::TopK`], so
/// `kd.forward(student, teacher_logits, labels)` needs no wrapper. The teacher
/// is detached inside: it never receives a gradient.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::{KdLossConfig, TeacherOutput, Targets};
///
/// let device = Device::flex();
/// let student = Tensor::<2>::from_floats([[1.0, 0.0]], &device);
/// let kd = KdLossConfig::new().with_temperature(2.0).init();
/// // The teacher's softened distribution itself, e.g. an ensemble's average.
/// let soft_targets = Tensor::<2>::from_floats([[0.7, 0.3]], &device);
/// let soft = |teacher: TeacherOutput| {
///     let parts = kd.forward_parts(student.clone(), teacher, Targets::unlabelled());
///     parts.soft.into_scalar::<f32>()
/// };
/// let a = soft(TeacherOutput::Probs(soft_targets));
/// // The same targets as logits at T = 2: 2·ln(0.7), 2·ln(0.3).
/// let logits = Tensor::<2>::from_floats([[2.0 * 0.7f32.ln(), 2.0 * 0.3f32.ln()]], &device);
/// let b = soft(TeacherOutput::Logits(logits));
/// assert!((a - b).abs() < 1e-5);
/// ```
#[derive(Debug, Clone)]
// Built once per loss call and moved, never stored in bulk: boxing the larger
// variant would buy nothing and cost every caller a `Box`.
#[allow(clippy::large_enum_variant)]
pub enum TeacherOutput<const D: usize = 2> {
    /// Raw logits `v`, the student's shape (`[rows, classes]` or
    /// `[batch, seq, vocab]`): the soft targets are `softmax(v / T)`.
    Logits(Tensor<D>),
    /// Soft targets already at the distillation temperature, as probabilities
    /// (each row summing to 1; zeros allowed, meaning classes ruled out;
    /// negative or NaN entries are refused).
    Probs(Tensor<D>),
    /// The same as log-probabilities (`−inf` allowed).
    LogProbs(Tensor<D>),
    /// The teacher's top-k classes and their log-probabilities at the
    /// distillation temperature, the rest lumped into one tail bucket: every
    /// divergence is then taken over the `k + 1` buckets of both models
    /// (equal to the dense loss at `k = classes`). One row per position of
    /// the student (for `[batch, seq, vocab]` logits, row `b·seq + s` is token
    /// `s` of sequence `b`, as a teacher store's `rows_of` returns them). Not
    /// with logit standardisation, which needs the teacher's logits.
    TopK(SparseTeacher),
}

impl<const D: usize> From<Tensor<D>> for TeacherOutput<D> {
    fn from(logits: Tensor<D>) -> Self {
        Self::Logits(logits)
    }
}

impl<const D: usize> From<SparseTeacher> for TeacherOutput<D> {
    fn from(teacher: SparseTeacher) -> Self {
        Self::TopK(teacher)
    }
}

/// The teacher in the form a loss computes with, detached, on the student's
/// device and in its compute dtype.
#[allow(clippy::large_enum_variant)] // one per loss call, moved (as above)
pub(crate) enum PreparedTeacher {
    /// A distribution over every class.
    Dense(DenseTeacher),
    /// Top-k indices and their log-probabilities at the distillation temperature.
    TopK {
        indices: Tensor<2, Int>,
        log_probs: Tensor<2>,
    },
}

impl PreparedTeacher {
    /// The teacher with the rows that do not count set to 0 (see
    /// [`blank_left_out_rows`]).
    pub(crate) fn blank_left_out_rows(self, keep: Option<&Tensor<1, Bool>>) -> Self {
        match self {
            Self::Dense(dense) => Self::Dense(DenseTeacher {
                values: blank_left_out_rows(dense.values, keep),
                ..dense
            }),
            Self::TopK { indices, log_probs } => Self::TopK {
                indices,
                log_probs: blank_left_out_rows(log_probs, keep),
            },
        }
    }
}

/// A dense teacher: `p = softmax(values / temperature)`, over the classes
/// the soft term is taken over.
pub(crate) struct DenseTeacher {
    pub values: Tensor<2>,
    /// `T` for logits, 1 for (log-)probabilities.
    pub temperature: f64,
}

impl TeacherOutput {
    /// The dense tensor (or the top-k log-probabilities) and the argument name
    /// errors use for it.
    pub(crate) fn tensor(&self) -> (&Tensor<2>, &'static str) {
        match self {
            Self::Logits(t) => (t, "teacher_logits"),
            Self::Probs(t) => (t, "teacher_probs"),
            Self::LogProbs(t) => (t, "teacher_log_probs"),
            Self::TopK(t) => (t.log_probs(), "teacher.log_probs"),
        }
    }

    /// The number of classes of a dense teacher (`None` for top-k, which
    /// has no width of its own).
    pub(crate) fn classes(&self) -> Option<usize> {
        match self {
            Self::TopK(_) => None,
            _ => Some(self.tensor().0.dims()[1]),
        }
    }

    /// Checks the teacher against the student's `[batch, classes]` and device:
    /// the same shape (or another number of classes, as `vocabulary` and
    /// `divergence` allow),
    /// the same device; and, as `values` says (read back, or found on the
    /// device as the rows that have them), probabilities that are negative or
    /// NaN and top-k indices out of range.
    pub(crate) fn check(
        &self,
        student_logits: &Tensor<2>,
        vocabulary: VocabularyRule,
        divergence: Divergence,
        values: ValueChecks,
    ) -> Result<BadPositions, DistillError> {
        let student_shape = student_logits.dims();
        let [batch, classes] = student_shape;
        let (tensor, argument) = self.tensor();
        check_device("student_logits", student_logits, argument, tensor)?;
        if let Self::TopK(sparse) = self {
            vocabulary.check_teacher(argument, None, classes, divergence)?;
            return sparse.check_against(batch, classes, values);
        }
        let shape = tensor.dims();
        if shape[0] != batch || !vocabulary.fits(shape[1], classes, divergence) {
            check_same_shape("student_logits", &student_shape, argument, &shape)?;
        }
        vocabulary.check_teacher(argument, Some(shape[1]), classes, divergence)?;
        check_non_empty("student_logits", &student_shape)?;
        let Self::Probs(probs) = self else {
            return Ok(BadPositions::default());
        };
        match values {
            ValueChecks::Read => {
                let min = read_back(probs.clone().min().cast(DType::F64))
                    .iter::<f64>()
                    .next()
                    .unwrap_or(0.0);
                if min.is_nan() || min < 0.0 {
                    return Err(DistillError::InvalidProbabilities {
                        argument,
                        value: min,
                    });
                }
                Ok(BadPositions::default())
            }
            ValueChecks::OnDevice => {
                let bad = probs
                    .clone()
                    .lower_elem(0.0)
                    .bool_or(probs.clone().is_nan());
                Ok(BadPositions::default().or(bad.any_dim(1).reshape([batch])))
            }
        }
    }

    /// The checked teacher, detached, cast to `dtype`, standardised when
    /// asked (before anything is padded), with `classes` columns: cut when it
    /// has more (the caller checked the rule allows it), padded with zero
    /// mass (`−inf` log-values) when it has fewer.
    pub(crate) fn prepare(
        self,
        classes: usize,
        temperature: f64,
        dtype: DType,
        standardized: bool,
    ) -> PreparedTeacher {
        let fit = |t: Tensor<2>, standardize_it: bool| {
            let [batch, found] = t.dims();
            let t = t.detach().cast(dtype);
            let t = match found > classes {
                true => t.slice([0..batch, 0..classes]),
                false => t,
            };
            // Standardised over the classes the soft term sees, as the
            // student's view is.
            let t = match standardize_it {
                true => standardize(t),
                false => t,
            };
            match found < classes {
                true => {
                    let pad =
                        Tensor::<2>::full([batch, classes - found], f64::NEG_INFINITY, &t.device())
                            .cast(t.dtype());
                    Tensor::cat(vec![t, pad], 1)
                }
                false => t,
            }
        };
        // A cut distribution is renormalised by the log-softmax every path
        // applies to the teacher.
        match self {
            Self::Logits(v) => PreparedTeacher::Dense(DenseTeacher {
                values: fit(v, standardized),
                temperature,
            }),
            // log(0) of a padded class is −inf, as for a class the teacher
            // rules out itself.
            Self::Probs(p) => PreparedTeacher::Dense(DenseTeacher {
                values: fit(p.detach().cast(dtype).log(), false),
                temperature: 1.0,
            }),
            Self::LogProbs(log_p) => PreparedTeacher::Dense(DenseTeacher {
                values: fit(log_p, false),
                temperature: 1.0,
            }),
            Self::TopK(sparse) => {
                let (indices, log_probs) = sparse.into_parts();
                PreparedTeacher::TopK {
                    // In range already where they were read back; on the
                    // device a row with one out of range is NaN, and its
                    // indices clamped so that they index safely.
                    indices: indices.clamp(0, classes as i64 - 1),
                    log_probs: log_probs.detach().cast(dtype),
                }
            }
        }
    }
}
