//! Top-k sparse teachers, as TRL and DistillKit store them for LLM
//! distillation: per row, the teacher's `k` most likely classes with their
//! log-probabilities, and the remaining mass lumped into one tail bucket.
//!
//! The divergence is then taken over `k + 1` buckets: the teacher's `k` classes
//! and "everything else", for both models. With `k = C` it is the dense
//! divergence. [`TeacherOutput::TopK`](crate::TeacherOutput::TopK) gives a
//! [`SparseTeacher`] to [`KdLoss`](crate::KdLoss) with any divergence.

use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::check::{
    BadPositions, ValueChecks, check_device, check_temperature, check_top_k, check_top_k_log_probs,
    shape_mismatch,
};
use crate::error::DistillError;
use crate::fused;
use crate::temperature::{log_softmax, log_softmax_unchecked, scaled_logsumexp};
use crate::top_k::{Selection, TopKRows};

/// A teacher's top-k classes per row and their log-probabilities (normalised
/// over the full vocabulary, at the distillation temperature).
#[derive(Debug, Clone)]
pub struct SparseTeacher {
    indices: Tensor<2, Int>,
    log_probs: Tensor<2>,
}

impl SparseTeacher {
    /// From stored top-k indices `[N, k]` and log-probabilities `[N, k]`: one
    /// row per position (for a language model's tokens, row `b·seq + s` is
    /// token `s` of sequence `b`: `flatten(0, 1)` of `[batch, seq, k]`). The
    /// tail's mass is `1 − Σ exp(log_probs)` per row; the losses refuse a row
    /// whose `Σ exp(log_probs)` is NaN or above 1 by more than rounding (1e-2),
    /// naming it (raw logits given as log-probabilities, say).
    ///
    /// # Errors
    /// [`DistillError::ShapeMismatch`] if the shapes differ,
    /// [`DistillError::DeviceMismatch`] if the devices do.
    pub fn new(indices: Tensor<2, Int>, log_probs: Tensor<2>) -> Result<Self, DistillError> {
        let (a, b) = (indices.dims(), log_probs.dims());
        if a != b {
            return Err(shape_mismatch(
                "indices",
                &a,
                "log_probs",
                &b,
                "give one log-probability per index",
            ));
        }
        check_device("indices", &indices, "log_probs", &log_probs)?;
        Ok(Self { indices, log_probs })
    }

    /// The top `k` classes of dense teacher logits at temperature `T`, e.g. to
    /// cache a teacher's outputs in `k/C` of the memory.
    ///
    /// Row by row, largest first; among equal logits the smaller class. On
    /// flex and ndarray (f32, f16, bf16) the crate selects in one pass over
    /// each row, in place on the backend's buffer (the selection the teacher
    /// store's writer uses: 7.6 ms for 256 × 32,000 at k = 8 against 230 ms
    /// with burn's `topk`, which sorts every row — `cargo bench --bench
    /// store`); elsewhere burn's `topk` runs on the device. f16 and bf16
    /// logits are computed in f32 and their log-probabilities given back in
    /// the logits' dtype. A row holding a NaN or `+∞` gets NaN
    /// log-probabilities, as a log-softmax of it does (the teacher store's
    /// `append_logits` refuses such a row instead).
    ///
    /// # Errors
    /// [`DistillError::InvalidParameter`] if `k` is 0 or exceeds the number of
    /// classes, [`DistillError::InvalidTemperature`] for a bad `T`.
    ///
    /// ```
    /// use burn::tensor::{Device, Int, Tensor};
    /// use burn_distill::{KdLossConfig, SparseTeacher, Targets, TeacherOutput};
    ///
    /// let device = Device::flex();
    /// let v = Tensor::<2>::from_floats([[3.0, 1.0, 0.0, -1.0]], &device);
    /// let z = Tensor::<2>::from_floats([[1.0, 2.0, 0.5, 0.0]], &device);
    /// let kd = KdLossConfig::new().with_temperature(2.0).init();
    /// let soft = |teacher: TeacherOutput| {
    ///     let parts = kd.forward_parts(z.clone(), teacher, Targets::unlabelled());
    ///     parts.soft.into_scalar::<f32>()
    /// };
    /// // With k = C the top-k loss is the dense one.
    /// let top_all = SparseTeacher::top_k(v.clone(), 4, 2.0)?;
    /// let (a, b) = (soft(TeacherOutput::TopK(top_all)), soft(TeacherOutput::Logits(v)));
    /// assert!((a - b).abs() < 1e-6);
    /// # Ok::<(), burn_distill::DistillError>(())
    /// ```
    ///
    /// For a language model's `[batch, seq, vocab]` logits, pass
    /// `flatten(0, 1)` of them: token `s` of sequence `b` is then row
    /// `b·seq + s`, the row the losses read for it.
    pub fn top_k(
        teacher_logits: Tensor<2>,
        k: usize,
        temperature: f64,
    ) -> Result<Self, DistillError> {
        let [_, classes] = teacher_logits.dims();
        if k == 0 || k > classes {
            return Err(DistillError::InvalidParameter {
                argument: "k",
                value: k,
                requirement: "between 1 and the teacher's number of classes",
            });
        }
        check_temperature("temperature", temperature)?;
        // Half precision is computed in f32, as the losses compute it, and
        // given back in its dtype.
        let dtype = teacher_logits.dtype();
        let selection = Selection {
            k,
            temperature,
            with_tails: false,
            refuse_bad_rows: false,
        };
        if let Some(rows) = fused::host_top_k(&teacher_logits, selection) {
            let TopKRows {
                indices, log_probs, ..
            } = rows.expect("bad rows are not refused");
            let device = teacher_logits.device();
            let rows = teacher_logits.dims()[0];
            let log_probs = Tensor::<2>::from_data(TensorData::new(log_probs, [rows, k]), &device);
            return Ok(Self {
                indices: Tensor::from_data(TensorData::new(indices, [rows, k]), &device),
                log_probs: log_probs.cast(dtype),
            });
        }
        let logits = match dtype {
            DType::F16 | DType::BF16 => teacher_logits.detach().cast(DType::F32),
            _ => teacher_logits.detach(),
        };
        let log_p = log_softmax(logits, temperature, 1)?;
        let (log_probs, indices) = log_p.topk_with_indices(k, 1);
        Ok(Self {
            indices,
            log_probs: log_probs.cast(dtype),
        })
    }

    /// The stored classes, `[N, k]`.
    pub fn indices(&self) -> &Tensor<2, Int> {
        &self.indices
    }

    /// Their log-probabilities, `[N, k]`.
    pub fn log_probs(&self) -> &Tensor<2> {
        &self.log_probs
    }

    /// From rows of a teacher already checked (sliced, or moved off autodiff).
    pub(crate) fn from_checked(indices: Tensor<2, Int>, log_probs: Tensor<2>) -> Self {
        Self { indices, log_probs }
    }

    pub(crate) fn into_parts(self) -> (Tensor<2, Int>, Tensor<2>) {
        (self.indices, self.log_probs)
    }

    /// Checks the stored rows against a student's `[batch, classes]`.
    pub(crate) fn check_against(
        &self,
        batch: usize,
        classes: usize,
        values: ValueChecks,
    ) -> Result<BadPositions, DistillError> {
        let indices = check_top_k(&self.indices, batch, classes, values)?;
        Ok(indices.union(check_top_k_log_probs(&self.log_probs, values)?))
    }

    /// Number of stored classes per row.
    pub fn k(&self) -> usize {
        self.indices.dims()[1]
    }
}

/// The student's and the teacher's log-probabilities over the teacher's `k`
/// classes plus a tail bucket, `[N, k + 1]` each, with
/// `q = softmax(student_logits / T)`. The student's tail is the log-sum-exp of
/// its logits outside the teacher's classes (exact, no `1 − Σ` cancellation);
/// the teacher's is `1 − Σ p_k`, clamped at 0. With `k = C` both tails are
/// empty (`−inf`). A row with a class stored twice is NaN.
pub(crate) fn bucket_log_probs(
    student_logits: Tensor<2>,
    indices: Tensor<2, Int>,
    teacher_log_probs: Tensor<2>,
    temperature: f64,
) -> (Tensor<2>, Tensor<2>) {
    let [rows, classes] = student_logits.dims();
    let k = indices.dims()[1];
    let log_q = log_softmax_unchecked(student_logits.clone(), temperature, 1);
    let options = (&log_q.device(), log_q.dtype());
    // How often each class is among the teacher's.
    let marks = Tensor::<2>::zeros([rows, classes], options).scatter(
        1,
        indices.clone(),
        Tensor::ones([rows, k], options),
        burn::tensor::IndexingUpdateOp::Add,
    );
    // A class stored twice (which `check` refuses, and a forward on a device
    // does not read to refuse) makes its row NaN.
    let repeated = marks.clone().greater_elem(1.0).any_dim(1).expand([rows, k]);
    let student_top = log_q.gather(1, indices).mask_fill(repeated, f32::NAN);
    // With k = C nothing lies outside the teacher's classes: both tails are
    // empty (for the teacher, 1 − Σp would only be rounding noise).
    let empty_tail = || Tensor::full([rows, 1], f32::NEG_INFINITY, options);
    let (student_tail, teacher_tail) = if k == classes {
        (empty_tail(), empty_tail())
    } else {
        // The student's logits outside the teacher's classes, log-sum-exp'd.
        let outside = student_logits
            .clone()
            .mask_fill(marks.greater_elem(0.0), f32::NEG_INFINITY);
        let student_tail = scaled_logsumexp(outside, temperature, 1)
            - scaled_logsumexp(student_logits, temperature, 1);
        let teacher_tail = teacher_log_probs
            .clone()
            .exp()
            .sum_dim(1)
            .neg()
            .add_scalar(1.0)
            .clamp_min(0.0)
            .log();
        (student_tail, teacher_tail)
    };
    (
        Tensor::cat(vec![student_top, student_tail], 1),
        Tensor::cat(vec![teacher_log_probs, teacher_tail], 1),
    )
}
