//! What each row of a loss is scored against and how the rows are counted:
//! the hard labels (or none), a row mask, and the normaliser of the mean.

use burn::tensor::{Bool, Int, Tensor};

use crate::check::{
    check_device, check_index_bounds, check_mask_length, check_non_empty, check_targets_length,
};
use crate::error::DistillError;

/// The denominator of a loss's mean over rows.
///
/// With gradient accumulation or data parallelism a batch is split into
/// micro-batches whose losses are summed. Dividing each micro-batch by its own
/// count of kept rows weights its rows by `1/count_i` instead of `1/total`, so
/// the summed loss and gradient change with the split wherever masks leave the
/// micro-batches unequal. [`GlobalCount`](Self::GlobalCount) divides every
/// micro-batch by the same total, so the sum is exactly the full batch's loss.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::{KdLossConfig, Normalizer, Targets};
///
/// let device = Device::flex();
/// let kd = KdLossConfig::new().init();
/// let z = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]], &device);
/// let v = Tensor::<2>::from_floats([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]], &device);
/// let y = Tensor::<1, Int>::from_ints([0, 1, 1], &device);
/// let whole = kd.forward(z.clone(), v.clone(), y.clone()).into_scalar::<f32>();
/// // Two micro-batches of 2 and 1 rows, each divided by the 3 rows in all.
/// let part = |rows: std::ops::Range<usize>| {
///     let targets = Targets::new(y.clone().slice(rows.clone()))
///         .with_normalizer(Normalizer::GlobalCount(3));
///     let (z, v) = (z.clone().slice(rows.clone()), v.clone().slice(rows));
///     kd.forward(z, v, targets).into_scalar::<f32>()
/// };
/// assert!((part(0..2) + part(2..3) - whole).abs() < 1e-6);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalizer {
    /// The rows kept in this call (not masked, label not `ignore_index`); a call
    /// with none kept gives exactly 0 and a zero gradient. The default.
    #[default]
    KeptRows,
    /// A count given by the caller, e.g. the kept tokens of all the
    /// micro-batches or ranks that make one optimiser step. The kept rows'
    /// losses are summed and divided by it (by 1 when it is 0: then no row
    /// should be kept anywhere, and the sum is 0).
    GlobalCount(usize),
}

/// The labels of a batch, which of its rows count, and how they are averaged:
/// the third argument of [`KdLoss`](crate::KdLoss)'s and
/// [`DkdLoss`](crate::dkd::DkdLoss)'s forwards.
///
/// A label tensor converts into `Targets` directly, so
/// `kd.forward(student, teacher, labels)` needs no wrapper.
///
/// ```
/// use burn::tensor::{Bool, Device, Int, Tensor};
/// use burn_distill::{KdLossConfig, Targets};
///
/// let device = Device::flex();
/// let kd = KdLossConfig::new().init();
/// let z = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 2.0]], &device);
/// let v = Tensor::<2>::from_floats([[2.0, 0.0], [1.0, 1.0]], &device);
/// let y = Tensor::<1, Int>::from_ints([0, 1], &device);
/// // Padding: only the first row counts.
/// let keep = Tensor::<1, Bool>::from_data([true, false], &device);
/// let masked = kd.forward(z.clone(), v.clone(), Targets::new(y.clone()).with_keep_rows(keep));
/// let first = kd.forward(z.slice(0..1), v.slice(0..1), y.slice(0..1));
/// assert_eq!(masked.into_scalar::<f32>(), first.into_scalar::<f32>());
/// ```
#[derive(Debug, Clone)]
pub struct Targets {
    pub(crate) labels: Option<Tensor<1, Int>>,
    pub(crate) keep_rows: Option<Tensor<1, Bool>>,
    pub(crate) normalizer: Normalizer,
}

impl Targets {
    /// Class labels, one per row, in `0..classes` (or the loss's `ignore_index`).
    pub fn new(labels: Tensor<1, Int>) -> Self {
        Self {
            labels: Some(labels),
            keep_rows: None,
            normalizer: Normalizer::KeptRows,
        }
    }

    /// No labels: a transfer set scored by the soft term alone. The hard term
    /// is then absent (reported as 0 by `forward_parts`), whatever its weight.
    pub fn unlabelled() -> Self {
        Self {
            labels: None,
            keep_rows: None,
            normalizer: Normalizer::KeptRows,
        }
    }

    /// Only rows where `keep_rows` is true count (e.g. not padding); the others
    /// contribute exactly 0 and get no gradient. `[batch]`.
    pub fn with_keep_rows(mut self, keep_rows: Tensor<1, Bool>) -> Self {
        self.keep_rows = Some(keep_rows);
        self
    }

    /// The denominator of the mean (default: the kept rows of this call).
    pub fn with_normalizer(mut self, normalizer: Normalizer) -> Self {
        self.normalizer = normalizer;
        self
    }

    /// The labels, if any.
    pub fn labels(&self) -> Option<&Tensor<1, Int>> {
        self.labels.as_ref()
    }

    /// The row mask, if any.
    pub fn keep_rows(&self) -> Option<&Tensor<1, Bool>> {
        self.keep_rows.as_ref()
    }

    /// The normaliser.
    pub fn normalizer(&self) -> Normalizer {
        self.normalizer
    }

    /// Checks the targets against the student's logits: one label per row, on
    /// the student's device, each in `0..classes` or equal to `ignore_index`
    /// (their bounds are read back); a mask of one entry per row on the same
    /// device.
    pub(crate) fn check(
        &self,
        student_logits: &Tensor<2>,
        ignore_index: Option<i64>,
    ) -> Result<(), DistillError> {
        let [batch, classes] = student_logits.dims();
        check_non_empty("student_logits", &[batch, classes])?;
        if let Some(labels) = &self.labels {
            check_targets_length(labels, batch)?;
            check_device("student_logits", student_logits, "targets", labels)?;
            check_index_bounds(
                "targets",
                &usable_labels(labels.clone(), ignore_index),
                classes,
            )?;
        }
        if let Some(keep) = &self.keep_rows {
            check_mask_length(keep, batch)?;
            check_device("student_logits", student_logits, "keep_rows", keep)?;
        }
        Ok(())
    }

    /// The rows that count: those kept by the mask and not labelled `ignore_index`.
    pub(crate) fn kept_rows(&self, ignore_index: Option<i64>) -> Option<Tensor<1, Bool>> {
        let labelled = match (&self.labels, ignore_index) {
            (Some(labels), Some(ignore)) => Some(labels.clone().not_equal_elem(ignore)),
            _ => None,
        };
        match (self.keep_rows.clone(), labelled) {
            (Some(a), Some(b)) => Some(a.bool_and(b)),
            (a, b) => a.or(b),
        }
    }
}

/// `x` with the rows that do not count set to 0, for the autodiff path: a
/// left-out row's values never reach the loss, but autodiff multiplies its zero
/// upstream gradient by the local derivatives there, and `0·NaN` is NaN (a
/// padding row of `−inf` logits). Zeroed first, the row is harmless, and
/// `mask_fill` passes it no gradient. `None`: every row counts.
pub(crate) fn blank_left_out_rows(x: Tensor<2>, keep: Option<&Tensor<1, Bool>>) -> Tensor<2> {
    match keep {
        Some(keep) => {
            let [rows, columns] = x.dims();
            let left_out = keep
                .clone()
                .bool_not()
                .reshape([rows, 1])
                .expand([rows, columns]);
            x.mask_fill(left_out, 0.0)
        }
        None => x,
    }
}

/// Labels with `ignore_index` replaced by class 0, so that ignored rows pass
/// the range check and index safely; their rows are masked out.
pub(crate) fn usable_labels(labels: Tensor<1, Int>, ignore_index: Option<i64>) -> Tensor<1, Int> {
    match ignore_index {
        Some(ignore) => labels.clone().mask_fill(labels.equal_elem(ignore), 0),
        None => labels,
    }
}

impl From<Tensor<1, Int>> for Targets {
    fn from(labels: Tensor<1, Int>) -> Self {
        Self::new(labels)
    }
}

/// The mean of per-row values over the kept rows, by `normalizer`. Dropped rows
/// are zeroed first (value and gradient).
pub(crate) fn reduce_rows(
    rows: Tensor<1>,
    keep: Option<Tensor<1, Bool>>,
    normalizer: Normalizer,
) -> Tensor<1> {
    let rows = match &keep {
        Some(keep) => rows.mask_fill(keep.clone().bool_not(), 0.0),
        None => rows,
    };
    match (normalizer, keep) {
        (Normalizer::GlobalCount(count), _) => rows.sum().mul_scalar(1.0 / count.max(1) as f64),
        // The sum over the rows divided by their count, not `mean()`: on wgpu,
        // burn 0.22.1's mean of 0..70001 is 30674.2 (35000 exact) while the
        // sum is right (measured on lavapipe).
        (Normalizer::KeptRows, None) => {
            let count = rows.dims()[0].max(1);
            rows.sum().mul_scalar(1.0 / count as f64)
        }
        (Normalizer::KeptRows, Some(keep)) => {
            let count = keep.float().cast(rows.dtype()).sum().clamp_min(1.0);
            rows.sum() / count
        }
    }
}
