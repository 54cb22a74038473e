//! How a loss's per-position values become one number: the [`Reduction`],
//! turned once into a weight per position, then `Σ weight · value`.

use burn::tensor::{Bool, DType, Tensor};

use crate::check::BadPositions;

/// How the per-position losses (rows, or a language model's tokens) are
/// reduced to one value. Positions that do not count (padding, a label equal
/// to `ignore_index`, a `false` in `keep_rows`) contribute exactly 0 and get
/// no gradient under every reduction.
///
/// With gradient accumulation or data parallelism a batch is split into
/// micro-batches whose losses are summed. Dividing each micro-batch by its own
/// count of kept positions weights its positions by `1/count_i` instead of
/// `1/total`, so the summed loss and gradient change with the split wherever
/// masks leave the micro-batches unequal. [`GlobalCount`](Self::GlobalCount)
/// divides every micro-batch by the same total, so the sum is exactly the full
/// batch's loss.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn_distill::{KdLossConfig, Reduction, Targets};
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
///         .with_reduction(Reduction::GlobalCount(3));
///     let (z, v) = (z.clone().slice(rows.clone()), v.clone().slice(rows));
///     kd.forward(z, v, targets).into_scalar::<f32>()
/// };
/// assert!((part(0..2) + part(2..3) - whole).abs() < 1e-6);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The mean over the positions kept in this call (not padding, not
    /// masked, label not `ignore_index`): for a language model, the mean over
    /// the batch's kept tokens, what TRL and Liger compute. A call with none
    /// kept gives exactly 0 and a zero gradient. The default.
    #[default]
    Mean,
    /// The sum over the kept positions.
    Sum,
    /// The sum over the kept positions divided by a count given by the
    /// caller, e.g. the kept tokens of all the micro-batches or ranks that
    /// make one optimiser step. A count of 0 is refused while any position of
    /// the call is kept (it would silently be a sum); with none kept the
    /// result is 0.
    GlobalCount(usize),
    /// The mean over each sequence's kept tokens, then the mean over the
    /// sequences that have at least one: every sequence weighs the same
    /// whatever its length (a different estimator from [`Mean`](Self::Mean),
    /// which weighs every token the same). For `[batch, seq, vocab]` logits;
    /// with `[rows, classes]` each row is its own sequence, so it equals
    /// `Mean`.
    SequenceMean,
}

/// The weight of each position in the reduced loss: `Σ weight · value`.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per loss call, moved (as `TeacherOutput`)
pub(crate) enum PositionWeights {
    /// The same factor for every position (masked ones are zeroed anyway).
    Scale(f64),
    /// One weight per position, `[rows]`, 0 where a position does not count.
    PerPosition(Tensor<1>),
}

impl PositionWeights {
    /// The weights of rows `start..end`.
    pub(crate) fn slice(&self, start: usize, end: usize) -> Self {
        match self {
            Self::Scale(factor) => Self::Scale(*factor),
            Self::PerPosition(w) => Self::PerPosition(w.clone().slice(start..end)),
        }
    }
}

/// The weights of `reduction` over `positions` (the logits' shape without the
/// class axis: `[rows]` or `[batch, seq]`), `keep` the positions that count,
/// in `dtype` (the loss's compute dtype, so that f64 losses get f64 weights).
/// Computed with tensor ops on the mask's device: nothing is read back.
pub(crate) fn position_weights(
    reduction: Reduction,
    keep: Option<&Tensor<1, Bool>>,
    positions: &[usize],
    dtype: DType,
) -> PositionWeights {
    let rows: usize = positions.iter().product();
    let sequences = match positions {
        [batch, seq] if *seq > 1 => Some((*batch, *seq)),
        _ => None,
    };
    match (reduction, keep) {
        (Reduction::Sum, _) => PositionWeights::Scale(1.0),
        (Reduction::GlobalCount(count), _) => PositionWeights::Scale(1.0 / count.max(1) as f64),
        // Without a mask every sequence has all its tokens: the mean of the
        // sequences' means is the mean of all tokens.
        (Reduction::Mean | Reduction::SequenceMean, None) => {
            PositionWeights::Scale(1.0 / rows.max(1) as f64)
        }
        (Reduction::SequenceMean, Some(keep)) if sequences.is_some() => {
            let (batch, seq) = sequences.expect("matched");
            let kept = keep.clone().float().cast(dtype).reshape([batch, seq]);
            let per_sequence = kept.clone().sum_dim(1); // [batch, 1]
            let sequences_kept = per_sequence
                .clone()
                .greater_elem(0.0)
                .float()
                .cast(dtype)
                .sum();
            let weights = kept / per_sequence.clamp_min(1.0);
            PositionWeights::PerPosition(weights.reshape([rows]) / sequences_kept.clamp_min(1.0))
        }
        (Reduction::Mean | Reduction::SequenceMean, Some(keep)) => {
            let kept = keep.clone().float().cast(dtype);
            let count = kept.clone().sum().clamp_min(1.0);
            PositionWeights::PerPosition(kept / count)
        }
    }
}

/// How one call's per-position values are reduced: the positions that count,
/// their weights, and the positions found bad on the device.
#[derive(Debug, Clone)]
pub(crate) struct Reducer {
    /// Positions that count (`None`: all).
    pub keep: Option<Tensor<1, Bool>>,
    /// Each position's weight in the reduced loss.
    pub weights: PositionWeights,
    /// Positions with a bad label or teacher row, found on the device.
    pub bad: BadPositions,
}

impl Reducer {
    /// `values` reduced (see [`reduce`]), NaN if a position is bad: the bad
    /// positions' NaN is put in after the left-out ones are zeroed, so that
    /// it reaches the sum even where the position is padding.
    pub(crate) fn reduce(&self, values: Tensor<1>) -> Tensor<1> {
        weighted_sum(self.per_position(values), &self.weights)
    }

    /// `values` per position, 0 where a position does not count, NaN where
    /// it is bad.
    pub(crate) fn per_position(&self, values: Tensor<1>) -> Tensor<1> {
        self.bad
            .per_position(zero_left_out(values, self.keep.as_ref()))
    }
}

/// `values` with the positions that do not count set to 0 (value and gradient).
fn zero_left_out(values: Tensor<1>, keep: Option<&Tensor<1, Bool>>) -> Tensor<1> {
    match keep {
        Some(keep) => values.mask_fill(keep.clone().bool_not(), 0.0),
        None => values,
    }
}

/// `Σ weight · value`.
fn weighted_sum(values: Tensor<1>, weights: &PositionWeights) -> Tensor<1> {
    // Sums, not `mean()`: on wgpu, burn 0.22.1's mean of 0..70001 is 30674.2
    // (35000 exact) while the sum is right (measured on lavapipe).
    match weights {
        PositionWeights::Scale(factor) => values.sum().mul_scalar(*factor),
        PositionWeights::PerPosition(w) => {
            let w = w.clone().cast(values.dtype());
            (values * w).sum()
        }
    }
}
