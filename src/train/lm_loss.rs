//! How an [`LmDistiller`](super::LmDistiller) feeds its loss: the student's
//! and the teacher's outputs for one micro-batch, flattened to
//! `[tokens, ·]` rows, and the per-token scores its metrics report.

use burn::tensor::{DType, Device, Int, Tensor, activation};

use super::teacher::LmTeacherSource;
use crate::check::positions_mismatch;
use crate::dkd::DkdLoss;
use crate::error::DistillError;
use crate::kd::KdLoss;
use crate::linear::{FusedLinearKdLoss, LinearTeacher, affine};
use crate::lm::{CausalLm, OutputLayer, TokenBatch};
use crate::loss::{DistillLoss, LinearStudent};
use crate::shape::flatten_rows;
use crate::teacher::TeacherOutput;
use crate::temperature::compute_dtype;

/// A [`DistillLoss`] an [`LmDistiller`](super::LmDistiller) trains with:
/// where its student and teacher inputs come from. Implemented for
/// [`KdLoss`] and [`DkdLoss`] (the student's logits) and for
/// [`FusedLinearKdLoss`] (the student's hidden states and output layer: the
/// `[tokens, vocab]` logits are never whole).
///
/// The distiller flattens each micro-batch to rows (`[micro · seq, ·]`), so
/// the loss is a `DistillLoss<2>`; the reduction's weights are the whole
/// batch's (see [`LmDistiller`](super::LmDistiller)).
pub trait LmLoss: DistillLoss<2> {
    /// The student's output for `batch`, flattened to rows.
    fn student_input<S: CausalLm>(&self, student: &S, batch: &TokenBatch) -> Self::Student;

    /// The student's output from its last hidden states `[micro, seq, d]`
    /// and its output layer, flattened to rows: the input when the
    /// distiller's feature terms took the hidden states from
    /// [`hidden_and_features`](CausalLm::hidden_and_features).
    fn student_from_hidden<S: CausalLm>(&self, student: &S, hidden: Tensor<3>) -> Self::Student;

    /// The teacher's output from [`LmTeacherSource::teach_with_features`]'
    /// hidden states (or logits, or top-k rows), flattened to rows.
    ///
    /// # Errors
    /// If its positions are not the batch's.
    fn teacher_from_linear(
        &self,
        teacher: LinearTeacher<3>,
        batch: &TokenBatch,
    ) -> Result<Self::Teacher, DistillError>;

    /// The teacher's output for `batch`, flattened to rows, on `device`.
    ///
    /// # Errors
    /// When the source cannot serve the batch, or its positions are not the
    /// batch's.
    fn teacher_input<T: LmTeacherSource>(
        &self,
        teacher: &T,
        batch: &TokenBatch,
        device: &Device,
    ) -> Result<Self::Teacher, DistillError>;

    /// Per row, without autodiff: the student's log-probability of `labels`
    /// (at `T = 1`) and its most probable token.
    fn student_scores(
        &self,
        student: &Self::Student,
        labels: &Tensor<1, Int>,
    ) -> (Tensor<1>, Tensor<1, Int>);

    /// The teacher's most probable token per row, without autodiff.
    fn teacher_top1(&self, teacher: &Self::Teacher) -> Tensor<1, Int>;

    /// The label that marks a position as not scored, if any.
    fn ignore_index(&self) -> Option<i64>;

    /// The dtype the loss computes in (f32 for f16/bf16 students).
    fn compute_dtype(&self, student: &Self::Student) -> DType;
}

/// A dense teacher flattened to rows, after checking its positions.
fn teacher_rows(
    teacher: TeacherOutput<3>,
    batch: &TokenBatch,
) -> Result<TeacherOutput, DistillError> {
    let [sequences, seq] = batch.dims();
    let dense = |values: Tensor<3>, argument: &'static str| {
        let [b, s, _] = values.dims();
        if [b, s] != [sequences, seq] {
            return Err(positions_mismatch(argument, &[b, s], &[sequences, seq]));
        }
        Ok(flatten_rows(values))
    };
    Ok(match teacher {
        TeacherOutput::Logits(v) => TeacherOutput::Logits(dense(v, "teacher logits")?),
        TeacherOutput::Probs(p) => TeacherOutput::Probs(dense(p, "teacher probs")?),
        TeacherOutput::LogProbs(p) => TeacherOutput::LogProbs(dense(p, "teacher log_probs")?),
        TeacherOutput::TopK(sparse) => TeacherOutput::TopK(sparse),
    })
}

/// The most probable class of each row of `scores`, `[rows]`.
fn argmax_rows(scores: Tensor<2>) -> Tensor<1, Int> {
    let [rows, _] = scores.dims();
    scores.argmax(1).reshape([rows])
}

/// Log-probability of `labels` and top-1 per row of `logits`.
fn scores_of(logits: Tensor<2>, labels: &Tensor<1, Int>) -> (Tensor<1>, Tensor<1, Int>) {
    let [rows, vocab] = logits.dims();
    let logits = logits.detach();
    // In range for the gather; a label out of range is refused by the loss.
    let labels = labels.clone().clamp(0, vocab as i64 - 1);
    let dtype = compute_dtype(logits.dtype());
    let log_probs = activation::log_softmax(logits.cast(dtype), 1);
    let picked = log_probs
        .clone()
        .gather(1, labels.reshape([rows, 1]))
        .reshape([rows]);
    (picked, argmax_rows(log_probs))
}

/// `f` over rows `start..end` of `rows` in chunks of `chunk` rows, the
/// results concatenated: per-row results without the whole `[rows, vocab]`.
fn by_chunks<O>(
    rows: usize,
    chunk: usize,
    mut f: impl FnMut(usize, usize) -> O,
    cat: impl Fn(Vec<O>) -> O,
) -> O {
    let chunk = chunk.max(1);
    cat((0..rows)
        .step_by(chunk)
        .map(|start| f(start, (start + chunk).min(rows)))
        .collect())
}

/// The teacher's most probable class per row, of any form, `[rows]`.
pub(super) fn top1_rows(teacher: &TeacherOutput) -> Tensor<1, Int> {
    match teacher {
        TeacherOutput::Logits(t) | TeacherOutput::Probs(t) | TeacherOutput::LogProbs(t) => {
            argmax_rows(t.clone().detach())
        }
        TeacherOutput::TopK(sparse) => {
            let [rows, _] = sparse.indices().dims();
            let best = sparse.log_probs().clone().detach().argmax(1);
            sparse.indices().clone().gather(1, best).reshape([rows])
        }
    }
}

/// `LmLoss` for a loss on the student's logits, `$ignore` its `ignore_index`.
macro_rules! logits_lm_loss {
    ($loss:ty, $ignore:expr) => {
        impl LmLoss for $loss {
            fn student_input<S: CausalLm>(&self, student: &S, batch: &TokenBatch) -> Tensor<2> {
                flatten_rows(student.logits(batch.tokens.clone(), batch.padding_mask.clone()))
            }

            fn student_from_hidden<S: CausalLm>(
                &self,
                student: &S,
                hidden: Tensor<3>,
            ) -> Tensor<2> {
                flatten_rows(student.output_layer().forward(hidden))
            }

            fn teacher_from_linear(
                &self,
                teacher: LinearTeacher<3>,
                batch: &TokenBatch,
            ) -> Result<TeacherOutput, DistillError> {
                let teacher = match teacher {
                    LinearTeacher::Hidden {
                        hidden,
                        weight,
                        bias,
                    } => TeacherOutput::Logits(OutputLayer { weight, bias }.forward(hidden)),
                    LinearTeacher::Logits(logits) => TeacherOutput::Logits(logits),
                    LinearTeacher::TopK(sparse) => TeacherOutput::TopK(sparse),
                };
                teacher_rows(teacher, batch)
            }

            fn teacher_input<T: LmTeacherSource>(
                &self,
                teacher: &T,
                batch: &TokenBatch,
                device: &Device,
            ) -> Result<TeacherOutput, DistillError> {
                teacher_rows(teacher.teach(batch, device)?, batch)
            }

            fn student_scores(
                &self,
                student: &Tensor<2>,
                labels: &Tensor<1, Int>,
            ) -> (Tensor<1>, Tensor<1, Int>) {
                scores_of(student.clone(), labels)
            }

            fn teacher_top1(&self, teacher: &TeacherOutput) -> Tensor<1, Int> {
                top1_rows(teacher)
            }

            fn ignore_index(&self) -> Option<i64> {
                let ignore: fn(&$loss) -> Option<i64> = $ignore;
                ignore(self)
            }

            fn compute_dtype(&self, student: &Tensor<2>) -> DType {
                compute_dtype(student.dtype())
            }
        }
    };
}

logits_lm_loss!(KdLoss, |kd| kd.config.ignore_index);
logits_lm_loss!(DkdLoss, |_| None);

impl LmLoss for FusedLinearKdLoss {
    fn student_input<S: CausalLm>(&self, student: &S, batch: &TokenBatch) -> LinearStudent {
        let hidden = student.hidden(batch.tokens.clone(), batch.padding_mask.clone());
        self.student_from_hidden(student, hidden)
    }

    fn student_from_hidden<S: CausalLm>(&self, student: &S, hidden: Tensor<3>) -> LinearStudent {
        let OutputLayer { weight, bias } = student.output_layer();
        LinearStudent {
            hidden: flatten_rows(hidden),
            weight,
            bias,
        }
    }

    fn teacher_from_linear(
        &self,
        teacher: LinearTeacher<3>,
        batch: &TokenBatch,
    ) -> Result<LinearTeacher, DistillError> {
        let [sequences, seq] = batch.dims();
        teacher.into_rows(&[sequences, seq])
    }

    fn teacher_input<T: LmTeacherSource>(
        &self,
        teacher: &T,
        batch: &TokenBatch,
        device: &Device,
    ) -> Result<LinearTeacher, DistillError> {
        self.teacher_from_linear(teacher.teach_linear(batch, device)?, batch)
    }

    fn student_scores(
        &self,
        student: &LinearStudent,
        labels: &Tensor<1, Int>,
    ) -> (Tensor<1>, Tensor<1, Int>) {
        let [rows, _] = student.hidden.dims();
        let vocab = student.weight.dims()[1];
        let weight = student.weight.clone().detach();
        let bias = student.bias.clone().map(Tensor::detach);
        let chunk = self.rows_per_chunk(vocab);
        by_chunks(
            rows,
            chunk,
            |start, end| {
                let hidden = student.hidden.clone().detach().slice(start..end);
                scores_of(
                    affine(hidden, weight.clone(), bias.clone()),
                    &labels.clone().slice(start..end),
                )
            },
            |parts| {
                let (picked, top1): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
                (Tensor::cat(picked, 0), Tensor::cat(top1, 0))
            },
        )
    }

    fn teacher_top1(&self, teacher: &LinearTeacher) -> Tensor<1, Int> {
        match teacher {
            LinearTeacher::Hidden {
                hidden,
                weight,
                bias,
            } => {
                let [rows, _] = hidden.dims();
                // The loss's chunks: top-1 holds no more logits than it does.
                let chunk = self.rows_per_chunk(weight.dims()[1]);
                by_chunks(
                    rows,
                    chunk,
                    |start, end| {
                        let hidden = hidden.clone().detach().slice(start..end);
                        argmax_rows(affine(hidden, weight.clone().detach(), bias.clone()))
                    },
                    |parts| Tensor::cat(parts, 0),
                )
            }
            LinearTeacher::Logits(logits) => argmax_rows(logits.clone().detach()),
            LinearTeacher::TopK(sparse) => top1_rows(&TeacherOutput::TopK(sparse.clone())),
        }
    }

    fn ignore_index(&self) -> Option<i64> {
        self.kd.config.ignore_index
    }

    fn compute_dtype(&self, student: &LinearStudent) -> DType {
        compute_dtype(student.hidden.dtype())
    }
}
