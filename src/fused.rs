//! The fused KD kernel as a burn backend extension on flex: it reads the logits
//! in flex's own buffers (no copy out of burn) and, under autodiff, registers one
//! graph node whose backward is the closed-form gradient the kernel computed in
//! the forward pass (no autodiff through softmax, log and products, and no
//! surrogate node).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{Tensor, TensorData};

use crate::kernel::{KernelSpec, kd_rows, weighted_gradient};

/// The loss's settings as the kernel needs them, passed by value through
/// burn's dispatch.
#[derive(Debug, Clone)]
pub(crate) struct FusedSpec {
    pub temperature: f64,
    /// The temperature of the teacher's values: `T` for logits, 1 for log-probabilities.
    pub teacher_temperature: f64,
    /// Multiplies the KL divergence: T² or 1.
    pub soft_factor: f64,
    /// Labels, already checked to lie in `0..classes`; `None`: no hard term.
    pub targets: Option<Arc<[i64]>>,
    /// Output column `k` is `w_s·soft_row + w_h·hard_row` for `(w_s, w_h) = weights[k]`.
    pub weights: Vec<(f64, f64)>,
}

/// `[batch, weights.len()]`: for each row and each weight pair `(w_s, w_h)`,
/// `w_s · soft_factor · KL(p‖q) + w_h · CE`, differentiable with respect to
/// the student (the teacher gets no gradient). Flex tensors only.
pub(crate) fn fused_kd_columns(
    student_logits: &Tensor<2>,
    teacher_values: &Tensor<2>,
    spec: FusedSpec,
) -> Tensor<2> {
    let out = <Dispatch as FusedKd>::fused_kd_columns(
        student_logits.clone().into_dispatch(),
        teacher_values.clone().into_dispatch(),
        spec,
    );
    Tensor::from_dispatch(out)
}

#[backend_extension(Flex, Autodiff)]
pub(crate) trait FusedKd: Backend {
    /// See [`fused_kd_columns`].
    fn fused_kd_columns(
        student_logits: FloatTensor<Self>,
        teacher_values: FloatTensor<Self>,
        spec: FusedSpec,
    ) -> FloatTensor<Self>;
}

impl FusedKd for Flex {
    fn fused_kd_columns(student: FlexTensor, teacher: FlexTensor, spec: FusedSpec) -> FlexTensor {
        run(&student, &teacher, &spec, false).0
    }
}

impl<C: CheckpointStrategy> FusedKd for Autodiff<Flex, C> {
    fn fused_kd_columns(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        spec: FusedSpec,
    ) -> FloatTensor<Self> {
        // The teacher was detached by the caller: only the student is a parent.
        let teacher = teacher.into_primitive();
        match FusedKdBackward
            .prepare::<C>([student.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (values, gradients) = run(student.primitive(), &teacher, &spec, true);
                prep.finish(gradients, values)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(run(student.primitive(), &teacher, &spec, false).0)
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

impl Backward<Flex, 1> for FusedKdBackward {
    type State = ColumnGradients;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |upstream| {
            let upstream = upstream.to_contiguous();
            let upstream: &[f32] = upstream.as_slice().expect("contiguous f32 gradient");
            // Normally the only owner by now, so the first buffer is scaled in place.
            let buffers = Arc::try_unwrap(state.buffers).unwrap_or_else(|shared| (*shared).clone());
            let rows = upstream.len() / buffers.len();
            let gradient = weighted_gradient(buffers, upstream, state.classes);
            FlexTensor::from_data(TensorData::new(gradient, [rows, state.classes]))
        });
    }
}

/// Runs the kernel on the buffers of two flex tensors; returns the value
/// columns and, when asked, the gradient of each column.
fn run(
    student: &FlexTensor,
    teacher: &FlexTensor,
    spec: &FusedSpec,
    with_gradients: bool,
) -> (FlexTensor, ColumnGradients) {
    let shape = student.layout().shape();
    let (rows, classes) = (shape[0], shape[1]);
    // Views (slices, transposes) are copied to row-major first; plain tensors are read in place.
    let (student, teacher) = (student.to_contiguous(), teacher.to_contiguous());
    let z: &[f32] = student.as_slice().expect("f32 student logits");
    let v: &[f32] = teacher.as_slice().expect("f32 teacher values");
    let gradient_weights: &[(f64, f64)] = if with_gradients { &spec.weights } else { &[] };
    let out = kd_rows(
        z,
        v,
        &KernelSpec {
            classes,
            temperature: spec.temperature,
            teacher_temperature: spec.teacher_temperature,
            soft_factor: spec.soft_factor,
            targets: spec.targets.as_deref(),
            gradient_weights,
        },
    );
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
        FlexTensor::from_data(TensorData::new(values, [rows, columns])),
        ColumnGradients {
            classes,
            buffers: Arc::new(out.gradients),
        },
    )
}
