//! Argument checks shared by every loss and helper. Each runs before any
//! tensor operation and returns the [`DistillError`] that names the argument
//! and the values, so that no bad input reaches burn.

use burn::tensor::kind::Basic;
use burn::tensor::{Int, Tensor};

use crate::error::DistillError;

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

/// Checks that two tensors have identical shapes.
pub(crate) fn check_same_shape(
    left_argument: &'static str,
    left_shape: &[usize],
    right_argument: &'static str,
    right_shape: &[usize],
) -> Result<(), DistillError> {
    if left_shape == right_shape {
        Ok(())
    } else {
        Err(DistillError::ShapeMismatch {
            left_argument,
            left_shape: left_shape.to_vec(),
            right_argument,
            right_shape: right_shape.to_vec(),
        })
    }
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
        Err(DistillError::MaskLength {
            found,
            expected: rows,
        })
    }
}

/// Top-k indices are checked against the student's batch and classes.
pub(crate) fn check_top_k(
    indices: &Tensor<2, Int>,
    batch: usize,
    classes: usize,
) -> Result<(), DistillError> {
    let [rows, k] = indices.dims();
    if rows != batch {
        return Err(DistillError::BatchMismatch {
            argument: "teacher.indices",
            found: rows,
            expected: batch,
        });
    }
    check_non_empty("student_logits", &[batch, classes])?;
    if k == 0 || k > classes {
        return Err(DistillError::InvalidParameter {
            argument: "k",
            value: k,
            requirement: "between 1 and the student's number of classes",
        });
    }
    check_index_bounds(
        "teacher.indices",
        &indices.clone().flatten::<1>(0, 1),
        classes,
    )
}
