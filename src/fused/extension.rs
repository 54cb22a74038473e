//! The fused KD rows as a burn backend extension: on the CPU backends (flex,
//! and ndarray with this crate's `ndarray` feature) the host kernel reads the
//! logits in the backend's own buffers (no copy out of burn); on burn's Cube
//! backends (with the `cube-kernel` feature) the CubeCL kernel runs on the
//! device. Under autodiff both register one graph node whose backward is the
//! closed-form gradient the kernel computed in the forward pass (no autodiff
//! through softmax, log and products).

// burn-ndarray is deprecated in burn 0.22 but still supported, and still used.
#![allow(deprecated)]

use std::sync::Arc;

#[cfg(any(feature = "flex", feature = "ndarray"))]
use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
#[cfg(any(feature = "flex", feature = "ndarray"))]
use burn::tensor::TensorData;
use burn::tensor::{Device, Int, Tensor};

#[cfg(any(feature = "flex", feature = "ndarray"))]
use super::kernel::{TeacherRows, kd_rows, weighted_gradient};
use super::{FusedSpec, FusedTeacher};

/// `[batch, weights.len()]`: for each row and each weight pair `(w_s, w_h)`,
/// `w_s · soft_factor · D(p‖q) + w_h · CE` (`D` the spec's divergence), differentiable with respect to
/// the student (the teacher gets no gradient), on a backend and in dtypes
/// that an engine serves (see [`super::engine`]).
///
/// The teacher is dense (`indices` [`FusedInts::None`]: `values` `[batch,
/// classes]`) or a stored top-k (`values` `[batch, k]` log-probabilities and
/// their classes, in range). The labels (already checked to lie in
/// `0..classes`; `None`: no hard term) and the top-k classes are on the host
/// for the CPU engines, which index with them there, and device tensors for
/// the Cube engine.
pub(crate) fn fused_kd_columns(
    student_logits: &Tensor<2>,
    teacher: FusedTeacher,
    labels: FusedInts<1>,
    spec: FusedSpec,
) -> Tensor<2> {
    let device = student_logits.device();
    let (host_labels, device_labels, labels_on_device) = labels.split(&device);
    let (indices, device_indices, indices_on_device) = teacher.indices.split(&device);
    let out = <Dispatch as FusedKd>::fused_kd_columns(
        student_logits.clone().into_dispatch(),
        teacher.values.clone().into_dispatch(),
        device_labels.into_dispatch(),
        device_indices.into_dispatch(),
        HostRows {
            indices,
            labels: host_labels,
            device_labels: labels_on_device,
            device_indices: indices_on_device,
        },
        spec,
    );
    Tensor::from_dispatch(out)
}

/// Integers the kernel reads — labels (`D = 1`) or a top-k teacher's classes
/// (`D = 2`, row-major on the host) — where the engine that runs wants them.
// Built once per call and consumed at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum FusedInts<const D: usize> {
    /// None (no hard term; a dense teacher).
    None,
    /// Read back to the host (the CPU engines).
    Host(Arc<[i64]>),
    /// On the device (the Cube engine).
    Device(Tensor<D, Int>),
}

impl<const D: usize> FusedInts<D> {
    /// The host values, and the device tensor for burn's extension routing
    /// (which takes a tensor, not an optional one: a 1-element placeholder
    /// where the values are not on the device) with whether it is one.
    fn split(self, device: &Device) -> (Option<Arc<[i64]>>, Tensor<D, Int>, bool) {
        let placeholder = || Tensor::<D, Int>::zeros([1; D], device);
        match self {
            Self::None => (None, placeholder(), false),
            Self::Host(values) => (Some(values), placeholder(), false),
            Self::Device(tensor) => (None, tensor, true),
        }
    }
}

/// What the CPU engines read on the host: a top-k teacher's classes
/// (row-major `[batch × k]`) and the labels.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostRows {
    indices: Option<Arc<[i64]>>,
    labels: Option<Arc<[i64]>>,
    /// Whether the device labels are the labels (else a placeholder).
    #[cfg_attr(not(feature = "cube-kernel"), allow(dead_code))]
    device_labels: bool,
    /// Whether the device indices are the top-k classes (else a placeholder).
    #[cfg_attr(not(feature = "cube-kernel"), allow(dead_code))]
    device_indices: bool,
}

#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "cube-kernel"),
    Autodiff
)]
pub(crate) trait FusedKd: Backend {
    /// See [`fused_kd_columns`].
    fn fused_kd_columns(
        student_logits: FloatTensor<Self>,
        teacher_values: FloatTensor<Self>,
        device_labels: IntTensor<Self>,
        device_indices: IntTensor<Self>,
        host: HostRows,
        spec: FusedSpec,
    ) -> FloatTensor<Self>;
}

/// A backend the fused rows run on: values and, when asked, the gradients to
/// keep for the backward pass; the backward pass itself.
pub(crate) trait RowEngine: Backend {
    /// The gradients the forward pass computed, one per output column.
    type Gradients: Clone + Send + Sync + std::fmt::Debug + 'static;

    /// The value columns `[rows, spec.weights.len()]` and, if
    /// `with_gradients`, each column's gradient.
    fn rows(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        device_labels: IntTensor<Self>,
        device_indices: IntTensor<Self>,
        host: &HostRows,
        spec: &FusedSpec,
        with_gradients: bool,
    ) -> (FloatTensor<Self>, Self::Gradients);

    /// `∂L/∂z[b, :] = Σ_k upstream[b, k] · G_k[b, :]`.
    fn combine(gradients: Self::Gradients, upstream: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Without autodiff: the values only.
impl<B: RowEngine> FusedKd for B {
    fn fused_kd_columns(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        device_labels: IntTensor<Self>,
        device_indices: IntTensor<Self>,
        host: HostRows,
        spec: FusedSpec,
    ) -> FloatTensor<Self> {
        B::rows(
            student,
            teacher,
            device_labels,
            device_indices,
            &host,
            &spec,
            false,
        )
        .0
    }
}

/// With autodiff: the values, and one node whose backward is the kernel's gradient.
impl<B: RowEngine, C: CheckpointStrategy> FusedKd for Autodiff<B, C> {
    fn fused_kd_columns(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        device_labels: IntTensor<Self>,
        device_indices: IntTensor<Self>,
        host: HostRows,
        spec: FusedSpec,
    ) -> FloatTensor<Self> {
        // The teacher was detached by the caller: only the student is a parent.
        let teacher = teacher.into_primitive();
        let rows = |student, with_gradients| {
            B::rows(
                student,
                teacher,
                device_labels,
                device_indices,
                &host,
                &spec,
                with_gradients,
            )
        };
        match Backward::<B, 1>::prepare::<C>(FusedKdBackward, [student.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (values, gradients) = rows(student.primitive().clone(), true);
                prep.finish(gradients, values)
            }
            OpsKind::UnTracked(prep) => prep.finish(rows(student.primitive().clone(), false).0),
        }
    }
}

/// The backward step: `∂L/∂z[b, :] = Σ_k ∂L/∂out[b, k] · G_k[b, :]`.
#[derive(Debug)]
struct FusedKdBackward;

impl<B: RowEngine> Backward<B, 1> for FusedKdBackward {
    type State = B::Gradients;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |upstream| {
            B::combine(state, upstream)
        });
    }
}

#[cfg(feature = "cube-kernel")]
impl RowEngine for burn_cubecl::CubeBackend {
    type Gradients = super::cube::CubeGradients;

    fn rows(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        device_labels: IntTensor<Self>,
        device_indices: IntTensor<Self>,
        host: &HostRows,
        spec: &FusedSpec,
        with_gradients: bool,
    ) -> (FloatTensor<Self>, Self::Gradients) {
        assert!(
            host.indices.is_none() && host.labels.is_none(),
            "the cube kernel takes labels and top-k classes on the device"
        );
        let labels = host.device_labels.then_some(device_labels);
        let indices = host.device_indices.then_some(device_indices);
        super::cube::rows(student, teacher, indices, labels, spec, with_gradients)
    }

    fn combine(gradients: Self::Gradients, upstream: FloatTensor<Self>) -> FloatTensor<Self> {
        super::cube::combine(gradients, upstream)
    }
}

/// A backend whose f32 tensors live in host memory and can be read in place.
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(crate) trait HostBackend: Backend {
    /// Calls `f` with the elements of an f32 tensor, row-major: in place for a
    /// plain tensor, through a row-major copy for a strided or offset view.
    fn with_f32<R>(tensor: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R;
    /// A row-major f32 tensor that takes over `values` (no copy).
    fn from_f32(values: Vec<f32>, shape: [usize; 2]) -> FloatTensor<Self>;
}

#[cfg(feature = "flex")]
impl HostBackend for burn::backend::Flex {
    fn with_f32<R>(tensor: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R {
        let tensor = tensor.to_contiguous(); // a handle on the same buffer unless a view
        f(tensor.as_slice().expect("contiguous f32 tensor"))
    }

    fn from_f32(values: Vec<f32>, shape: [usize; 2]) -> FloatTensor<Self> {
        burn::backend::flex::FlexTensor::from_data(TensorData::new(values, shape))
    }
}

#[cfg(feature = "ndarray")]
impl HostBackend for burn::backend::NdArray {
    fn with_f32<R>(tensor: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R {
        match tensor {
            burn::backend::ndarray::NdArrayTensor::F32(storage) => {
                let view = storage.view();
                let standard = view.as_standard_layout(); // borrowed unless a view
                f(standard.as_slice().expect("standard-layout f32 tensor"))
            }
            other => unreachable!(
                "the fused kernel takes f32 tensors, got {:?}",
                other.dtype()
            ),
        }
    }

    fn from_f32(values: Vec<f32>, shape: [usize; 2]) -> FloatTensor<Self> {
        burn::backend::ndarray::NdArrayTensor::from_data(TensorData::new(values, shape))
    }
}

/// The CPU engines: the host kernel on the backend's buffers.
#[cfg(any(feature = "flex", feature = "ndarray"))]
impl<B: HostBackend> RowEngine for B {
    type Gradients = ColumnGradients;

    fn rows(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        _device_labels: IntTensor<Self>,
        _device_indices: IntTensor<Self>,
        host: &HostRows,
        spec: &FusedSpec,
        with_gradients: bool,
    ) -> (FloatTensor<Self>, Self::Gradients) {
        let teacher = (&teacher, host.indices.as_deref());
        run::<B>(
            &student,
            teacher,
            host.labels.as_deref(),
            spec,
            with_gradients,
        )
    }

    fn combine(state: Self::Gradients, upstream: FloatTensor<Self>) -> FloatTensor<Self> {
        // Normally the only owner by now, so the first buffer is scaled in place.
        let buffers = Arc::unwrap_or_clone(state.buffers);
        let rows = upstream.shape()[0];
        let gradient = B::with_f32(&upstream, |upstream| {
            weighted_gradient(buffers, upstream, state.classes)
        });
        B::from_f32(gradient, [rows, state.classes])
    }
}

/// The per-row gradients the forward pass computed, one `[batch, classes]`
/// buffer per output column, kept for the backward pass.
#[cfg(any(feature = "flex", feature = "ndarray"))]
#[derive(Clone)]
pub(crate) struct ColumnGradients {
    classes: usize,
    buffers: Arc<Vec<Vec<f32>>>,
}

#[cfg(any(feature = "flex", feature = "ndarray"))]
impl std::fmt::Debug for ColumnGradients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnGradients")
            .field("classes", &self.classes)
            .field("columns", &self.buffers.len())
            .finish()
    }
}

/// Runs the host kernel on the buffers of two host tensors; returns the value
/// columns and, when asked, the gradient of each column.
#[cfg(any(feature = "flex", feature = "ndarray"))]
fn run<B: HostBackend>(
    student: &FloatTensor<B>,
    (teacher, indices): (&FloatTensor<B>, Option<&[i64]>),
    targets: Option<&[i64]>,
    spec: &FusedSpec,
    with_gradients: bool,
) -> (FloatTensor<B>, ColumnGradients) {
    let shape = student.shape();
    let (rows, classes) = (shape[0], shape[1]);
    let k = teacher.shape()[1];
    let out = B::with_f32(student, |z| {
        B::with_f32(teacher, |v| {
            let teacher = match indices {
                None => TeacherRows::Dense(v),
                Some(indices) => TeacherRows::TopK {
                    indices,
                    log_probs: v,
                    k,
                },
            };
            kd_rows(z, teacher, classes, targets, spec, with_gradients)
        })
    });
    let columns = spec.weights.len();
    let mut values = Vec::with_capacity(rows * columns);
    for row in 0..rows {
        let soft = out.soft_rows[row] as f64;
        let hard = out.hard_rows.get(row).map_or(0.0, |&h| h as f64);
        values.extend(spec.weights.iter().map(|&(ws, wh)| {
            // A zero weight contributes nothing, even when its term is infinite.
            let part = |w: f64, term: f64| if w == 0.0 { 0.0 } else { w * term };
            (part(ws, soft) + part(wh, hard)) as f32
        }));
    }
    (
        B::from_f32(values, [rows, columns]),
        ColumnGradients {
            classes,
            buffers: Arc::new(out.gradients),
        },
    )
}
