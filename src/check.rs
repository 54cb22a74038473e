//! Argument checks shared by every loss and helper. Each runs before any
//! tensor operation and returns the [`DistillError`] that names the argument
//! and the values, so that no bad input reaches burn.

use burn::tensor::kind::Basic;
use burn::tensor::{Bool, DType, Device, Int, Tensor};

use crate::backend::host_backend;
use crate::diagnostics::read_back;
use crate::error::DistillError;

/// How the checks that need tensor values — labels and top-k indices in
/// range, probabilities not negative, a top-k row's mass at most 1, a
/// [`Reduction::GlobalCount`] of 0 with nothing kept — are made.
///
/// [`Reduction::GlobalCount`]: crate::Reduction::GlobalCount
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueChecks {
    /// Read back and refused with the error that names them: `check`, and
    /// every forward on a backend whose tensors are in host memory, where a
    /// read is a copy and not a wait for a device.
    Read,
    /// Not read: a bad value makes the loss NaN on the device (see
    /// [`BadPositions`]). Every forward on a device backend (wgpu, CUDA, …),
    /// so that a training step never waits for the device.
    OnDevice,
}

impl ValueChecks {
    /// The value checks of a forward on `device` — decided here and nowhere
    /// else.
    pub(crate) fn for_forward(device: &Device) -> Self {
        #[cfg(test)]
        if tests::ON_DEVICE.get() {
            return Self::OnDevice;
        }
        match host_backend(device) {
            Some(_) => Self::Read,
            None => Self::OnDevice,
        }
    }
}

/// The positions a forward found bad on the device ([`ValueChecks::OnDevice`]),
/// `[positions]`, `true` = bad: each one's loss is NaN, and so is every
/// reduced loss of a batch that has one (even where it is padding, as
/// [`ValueChecks::Read`] refuses it there too). `None`: none found (or not
/// looked for on the device).
#[derive(Debug, Clone, Default)]
pub(crate) struct BadPositions(Option<Tensor<1, Bool>>);

impl BadPositions {
    /// These positions bad too.
    pub(crate) fn or(self, bad: Tensor<1, Bool>) -> Self {
        Self(Some(match self.0 {
            Some(found) => found.bool_or(bad),
            None => bad,
        }))
    }

    /// Both sets.
    pub(crate) fn union(self, other: Self) -> Self {
        match other.0 {
            Some(bad) => self.or(bad),
            None => self,
        }
    }

    /// `values` `[positions]` with the bad positions NaN.
    pub(crate) fn per_position(&self, values: Tensor<1>) -> Tensor<1> {
        match &self.0 {
            Some(bad) => values.mask_fill(bad.clone(), f64::NAN),
            None => values,
        }
    }

    /// A reduced loss `[1]`, NaN if any position is bad.
    pub(crate) fn reduced(&self, loss: Tensor<1>) -> Tensor<1> {
        match &self.0 {
            Some(bad) => loss.mask_fill(bad.clone().any(), f64::NAN),
            None => loss,
        }
    }
}

/// Entries of `indices` outside `0..classes`: those that clamping into it
/// changes (two launches on a device, not three).
pub(crate) fn out_of_range<const D: usize>(
    indices: &Tensor<D, Int>,
    classes: usize,
) -> Tensor<D, Bool> {
    let clamped = indices.clone().clamp(0, classes as i64 - 1);
    clamped.not_equal(indices.clone())
}

/// `base[index]` as an argument name, for errors about one of several tensors
/// (`specialist_probs[2]`). The errors' fields are `&'static str`, so each
/// distinct name is made once and kept (a few bytes, on error paths only).
pub(crate) fn indexed(base: &'static str, index: usize) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Names = Mutex<HashMap<(&'static str, usize), &'static str>>;
    static NAMES: OnceLock<Names> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    names
        .entry((base, index))
        .or_insert_with(|| Box::leak(format!("{base}[{index}]").into_boxed_str()))
}

/// Checks that a temperature is finite and strictly positive.
pub(crate) fn check_temperature(argument: &'static str, value: f64) -> Result<(), DistillError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(DistillError::InvalidTemperature { argument, value })
    }
}

/// Checks that a loss weight is finite and non-negative.
pub(crate) fn check_weight(argument: &'static str, value: f64) -> Result<(), DistillError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(DistillError::InvalidWeight { argument, value })
    }
}

/// Checks that `dim` indexes a dimension of a rank-`rank` tensor.
pub(crate) fn check_dim(
    argument: &'static str,
    dim: usize,
    rank: usize,
) -> Result<(), DistillError> {
    if dim < rank {
        Ok(())
    } else {
        Err(DistillError::InvalidDim {
            argument,
            dim,
            rank,
        })
    }
}

/// Checks that no dimension of `shape` is zero.
pub(crate) fn check_non_empty(argument: &'static str, shape: &[usize]) -> Result<(), DistillError> {
    if shape.contains(&0) {
        Err(DistillError::EmptyTensor {
            argument,
            shape: shape.to_vec(),
        })
    } else {
        Ok(())
    }
}

/// Checks that a width (columns, features or channels) is the one expected.
pub(crate) fn check_width(
    argument: &'static str,
    found: usize,
    expected: usize,
) -> Result<(), DistillError> {
    if found == expected {
        Ok(())
    } else {
        Err(shape_mismatch(
            argument,
            &[found],
            "the width expected",
            &[expected],
            "its number of columns (classes, features or channels) must be the one expected",
        ))
    }
}

/// Checks that a tensor's rank is at least `min`; `requirement` names the
/// axes it must have (`"a rank of at least 3: [batch, channels, spatial…]"`).
pub(crate) fn check_rank(
    argument: &'static str,
    rank: usize,
    min: usize,
    requirement: &'static str,
) -> Result<(), DistillError> {
    if rank >= min {
        Ok(())
    } else {
        Err(DistillError::InvalidParameter {
            argument,
            value: rank,
            requirement,
        })
    }
}

/// Checks that two tensors have identical shapes.
pub(crate) fn check_same_shape(
    left_argument: &'static str,
    left_shape: &[usize],
    right_argument: &'static str,
    right_shape: &[usize],
) -> Result<(), DistillError> {
    if left_shape == right_shape {
        return Ok(());
    }
    let requirement = match left_argument {
        "student_logits" | "student_log_probs" => {
            "they must have the same batch size and number of classes"
        }
        "student_hidden" => "they must have the same shape",
        _ => "they must agree",
    };
    Err(shape_mismatch(
        left_argument,
        left_shape,
        right_argument,
        right_shape,
        requirement,
    ))
}

/// The crate's one shape error ([`DistillError::ShapeMismatch`]): two
/// arguments whose shapes, or one axis of them, must agree, and what they
/// must satisfy.
pub(crate) fn shape_mismatch(
    left_argument: &'static str,
    left_shape: &[usize],
    right_argument: &'static str,
    right_shape: &[usize],
    requirement: &'static str,
) -> DistillError {
    DistillError::ShapeMismatch {
        left_argument,
        left_shape: left_shape.to_vec(),
        right_argument,
        right_shape: right_shape.to_vec(),
        requirement,
    }
}

/// Labels or a mask whose shape is not the student's positions (its logits'
/// shape without the class axis: `[rows]` or `[batch, seq]`).
pub(crate) fn positions_mismatch(
    argument: &'static str,
    found: &[usize],
    positions: &[usize],
) -> DistillError {
    let requirement = match argument {
        "keep_rows" => {
            "give one entry per position (keep_rows is for [rows, classes] logits; for \
             sequences use with_padding_mask, where true marks padding)"
        }
        _ => "give one entry per position (the logits' shape without the class axis)",
    };
    shape_mismatch(
        argument,
        found,
        "the student's positions",
        positions,
        requirement,
    )
}

/// Every entry of `indices` lies in `0..classes`. Reads back only their
/// minimum and maximum (one small transfer).
pub(crate) fn check_index_bounds(
    argument: &'static str,
    indices: &Tensor<1, Int>,
    classes: usize,
) -> Result<(), DistillError> {
    let bounds = read_back(Tensor::cat(
        vec![indices.clone().min(), indices.clone().max()],
        0,
    ));
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

/// No class appears twice in a row of `indices` (row-major `[rows, k]`, in
/// `0..classes`): a top-k teacher's classes are distinct, and a class stored
/// twice would be two buckets of one class, which no distribution is.
fn check_distinct_classes(indices: &[i64], k: usize, classes: usize) -> Result<(), DistillError> {
    // One mark per class, set for a row's classes and cleared after it.
    let mut seen = vec![false; classes];
    for (row, classes_of_row) in indices.chunks(k).enumerate() {
        let twice = classes_of_row.iter().find(|&&c| {
            let first = !seen[c as usize];
            seen[c as usize] = true;
            !first
        });
        for &c in classes_of_row {
            seen[c as usize] = false;
        }
        if let Some(class) = twice {
            return Err(DistillError::InvalidTopK {
                argument: "teacher.indices",
                row,
                reason: format!("class {class} appears twice"),
            });
        }
    }
    Ok(())
}

/// Two tensors on one device (hardware and backend; autodiff may differ).
pub(crate) fn check_device<const D: usize, const E: usize, K: Basic, L: Basic>(
    left_argument: &'static str,
    left: &Tensor<D, K>,
    right_argument: &'static str,
    right: &Tensor<E, L>,
) -> Result<(), DistillError> {
    let (left_device, right_device) = (left.device(), right.device());
    if left_device == right_device {
        Ok(())
    } else {
        Err(DistillError::DeviceMismatch {
            left_argument,
            left_device: format!("{left_device:?}"),
            right_argument,
            right_device: format!("{right_device:?}"),
        })
    }
}

/// A row mask with one entry per row.
pub(crate) fn check_mask_length(
    keep_rows: &Tensor<1, burn::tensor::Bool>,
    rows: usize,
) -> Result<(), DistillError> {
    let [found] = keep_rows.dims();
    if found == rows {
        Ok(())
    } else {
        Err(shape_mismatch(
            "keep_rows",
            &[found],
            "student_logits rows",
            &[rows],
            "give one entry per row",
        ))
    }
}

/// Top-k indices are checked against the student's batch and classes; their
/// range as `values` says (on the device: the rows with an index out of
/// range, which the loss then clamps into range to index safely).
pub(crate) fn check_top_k(
    indices: &Tensor<2, Int>,
    batch: usize,
    classes: usize,
    values: ValueChecks,
) -> Result<BadPositions, DistillError> {
    let [rows, k] = indices.dims();
    if rows != batch {
        return Err(shape_mismatch(
            "teacher.indices rows",
            &[rows],
            "student_logits rows",
            &[batch],
            "give one top-k row per student row",
        ));
    }
    check_non_empty("student_logits", &[batch, classes])?;
    if k == 0 || k > classes {
        return Err(DistillError::InvalidParameter {
            argument: "k",
            value: k,
            requirement: "between 1 and the student's number of classes",
        });
    }
    match values {
        ValueChecks::Read => {
            let read: Vec<i64> = read_back(indices.clone()).iter::<i64>().collect();
            check_label_values("teacher.indices", &read, classes)?;
            check_distinct_classes(&read, k, classes)?;
            Ok(BadPositions::default())
        }
        ValueChecks::OnDevice => {
            let bad_rows = out_of_range(indices, classes).any_dim(1);
            Ok(BadPositions::default().or(bad_rows.reshape([batch])))
        }
    }
}

/// How far above 1 a top-k row's stored mass `Σ exp(log_probs)` may round
/// (half-precision storage rounds each log-probability by up to 2⁻⁹ of it)
/// before the row is refused: more is not a distribution's top `k` — raw
/// logits given as log-probabilities, say — and the kernels' tail bucket,
/// `1 − Σ p` clamped at 0, would hide it.
const TOP_K_MASS_SLACK: f64 = 1e-2;

/// Checks that each row of a top-k teacher's log-probabilities `[N, k]` is
/// part of a distribution: its stored mass `Σ exp(log_probs)` at most 1
/// (within [`TOP_K_MASS_SLACK`]) and not NaN, which also refuses an entry above
/// 0 by more than that and a NaN or `+inf` entry. One reduction; read back as
/// `[N]` masses, or flagged on the device.
pub(crate) fn check_top_k_log_probs(
    log_probs: &Tensor<2>,
    values: ValueChecks,
) -> Result<BadPositions, DistillError> {
    let [rows, _] = log_probs.dims();
    let mass = log_probs
        .clone()
        .detach()
        .cast(DType::F32)
        .exp()
        .sum_dim(1)
        .reshape([rows]);
    match values {
        ValueChecks::Read => {
            let masses = read_back(mass);
            let bad = masses
                .iter::<f64>()
                .enumerate()
                .find(|(_, mass)| mass.is_nan() || *mass > 1.0 + TOP_K_MASS_SLACK);
            match bad {
                Some((row, mass)) => Err(DistillError::InvalidTopK {
                    argument: "teacher.log_probs",
                    row,
                    reason: format!(
                        "its stored probabilities sum to {mass}, but Σ exp(log_probs) of a \
                         distribution's top k is at most 1 (were logits given as log-probabilities?)"
                    ),
                }),
                None => Ok(BadPositions::default()),
            }
        }
        ValueChecks::OnDevice => {
            let bad = mass
                .clone()
                .is_nan()
                .bool_or(mass.greater_elem(1.0 + TOP_K_MASS_SLACK));
            Ok(BadPositions::default().or(bad))
        }
    }
}

#[cfg(test)]
mod tests {
    //! The on-device checks run on flex here (a forward there reads, as on
    //! every host backend): what a wgpu or CUDA forward does with bad values,
    //! tested on every CI step, not only where an adapter exists.

    use std::cell::Cell;

    use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

    use crate::dkd::DkdLossConfig;
    use crate::{
        FusedLinearKdLossConfig, KdLossConfig, LinearTeacher, Reduction, SparseTeacher, Targets,
        TeacherOutput,
    };

    thread_local! {
        /// Forwards on this thread check values as on a device backend.
        pub(super) static ON_DEVICE: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `f` with forwards checking values on the device.
    fn on_device<R>(f: impl FnOnce() -> R) -> R {
        ON_DEVICE.set(true);
        let out = f();
        ON_DEVICE.set(false);
        out
    }

    fn values(t: Tensor<1>) -> Vec<f64> {
        t.into_data().iter::<f64>().collect()
    }

    fn logits(device: &Device, seed: f32) -> Tensor<2> {
        let data: Vec<f32> = (0..24)
            .map(|i| ((i as f32 * 0.37 + seed).sin()) * 2.0)
            .collect();
        Tensor::from_data(TensorData::new(data, [6, 4]), device)
    }

    fn labels(values: [i64; 6], device: &Device) -> Tensor<1, Int> {
        Tensor::from_data(TensorData::new(values.to_vec(), [6]), device)
    }

    fn nan_exactly_at(got: Vec<f64>, bad: &[usize], what: &str) {
        for (i, value) in got.iter().enumerate() {
            assert_eq!(
                value.is_nan(),
                bad.contains(&i),
                "{what}: position {i} is {value}"
            );
        }
    }

    /// Valid input: the same values whichever way the values are checked.
    #[test]
    fn valid_input_gives_the_same_loss_either_way() {
        let device = Device::flex();
        let (z, v) = (logits(&device, 0.0), logits(&device, 1.0));
        let y = labels([0, 3, 2, 1, 3, 0], &device);
        let kd = KdLossConfig::new()
            .with_hard_weight(0.5)
            .with_ignore_index(Some(3))
            .init();
        let top_k = SparseTeacher::top_k(v.clone(), 2, 2.0).unwrap();
        for teacher in [TeacherOutput::Logits(v.clone()), TeacherOutput::TopK(top_k)] {
            let read = values(kd.forward_no_reduction(z.clone(), teacher.clone(), y.clone()));
            let device_checked = on_device(|| {
                values(kd.forward_no_reduction(z.clone(), teacher.clone(), y.clone()))
            });
            assert_eq!(read, device_checked);
            assert!(read.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn bad_labels_are_nan_at_their_positions() {
        let device = Device::flex().autodiff();
        let z = logits(&device, 0.0).require_grad();
        let v = logits(&device, 1.0);
        let y = labels([0, 1, 4, 2, -1, 3], &device);
        let kd = KdLossConfig::new().with_hard_weight(0.5).init();
        on_device(|| {
            let per = kd.forward_no_reduction(z.clone(), v.clone(), y.clone());
            nan_exactly_at(values(per), &[2, 4], "KdLoss");
            let loss = kd.forward(z.clone(), v.clone(), y.clone());
            assert!(values(loss.clone())[0].is_nan());
            // The gradient stays finite: the bad positions get none.
            let grad = z.grad(&loss.backward()).expect("gradient");
            let grad: Vec<f64> = grad.into_data().iter::<f64>().collect();
            assert!(grad.iter().all(|g| g.is_finite()));
            let parts = kd.forward_parts(z.clone(), v.clone(), y.clone());
            assert!(values(parts.hard)[0].is_nan());
            // As padding too: the reduced loss is NaN (check refuses it there).
            let padding =
                Tensor::<1, Bool>::from_data([false, false, true, false, true, false], &device);
            let masked = Targets::new(y.clone()).with_padding_mask(padding);
            assert!(values(kd.forward(z.clone(), v.clone(), masked))[0].is_nan());
            let dkd = DkdLossConfig::new().init();
            nan_exactly_at(
                values(dkd.forward_no_reduction(z.clone(), v.clone(), y.clone())),
                &[2, 4],
                "DkdLoss",
            );
        });
        // Read back instead, the same input is refused by name.
        let error = kd
            .check(&z, &TeacherOutput::Logits(v), &Targets::new(y))
            .unwrap_err();
        assert!(error.to_string().contains("-1"), "{error}");
    }

    #[test]
    fn bad_teacher_rows_are_nan() {
        let device = Device::flex();
        let z = logits(&device, 0.0);
        let y = labels([0, 1, 2, 3, 0, 1], &device);
        let kd = KdLossConfig::new().init();
        let mut p = burn::tensor::activation::softmax(logits(&device, 1.0), 1);
        p = p.slice_assign([3..4, 1..2], Tensor::<2>::from_floats([[-0.25]], &device));
        let indices = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2], [6, 2]),
            &device,
        );
        let log_probs = Tensor::<2>::from_floats([[-1.0, -2.0]; 6], &device);
        let top_k = SparseTeacher::new(indices.clone(), log_probs.clone()).unwrap();
        // Row 1's log-probabilities are logits (mass e + 1), row 4's NaN.
        let no_distribution = log_probs
            .slice_assign(
                [1..2, 0..2],
                Tensor::<2>::from_floats([[1.0, 0.0]], &device),
            )
            .slice_assign(
                [4..5, 1..2],
                Tensor::<2>::from_floats([[f32::NAN]], &device),
            );
        let in_range = indices.clamp(0, 3);
        let bad_mass = SparseTeacher::new(in_range, no_distribution).unwrap();
        on_device(|| {
            let mass = kd.forward_no_reduction(z.clone(), TeacherOutput::TopK(bad_mass), y.clone());
            nan_exactly_at(values(mass), &[1, 4], "top-k mass above 1 or NaN");
            let probs = kd.forward_no_reduction(z.clone(), TeacherOutput::Probs(p), y.clone());
            nan_exactly_at(values(probs), &[3], "negative probability");
            let top_k = kd.forward_no_reduction(z.clone(), TeacherOutput::TopK(top_k), y.clone());
            nan_exactly_at(values(top_k), &[2], "top-k index 4 of 4 classes");
        });
    }

    #[test]
    fn a_zero_global_count_with_tokens_kept_is_nan() {
        let device = Device::flex();
        let (z, v) = (logits(&device, 0.0), logits(&device, 1.0));
        let y = labels([0, 1, 2, 3, 0, 1], &device);
        let kd = KdLossConfig::new().init();
        let mask = |padding: [bool; 6]| Tensor::<1, Bool>::from_data(padding, &device);
        let targets = |padding| {
            Targets::new(y.clone())
                .with_padding_mask(mask(padding))
                .with_reduction(Reduction::GlobalCount(0))
        };
        let linear = FusedLinearKdLossConfig::new(KdLossConfig::new())
            .with_chunk_size(Some(4))
            .init();
        let hidden = logits(&device, 2.0);
        let weight = logits(&device, 3.0).slice([0..4, 0..4]);
        on_device(|| {
            let one_kept = targets([true, true, true, false, true, true]);
            assert!(values(kd.forward(z.clone(), v.clone(), one_kept.clone()))[0].is_nan());
            let linear_loss = linear.forward(
                hidden.clone(),
                weight.clone(),
                None,
                LinearTeacher::Logits(v.clone()),
                one_kept,
            );
            assert!(values(linear_loss)[0].is_nan());
            // Nothing kept: a count of 0 is what it is, and the loss 0.
            let none_kept = targets([true; 6]);
            assert_eq!(values(kd.forward(z.clone(), v.clone(), none_kept))[0], 0.0);
            // No mask at all: every position is kept, refused without reading.
            let unmasked = Targets::new(y.clone()).with_reduction(Reduction::GlobalCount(0));
            let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                kd.forward(z.clone(), v.clone(), unmasked)
            }));
            assert!(refused.is_err());
        });
    }
}
