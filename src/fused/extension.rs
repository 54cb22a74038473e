//! The fused KD kernel as a burn backend extension on the CPU backends (flex,
//! and ndarray with this crate's `ndarray` feature): it reads the logits in the
//! backend's own buffers (no copy out of burn) and, under autodiff, registers one
//! graph node whose backward is the closed-form gradient the kernel computed in
//! the forward pass (no autodiff through softmax, log and products).

// burn-ndarray is deprecated in burn 0.22 but still supported, and still used.
#![allow(deprecated)]

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{Tensor, TensorData};

use super::FusedSpec;
use super::FusedTeacher;
use super::kernel::{TeacherRows, kd_rows, weighted_gradient};

/// `[batch, weights.len()]`: for each row and each weight pair `(w_s, w_h)`,
/// `w_s · soft_factor · D(p‖q) + w_h · CE` (`D` the spec's divergence), differentiable with respect to
/// the student (the teacher gets no gradient). f32 tensors on a backend the
/// extension lists (see [`super::serves`]). `targets`: labels already checked
/// to lie in `0..classes`; `None`: no hard term.
///
/// The teacher is dense (`indices` `None`: `values` `[batch, classes]`) or a
/// stored top-k (`values` `[batch, k]` log-probabilities and their classes).
pub(crate) fn fused_kd_columns(
    student_logits: &Tensor<2>,
    teacher: FusedTeacher,
    targets: Option<Arc<[i64]>>,
    spec: FusedSpec,
) -> Tensor<2> {
    let out = <Dispatch as FusedKd>::fused_kd_columns(
        student_logits.clone().into_dispatch(),
        teacher.values.clone().into_dispatch(),
        teacher.indices,
        targets,
        spec,
    );
    Tensor::from_dispatch(out)
}

#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Autodiff
)]
pub(crate) trait FusedKd: Backend {
    /// See [`fused_kd_columns`].
    fn fused_kd_columns(
        student_logits: FloatTensor<Self>,
        teacher_values: FloatTensor<Self>,
        teacher_indices: Option<Arc<[i64]>>,
        targets: Option<Arc<[i64]>>,
        spec: FusedSpec,
    ) -> FloatTensor<Self>;
}

/// A backend whose f32 tensors live in host memory and can be read in place.
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

/// Without autodiff: the values only.
impl<B: HostBackend> FusedKd for B {
    fn fused_kd_columns(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        indices: Option<Arc<[i64]>>,
        targets: Option<Arc<[i64]>>,
        spec: FusedSpec,
    ) -> FloatTensor<Self> {
        let teacher = (&teacher, indices.as_deref());
        run::<Self>(&student, teacher, targets.as_deref(), &spec, false).0
    }
}

/// With autodiff: the values, and one node whose backward is the kernel's gradient.
impl<B: HostBackend, C: CheckpointStrategy> FusedKd for Autodiff<B, C> {
    fn fused_kd_columns(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        indices: Option<Arc<[i64]>>,
        targets: Option<Arc<[i64]>>,
        spec: FusedSpec,
    ) -> FloatTensor<Self> {
        let targets = targets.as_deref();
        // The teacher was detached by the caller: only the student is a parent.
        let values = teacher.into_primitive();
        let teacher = (&values, indices.as_deref());
        match Backward::<B, 1>::prepare::<C>(FusedKdBackward, [student.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (values, gradients) =
                    run::<B>(student.primitive(), teacher, targets, &spec, true);
                prep.finish(gradients, values)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(run::<B>(student.primitive(), teacher, targets, &spec, false).0)
            }
        }
    }
}

/// The per-row gradients the forward pass computed, one `[batch, classes]`
/// buffer per output column, kept for the backward pass.
#[derive(Clone)]
struct ColumnGradients {
    classes: usize,
    buffers: Arc<Vec<Vec<f32>>>,
}

impl std::fmt::Debug for ColumnGradients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnGradients")
            .field("classes", &self.classes)
            .field("columns", &self.buffers.len())
            .finish()
    }
}

/// The backward step: `∂L/∂z[b, :] = Σ_k ∂L/∂out[b, k] · G_k[b, :]`.
#[derive(Debug)]
struct FusedKdBackward;

impl<B: HostBackend> Backward<B, 1> for FusedKdBackward {
    type State = ColumnGradients;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |upstream| {
            // Normally the only owner by now, so the first buffer is scaled in place.
            let buffers = Arc::unwrap_or_clone(state.buffers);
            let rows = upstream.shape()[0];
            let gradient = B::with_f32(&upstream, |upstream| {
                weighted_gradient(buffers, upstream, state.classes)
            });
            B::from_f32(gradient, [rows, state.classes])
        });
    }
}

/// Runs the kernel on the buffers of two host tensors; returns the value
/// columns and, when asked, the gradient of each column.
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
