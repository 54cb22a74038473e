//! The fused linear loss's output-layer gradients on the CPU backends (flex, and
//! ndarray with this crate's `ndarray` feature), f32: each chunk's
//! `∂L/∂h_c = G_c Wᵀ` is written into its rows of one host buffer and
//! `∂L/∂W += h_cᵀ G_c`, `∂L/∂b += Σ_rows G_c` are summed in place (gemm with
//! accumulation: no `[d, vocab]` temporary per chunk, as `h_cᵀ G_c + sum`
//! through tensor ops would make), and one autodiff node hands the three
//! buffers back, scaled by the incoming gradient (no copy of `∂L/∂W` either).
//! Other devices and dtypes use tensor ops; see `linear.rs`.

// burn-ndarray is deprecated in burn 0.22 but still supported, and still used.
#![allow(deprecated)]

use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::Tensor;

use super::extension::HostBackend;

/// The three gradients of a fused linear loss, filled chunk by chunk on the host.
#[derive(Debug, Clone)]
pub(crate) struct LayerGradients {
    sums: Arc<Mutex<Sums>>,
    shape: LayerShape,
}

/// The three gradient buffers, row-major.
#[derive(Debug, Clone, Default)]
struct Sums {
    /// `∂L/∂h`, `[rows, d]`.
    hidden: Vec<f32>,
    /// `∂L/∂W`, `[d, vocab]`.
    weight: Vec<f32>,
    /// `∂L/∂b`, `[vocab]`, when the layer has a bias.
    bias: Option<Vec<f32>>,
}

/// `rows` hidden states of width `d`, a `[d, vocab]` layer.
#[derive(Debug, Clone, Copy)]
struct LayerShape {
    rows: usize,
    d: usize,
    vocab: usize,
}

impl LayerGradients {
    /// Zeroed sums for `rows` hidden states of width `d` and a `[d, vocab]` layer.
    pub(crate) fn new(rows: usize, d: usize, vocab: usize, bias: bool) -> Self {
        let sums = Sums {
            hidden: vec![0.0; rows * d],
            weight: vec![0.0; d * vocab],
            bias: bias.then(|| vec![0.0; vocab]),
        };
        Self {
            sums: Arc::new(Mutex::new(sums)),
            shape: LayerShape { rows, d, vocab },
        }
    }

    /// Adds the gradient of rows `start..start + chunk` (`hidden_chunk`
    /// `[chunk, d]`, `logit_gradient` `[chunk, vocab]`) through the layer
    /// `weight` `[d, vocab]`. f32 tensors on flex or ndarray, without autodiff.
    pub(crate) fn add_chunk(
        &self,
        start: usize,
        hidden_chunk: &Tensor<2>,
        logit_gradient: &Tensor<2>,
        weight: &Tensor<2>,
    ) {
        <Dispatch as LinearChunk>::linear_chunk_backward(
            hidden_chunk.clone().into_dispatch(),
            logit_gradient.clone().into_dispatch(),
            weight.clone().into_dispatch(),
            start,
            self.clone(),
        );
    }

    /// `value` (the loss, `[1]`, on the inner backend) as an autodiff tensor
    /// whose one node gives `hidden`, `weight` and `bias` these gradients.
    pub(crate) fn attach(
        self,
        value: Tensor<1>,
        hidden: Tensor<2>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Tensor<1> {
        // A layer without a bias: a constant stands in for it (no parent, no gradient).
        let bias = bias.unwrap_or_else(|| Tensor::zeros([1], &hidden.device()));
        // Every chunk is in: the sums are handed over (no copy).
        let sums = std::mem::take(
            &mut *self
                .sums
                .lock()
                .expect("no chunk panicked holding the sums"),
        );
        let finished = FinishedGradients {
            sums: Arc::new(sums),
            shape: self.shape,
        };
        let out = <Dispatch as AttachLayerGradients>::attach_layer_gradients(
            value.autodiff().into_dispatch(),
            hidden.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            finished,
        );
        Tensor::from_dispatch(out)
    }
}

/// The gradients, complete: the backward node's state.
#[derive(Debug, Clone)]
pub(crate) struct FinishedGradients {
    sums: Arc<Sums>,
    shape: LayerShape,
}

#[backend_extension(Flex: cfg(feature = "flex"), NdArray: cfg(feature = "ndarray"))]
pub(crate) trait LinearChunk: Backend {
    /// See [`LayerGradients::add_chunk`]; returns nothing useful (`hidden`).
    fn linear_chunk_backward(
        hidden: FloatTensor<Self>,
        logit_gradient: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        start: usize,
        sums: LayerGradients,
    ) -> FloatTensor<Self>;
}

#[backend_extension(Flex: cfg(feature = "flex"), NdArray: cfg(feature = "ndarray"), Autodiff)]
pub(crate) trait AttachLayerGradients: Backend {
    /// See [`LayerGradients::attach`].
    fn attach_layer_gradients(
        value: FloatTensor<Self>,
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gradients: FinishedGradients,
    ) -> FloatTensor<Self>;
}

impl<B: HostBackend> LinearChunk for B {
    fn linear_chunk_backward(
        hidden: FloatTensor<Self>,
        logit_gradient: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        start: usize,
        sums: LayerGradients,
    ) -> FloatTensor<Self> {
        let LayerShape { d, vocab, .. } = sums.shape;
        let chunk = hidden.shape()[0];
        let mut guard = sums.sums.lock().expect("sums not poisoned");
        let Sums {
            hidden: grad_hidden,
            weight: grad_weight,
            bias: grad_bias,
        } = &mut *guard;
        B::with_f32(&hidden, |h| {
            B::with_f32(&logit_gradient, |g| {
                B::with_f32(&weight, |w| {
                    let rows = &mut grad_hidden[start * d..(start + chunk) * d];
                    // ∂L/∂h_c = G_c Wᵀ: [chunk, vocab] × [vocab, d].
                    gemm_f32(rows, [chunk, d, vocab], false, g, (vocab, 1), w, (1, vocab));
                    // ∂L/∂W += h_cᵀ G_c: [d, chunk] × [chunk, vocab], in place.
                    let shape = [d, vocab, chunk];
                    gemm_f32(grad_weight, shape, true, h, (1, d), g, (vocab, 1));
                    if let Some(grad_bias) = grad_bias {
                        for row in g.chunks_exact(vocab) {
                            grad_bias.iter_mut().zip(row).for_each(|(s, &x)| *s += x);
                        }
                    }
                })
            })
        });
        drop(guard);
        hidden
    }
}

/// `dst = (accumulate ? dst : 0) + lhs · rhs`, `[m, n] = [m, k] × [k, n]`
/// (`shape` `[m, n, k]`), `dst` row-major, each operand at its `(row, column)`
/// strides.
fn gemm_f32(
    dst: &mut [f32],
    [m, n, k]: [usize; 3],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    let last = |rows: usize, columns: usize, (rs, cs): (usize, usize)| {
        rows.saturating_sub(1) * rs + columns.saturating_sub(1) * cs
    };
    assert_eq!(dst.len(), m * n, "gemm: destination size");
    assert!(
        m * k == 0 || last(m, k, lhs_strides) < lhs.len(),
        "gemm: lhs extent"
    );
    assert!(
        k * n == 0 || last(k, n, rhs_strides) < rhs.len(),
        "gemm: rhs extent"
    );
    let parallelism = if m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three operands are live slices whose extents, at these
    // strides, the asserts above bound.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs.as_ptr(),
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Without autodiff nothing is differentiated: the value.
impl<B: HostBackend> AttachLayerGradients for B {
    fn attach_layer_gradients(
        value: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FinishedGradients,
    ) -> FloatTensor<Self> {
        value
    }
}

/// With autodiff: one node, parents `hidden`, `weight`, `bias`.
impl<B: HostBackend, C: CheckpointStrategy> AttachLayerGradients for Autodiff<B, C> {
    fn attach_layer_gradients(
        value: FloatTensor<Self>,
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gradients: FinishedGradients,
    ) -> FloatTensor<Self> {
        let nodes = [hidden.node(), weight.node(), bias.node()];
        let value = value.into_primitive();
        match Backward::<B, 3>::prepare::<C>(LayerBackward, nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(gradients, value),
            OpsKind::UnTracked(prep) => prep.finish(value),
        }
    }
}

/// The backward step: each parent's gradient times the incoming `∂/∂L`.
#[derive(Debug)]
struct LayerBackward;

impl<B: HostBackend> Backward<B, 3> for LayerBackward {
    type State = FinishedGradients;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let FinishedGradients { sums, shape } = ops.state;
        let upstream = grads.consume::<B>(&ops.node);
        let scale = B::with_f32(&upstream, |u| u[0]);
        // Normally the only owner by now: handed over and scaled in place.
        let sums = Arc::unwrap_or_clone(sums);
        let scaled = |mut buffer: Vec<f32>| {
            if scale != 1.0 {
                buffer.iter_mut().for_each(|x| *x *= scale);
            }
            buffer
        };
        let LayerShape { rows, d, vocab } = shape;
        let [hidden, weight, bias] = ops.parents;
        if let Some(node) = hidden {
            let grad = B::from_f32(scaled(sums.hidden), [rows, d]);
            grads.register::<B>(node.id, grad);
        }
        if let Some(node) = weight {
            let grad = B::from_f32(scaled(sums.weight), [d, vocab]);
            grads.register::<B>(node.id, grad);
        }
        if let (Some(node), Some(sum)) = (bias, sums.bias) {
            let grad = B::from_f32(scaled(sum), [1, vocab]);
            grads.register::<B>(node.id, B::float_reshape(grad, [vocab].into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gemm_f32;

    /// Both products the chunk step makes (`G Wᵀ` with `W` read transposed in
    /// place; `hᵀ G` accumulated onto what `dst` holds) against plain loops.
    #[test]
    fn strided_products_equal_plain_loops() {
        let (rows, d, vocab) = (5, 3, 7);
        let value = |i: usize| ((i * 37 % 23) as f32 - 11.0) / 8.0;
        let h: Vec<f32> = (0..rows * d).map(value).collect();
        let g: Vec<f32> = (0..rows * vocab).map(|i| value(i + 5)).collect();
        let w: Vec<f32> = (0..d * vocab).map(|i| value(i + 11)).collect();

        let mut grad_hidden = vec![f32::NAN; rows * d]; // overwritten, not read
        gemm_f32(
            &mut grad_hidden,
            [rows, d, vocab],
            false,
            &g,
            (vocab, 1),
            &w,
            (1, vocab),
        );
        for (r, i) in (0..rows).flat_map(|r| (0..d).map(move |i| (r, i))) {
            let want: f32 = (0..vocab)
                .map(|j| g[r * vocab + j] * w[i * vocab + j])
                .sum();
            assert!(
                (grad_hidden[r * d + i] - want).abs() < 1e-5,
                "G Wᵀ [{r}, {i}]"
            );
        }

        let start: Vec<f32> = (0..d * vocab).map(|i| value(i + 3)).collect();
        let mut grad_weight = start.clone();
        gemm_f32(
            &mut grad_weight,
            [d, vocab, rows],
            true,
            &h,
            (1, d),
            &g,
            (vocab, 1),
        );
        for (i, j) in (0..d).flat_map(|i| (0..vocab).map(move |j| (i, j))) {
            let product: f32 = (0..rows).map(|r| h[r * d + i] * g[r * vocab + j]).sum();
            let want = start[i * vocab + j] + product;
            assert!(
                (grad_weight[i * vocab + j] - want).abs() < 1e-5,
                "hᵀ G [{i}, {j}]"
            );
        }
    }
}
