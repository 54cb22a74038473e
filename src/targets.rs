//! What each position of a loss (a row, or a language model's token) is
//! scored against and which positions count: the hard labels (or none), a
//! padding mask or a row mask, and the [`Reduction`].

use burn::tensor::{Bool, DType, Int, Tensor};

use crate::check::{
    BadPositions, ValueChecks, check_device, check_index_bounds, check_mask_length,
    check_non_empty, out_of_range, positions_mismatch, shape_mismatch,
};
use crate::diagnostics::read_back;
use crate::error::DistillError;
use crate::reduction::{PositionWeights, Reduction, position_weights};

/// The labels of a batch, which of its positions count, and how they are
/// reduced: the third argument of [`KdLoss`](crate::KdLoss)'s,
/// [`DkdLoss`](crate::dkd::DkdLoss)'s and
/// [`FusedLinearKdLoss`](crate::FusedLinearKdLoss)'s forwards.
///
/// A position is a row of `[rows, classes]` logits or a token of a language
/// model's `[batch, seq, vocab]` logits; labels and masks have the logits'
/// shape without the class axis (`[rows]` or `[batch, seq]`). A `[rows]` label
/// tensor converts into `Targets` directly, so `kd.forward(student, teacher,
/// labels)` needs no wrapper; `[batch, seq]` labels go through
/// [`for_sequences`](Self::for_sequences).
///
/// Two masks, one per convention, each named for what `true` means:
/// - [`with_padding_mask`](Self::with_padding_mask): `true` = padding, left
///   out — burn's convention (the `mask` of `generate_padding_mask`), any
///   shape of positions;
/// - [`with_keep_rows`](Self::with_keep_rows): `true` = kept, for
///   `[rows, classes]` logits only, so that a `[batch, seq]` padding mask
///   cannot be passed there by accident.
///
/// ```
/// use burn::tensor::{Bool, Device, Int, Tensor};
/// use burn_distill::{KdLossConfig, Targets};
///
/// let device = Device::flex();
/// let kd = KdLossConfig::new().init();
/// // One sequence of 3 tokens over 2 classes, its last token padding.
/// let z = Tensor::<3>::from_floats([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]]], &device);
/// let v = Tensor::<3>::from_floats([[[2.0, 0.0], [1.0, 1.0], [0.0, 0.0]]], &device);
/// let y = Tensor::<2, Int>::from_ints([[0, 1, 0]], &device);
/// let padding = Tensor::<2, Bool>::from_data([[false, false, true]], &device);
/// let targets = Targets::for_sequences(y.clone()).with_padding_mask(padding);
/// let masked = kd.forward(z.clone(), v.clone(), targets);
/// // The same as the first two tokens alone.
/// let first = Targets::for_sequences(y.slice([0..1, 0..2]));
/// let first_two = kd.forward(z.slice([0..1, 0..2]), v.slice([0..1, 0..2]), first);
/// assert_eq!(masked.into_scalar::<f32>(), first_two.into_scalar::<f32>());
/// ```
#[derive(Debug, Clone)]
pub struct Targets {
    /// One label per position, flattened to `[positions]`.
    pub(crate) labels: Option<Tensor<1, Int>>,
    /// The labels' shape as given.
    pub(crate) labels_shape: Vec<usize>,
    pub(crate) keep_rows: Option<Tensor<1, Bool>>,
    /// `true` = padding, flattened to `[positions]`.
    pub(crate) padding_mask: Option<Tensor<1, Bool>>,
    /// The padding mask's shape as given.
    pub(crate) padding_shape: Vec<usize>,
    pub(crate) reduction: Reduction,
    /// Weights fixed by the caller inside the crate (the fused linear loss's
    /// chunks, weighed by the whole batch); `None`: from `reduction`.
    pub(crate) weights: Option<PositionWeights>,
}

impl Targets {
    /// Class labels, one per row of `[rows, classes]` logits, in `0..classes`
    /// (or the loss's `ignore_index`). For a language model's `[batch, seq]`
    /// labels: [`for_sequences`](Self::for_sequences).
    pub fn new(labels: Tensor<1, Int>) -> Self {
        Self::from_labels(labels)
    }

    /// Labels `[batch, seq]`, one per token of `[batch, seq, vocab]` logits, in
    /// `0..vocab` (or the loss's `ignore_index`). (A constructor of its own,
    /// so that `Targets::new(Tensor::from_ints(..))` infers its rank.)
    pub fn for_sequences(labels: Tensor<2, Int>) -> Self {
        Self::from_labels(labels)
    }

    /// Labels of any positions' shape, flattened.
    fn from_labels<const D: usize>(labels: Tensor<D, Int>) -> Self {
        let labels_shape = labels.dims().to_vec();
        let labels = labels.flatten::<1>(0, D - 1);
        Self {
            labels: Some(labels),
            labels_shape,
            ..Self::unlabelled()
        }
    }

    /// No labels: a transfer set scored by the soft term alone. The hard term
    /// is then absent (reported as 0 by `forward_parts`), whatever its weight.
    pub fn unlabelled() -> Self {
        Self {
            labels: None,
            labels_shape: Vec::new(),
            keep_rows: None,
            padding_mask: None,
            padding_shape: Vec::new(),
            reduction: Reduction::Mean,
            weights: None,
        }
    }

    /// Only rows where `keep_rows` is true count; the others contribute
    /// exactly 0 and get no gradient. `[rows]`, for `[rows, classes]` logits
    /// only (sequences take [`with_padding_mask`](Self::with_padding_mask)).
    pub fn with_keep_rows(mut self, keep_rows: Tensor<1, Bool>) -> Self {
        self.keep_rows = Some(keep_rows);
        self
    }

    /// Positions where `padding_mask` is **true are padding**: they contribute
    /// exactly 0 and get no gradient. burn's convention — the `mask` of
    /// `generate_padding_mask` passes as it is. The logits' shape without the
    /// class axis: `[batch, seq]` for `[batch, seq, vocab]` logits, `[rows]`
    /// for `[rows, classes]`.
    pub fn with_padding_mask<const D: usize>(mut self, padding_mask: Tensor<D, Bool>) -> Self {
        self.padding_shape = padding_mask.dims().to_vec();
        self.padding_mask = Some(padding_mask.flatten::<1>(0, D - 1));
        self
    }

    /// How the positions' losses are reduced (default: [`Reduction::Mean`]).
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// The labels, if any, flattened to one per position.
    pub fn labels(&self) -> Option<&Tensor<1, Int>> {
        self.labels.as_ref()
    }

    /// The row mask (`true` = kept), if any.
    pub fn keep_rows(&self) -> Option<&Tensor<1, Bool>> {
        self.keep_rows.as_ref()
    }

    /// The padding mask (`true` = padding), if any, flattened to one per position.
    pub fn padding_mask(&self) -> Option<&Tensor<1, Bool>> {
        self.padding_mask.as_ref()
    }

    /// The reduction.
    pub fn reduction(&self) -> Reduction {
        self.reduction
    }

    /// Checks the targets against the student's positions (`positions`: its
    /// logits' shape without the class axis), its `[rows, ·]` tensor
    /// `student` (named `student_argument`) and `classes`: labels and
    /// padding mask of that shape, a row mask only for `[rows]` positions,
    /// all on the student's device; and, as `values` says (read back, or
    /// found on the device as the positions that have them), labels outside
    /// `0..classes` that are not `ignore_index`, and a
    /// [`Reduction::GlobalCount`] of 0 where something is kept.
    pub(crate) fn check(
        &self,
        student_argument: &'static str,
        student: &Tensor<2>,
        classes: usize,
        positions: &[usize],
        ignore_index: Option<i64>,
        values: ValueChecks,
    ) -> Result<BadPositions, DistillError> {
        let rows = student.dims()[0];
        check_non_empty(student_argument, &[rows, classes])?;
        let mut bad = BadPositions::default();
        if let Some(labels) = &self.labels {
            check_positions("targets", &self.labels_shape, positions)?;
            check_device(student_argument, student, "targets", labels)?;
            let labels = ignored_as_class_0(labels.clone(), ignore_index);
            match values {
                ValueChecks::Read => check_index_bounds("targets", &labels, classes)?,
                ValueChecks::OnDevice => bad = bad.or(out_of_range(&labels, classes)),
            }
        }
        if let Some(keep) = &self.keep_rows {
            if positions.len() != 1 {
                return Err(positions_mismatch("keep_rows", &keep.dims(), positions));
            }
            check_mask_length(keep, rows)?;
            check_device(student_argument, student, "keep_rows", keep)?;
        }
        if let Some(padding) = &self.padding_mask {
            check_positions("padding_mask", &self.padding_shape, positions)?;
            check_device(student_argument, student, "padding_mask", padding)?;
        }
        if self.reduction == Reduction::GlobalCount(0) && self.weights.is_none() {
            match (self.kept_rows(ignore_index), values) {
                // Every position kept: known without reading anything.
                (None, _) => return Err(DistillError::ZeroGlobalCount { kept: rows }),
                (Some(keep), ValueChecks::Read) => {
                    let kept = read_back(keep.int().sum())
                        .iter::<i64>()
                        .next()
                        .unwrap_or(0);
                    if kept > 0 {
                        return Err(DistillError::ZeroGlobalCount {
                            kept: kept as usize,
                        });
                    }
                }
                // Each kept position is one too many.
                (Some(keep), ValueChecks::OnDevice) => bad = bad.or(keep),
            }
        }
        Ok(bad)
    }

    /// These targets for positions of `shape` (e.g. a micro-batch's
    /// `[sequences, seq]`) rather than flattened rows: the masks and weights
    /// are the same, in row-major order.
    #[cfg(feature = "train")]
    pub(crate) fn with_position_shape(mut self, shape: &[usize]) -> Targets {
        if self.labels.is_some() {
            self.labels_shape = shape.to_vec();
        }
        if self.padding_mask.is_some() {
            self.padding_shape = shape.to_vec();
        }
        self
    }

    /// These targets without their labels, for losses that use only the
    /// masks and the reduction (the feature losses).
    pub(crate) fn without_labels(&self) -> Targets {
        Targets {
            labels: None,
            labels_shape: Vec::new(),
            ..self.clone()
        }
    }

    /// The positions that count: not padding, kept by the row mask, not
    /// labelled `ignore_index`. `None`: all of them.
    pub(crate) fn kept_rows(&self, ignore_index: Option<i64>) -> Option<Tensor<1, Bool>> {
        let labelled = match (&self.labels, ignore_index) {
            (Some(labels), Some(ignore)) => Some(labels.clone().not_equal_elem(ignore)),
            _ => None,
        };
        let not_padding = self.padding_mask.clone().map(Tensor::bool_not);
        [self.keep_rows.clone(), not_padding, labelled]
            .into_iter()
            .flatten()
            .reduce(Tensor::bool_and)
    }

    /// The weight of each position in the reduced loss (see [`Reduction`]),
    /// in `dtype`, the loss's compute dtype.
    pub(crate) fn position_weights(
        &self,
        keep: Option<&Tensor<1, Bool>>,
        positions: &[usize],
        dtype: DType,
    ) -> PositionWeights {
        match &self.weights {
            Some(weights) => weights.clone(),
            None => position_weights(self.reduction, keep, positions, dtype),
        }
    }

    /// The targets of rows `start..end` of the flattened positions, weighed
    /// by `weights` (the whole batch's), for a loss computed chunk by chunk.
    pub(crate) fn chunk(&self, start: usize, end: usize, weights: &PositionWeights) -> Targets {
        let slice_bool = |mask: &Tensor<1, Bool>| mask.clone().slice(start..end);
        Targets {
            labels: self
                .labels
                .as_ref()
                .map(|labels| labels.clone().slice(start..end)),
            labels_shape: vec![end - start],
            keep_rows: self.keep_rows.as_ref().map(slice_bool),
            padding_mask: self.padding_mask.as_ref().map(slice_bool),
            padding_shape: vec![end - start],
            reduction: self.reduction,
            weights: Some(weights.slice(start, end)),
        }
    }
}

/// A label or mask tensor has the student's positions.
fn check_positions(
    argument: &'static str,
    found: &[usize],
    positions: &[usize],
) -> Result<(), DistillError> {
    if found == positions {
        return Ok(());
    }
    // `[rows]` labels for `[rows, classes]` logits keep their own message.
    if let ([found], [rows]) = (found, positions)
        && argument == "targets"
    {
        return Err(shape_mismatch(
            "targets",
            &[*found],
            "student_logits rows",
            &[*rows],
            "give one label per row",
        ));
    }
    Err(positions_mismatch(argument, found, positions))
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
/// the range check; their rows are masked out.
fn ignored_as_class_0(labels: Tensor<1, Int>, ignore_index: Option<i64>) -> Tensor<1, Int> {
    match ignore_index {
        Some(ignore) => labels.clone().mask_fill(labels.equal_elem(ignore), 0),
        None => labels,
    }
}

/// Labels that index `0..classes` safely: `ignore_index` as class 0 (those
/// rows are masked out), and any other out of range clamped into it (where
/// the checks ran on the device, such a position's loss is NaN already; where
/// they were read back, none is left).
pub(crate) fn usable_labels(
    labels: Tensor<1, Int>,
    ignore_index: Option<i64>,
    classes: usize,
) -> Tensor<1, Int> {
    ignored_as_class_0(labels, ignore_index).clamp(0, classes as i64 - 1)
}

impl From<Tensor<1, Int>> for Targets {
    fn from(labels: Tensor<1, Int>) -> Self {
        Self::new(labels)
    }
}
