//! The fused KD rows on burn's Cube backends (wgpu, Vulkan, Metal, CUDA,
//! ROCm): launches the kernels of [`super::cube_kernel`] on the backend's own
//! buffers. With autodiff, the rows kernel writes each output column's
//! gradient in the forward pass — one `[batch, classes]` buffer for the
//! weighted total — and the backward pass scales it in place by the upstream
//! gradient ([`super::extension`] holds the graph node).

use std::cell::Cell;

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

use super::cube_kernel::{
    RowsConfig, dkd_rows_kernel, kd_rows_kernel, kd_top_k_rows_kernel, weighted_gradient_kernel,
};
use super::pointwise::Plugin;
use super::{FusedLoss, FusedSpec};

thread_local! {
    /// Launches of the rows kernel from this thread: the proof that a loss on
    /// a Cube device took the kernel, not the tensor-op path (per thread, so
    /// that losses computed on other threads do not count).
    static ROWS_LAUNCHES: Cell<u64> = const { Cell::new(0) };
}

/// See [`ROWS_LAUNCHES`].
pub(crate) fn rows_launches() -> u64 {
    ROWS_LAUNCHES.get()
}

/// Threads per row: enough to cover the classes once, 32 to 256.
fn block_size(classes: usize, max_units: u32) -> u32 {
    let wanted = classes.next_power_of_two().clamp(32, 256) as u32;
    // The largest power of two the device allows per cube.
    let cap = 1u32 << (31 - max_units.max(1).leading_zeros());
    wanted.min(cap)
}

/// The gradients the forward pass wrote: one `[rows, classes]` buffer per
/// output column.
#[derive(Debug, Clone)]
pub(crate) struct CubeGradients {
    buffers: Vec<CubeTensor>,
}

/// The rows kernel on `student` (`[rows, classes]`) and a dense `teacher`
/// (`[rows, classes]`; `indices` `None`) or a top-k one (`teacher` the
/// `[rows, k]` log-probabilities of the `[rows, k]` classes `indices`, in
/// range), f32, f16 or bf16 each, with `labels` (`[rows]`, already checked
/// and with ignored rows mapped to class 0) for the hard term — or, for
/// DKD (`spec.loss`), the dense teacher and the labels splitting target
/// from non-target classes: the `[rows, spec.weights.len()]` value columns
/// and, when asked, their gradients.
pub(crate) fn rows(
    student: CubeTensor,
    teacher: CubeTensor,
    indices: Option<CubeTensor>,
    labels: Option<CubeTensor>,
    spec: &FusedSpec,
    with_gradients: bool,
) -> (CubeTensor, CubeGradients) {
    let student = into_contiguous(student);
    let teacher = into_contiguous(teacher);
    let indices = indices.map(into_contiguous);
    let [rows, classes] = student.shape().dims::<2>();
    let columns = spec.weights.len();
    assert!(
        (1..=2).contains(&columns),
        "the cube kernel writes one or two columns, not {columns}"
    );
    let client = student.client.clone();
    let device = student.device.clone();
    let (student_dtype, teacher_dtype) = (student.dtype, teacher.dtype);
    let empty = |shape: [usize; 2], dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new(shape), dtype)
    };
    // Values in f32; gradients in the student's dtype.
    let values = empty([rows, columns], DType::F32);
    let gradients: Vec<CubeTensor> = match with_gradients {
        true => (0..columns)
            .map(|_| empty([rows, classes], student_dtype))
            .collect(),
        false => Vec::new(),
    };
    // Arguments the kernel does not read (no labels, no gradients, one
    // column) are 1-element placeholders.
    let placeholder = || empty([1, 1], student_dtype);
    let labels = labels.map(into_contiguous);
    let label_dtype = labels.as_ref().map_or(DType::I32, |l| l.dtype);
    let labels_arg = labels.clone().unwrap_or_else(|| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new([1]), DType::I32)
    });
    let grad0 = gradients.first().cloned().unwrap_or_else(placeholder);
    let grad1 = gradients.get(1).cloned().unwrap_or_else(placeholder);

    let Plugin {
        kind: divergence,
        mix,
        scale,
    } = Plugin::of(spec.loss.divergence());
    let with_labels = labels.is_some();
    let properties = client.properties();
    let config = RowsConfig {
        divergence,
        block: block_size(classes, properties.hardware.max_units_per_cube),
        columns: columns as u32,
        with_labels,
        separate_hard: with_labels && spec.temperature != 1.0,
        with_gradients,
    };
    // One cube per row, laid out in x then y (a dimension holds at most
    // `max_cube_count` cubes); the kernel skips the cubes past the last row.
    let max_x = properties.hardware.max_cube_count.0.max(1) as usize;
    let cube_count = CubeCount::Static(rows.min(max_x) as u32, rows.div_ceil(max_x) as u32, 1);
    let weight = |k: usize, hard: bool| {
        spec.weights
            .get(k)
            .map_or(0.0, |&(ws, wh)| if hard { wh } else { ws }) as f32
    };
    ROWS_LAUNCHES.set(ROWS_LAUNCHES.get() + 1);
    let dim = CubeDim::new_1d(config.block);
    let inv_t = (1.0 / spec.temperature) as f32;
    let soft_factor = spec.soft_factor as f32;
    let (student_type, teacher_type, label_type) = (
        dtype_to_storage_type(student_dtype),
        dtype_to_storage_type(teacher_dtype),
        dtype_to_storage_type(label_dtype),
    );
    match indices {
        None if spec.loss == FusedLoss::Dkd => dkd_rows_kernel::launch(
            &client,
            cube_count,
            dim,
            student.into_tensor_arg(),
            teacher.into_tensor_arg(),
            // DKD's check refused a call without labels.
            labels_arg.into_tensor_arg(),
            values.clone().into_tensor_arg(),
            grad0.into_tensor_arg(),
            grad1.into_tensor_arg(),
            inv_t,
            (1.0 / spec.teacher_temperature) as f32,
            soft_factor,
            weight(0, false),
            weight(0, true),
            weight(1, false),
            weight(1, true),
            config,
            [student_type, teacher_type, label_type],
        ),
        None => kd_rows_kernel::launch(
            &client,
            cube_count,
            dim,
            student.into_tensor_arg(),
            teacher.into_tensor_arg(),
            labels_arg.into_tensor_arg(),
            values.clone().into_tensor_arg(),
            grad0.into_tensor_arg(),
            grad1.into_tensor_arg(),
            inv_t,
            (1.0 / spec.teacher_temperature) as f32,
            soft_factor,
            mix,
            scale,
            weight(0, false),
            weight(0, true),
            weight(1, false),
            weight(1, true),
            config,
            [student_type, teacher_type, label_type],
        ),
        Some(indices) => {
            let k = teacher.shape().dims::<2>()[1] as u32;
            let index_type = dtype_to_storage_type(indices.dtype);
            kd_top_k_rows_kernel::launch(
                &client,
                cube_count,
                dim,
                student.into_tensor_arg(),
                teacher.into_tensor_arg(),
                indices.into_tensor_arg(),
                labels_arg.into_tensor_arg(),
                values.clone().into_tensor_arg(),
                grad0.into_tensor_arg(),
                grad1.into_tensor_arg(),
                inv_t,
                soft_factor,
                mix,
                scale,
                weight(0, false),
                weight(0, true),
                weight(1, false),
                weight(1, true),
                config,
                k,
                [student_type, teacher_type, label_type, index_type],
            )
        }
    }
    (values, CubeGradients { buffers: gradients })
}

/// The backward pass: `Σ_k upstream[b, k] · G_k[b, :]`, written over the
/// first gradient buffer (no new `[rows, classes]` allocation).
pub(crate) fn combine(gradients: CubeGradients, upstream: CubeTensor) -> CubeTensor {
    // The values were f32, so their gradient is; cast anything else.
    let upstream = match upstream.dtype {
        DType::F32 => into_contiguous(upstream),
        _ => into_contiguous(cast(upstream, DType::F32)),
    };
    let mut buffers = gradients.buffers.into_iter();
    let grad0 = buffers
        .next()
        .expect("the forward pass wrote the gradients");
    let grad1 = buffers.next();
    let columns = 1 + grad1.is_some() as u32;
    let client = grad0.client.clone();
    let dtype = grad0.dtype;
    let elements = grad0.shape().num_elements();
    let cube_dim = CubeDim::new_1d(256);
    weighted_gradient_kernel::launch(
        &client,
        calculate_cube_count_elemwise(&client, elements, cube_dim),
        cube_dim,
        grad0.clone().into_tensor_arg(),
        // One column: a placeholder, never read (binding `grad0` twice would alias it).
        grad1
            .unwrap_or_else(|| {
                let device = grad0.device.clone();
                empty_device_contiguous_dtype(client.clone(), device, Shape::new([1, 1]), dtype)
            })
            .into_tensor_arg(),
        upstream.into_tensor_arg(),
        columns,
        dtype_to_storage_type(dtype),
    );
    grad0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_covers_the_classes_within_the_device_limit() {
        assert_eq!(block_size(1, 1024), 32);
        assert_eq!(block_size(33, 1024), 64);
        assert_eq!(block_size(1000, 1024), 256);
        assert_eq!(block_size(32001, 1024), 256);
        assert_eq!(block_size(32001, 100), 64);
    }
}
