//! The paper's nets: ReLU MLPs with optional dropout and a max-norm
//! constraint on each unit's incoming weights (Srivastava et al. 2014, the
//! regulariser Hinton et al. used for the 1200-1200 teacher).
#![allow(dead_code)] // the integration test uses a different part than the example

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// A ReLU multi-layer perceptron with dropout on its input and hidden layers.
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub input_dropout: Dropout,
    pub hidden_dropout: Dropout,
}

impl Mlp {
    /// Layers of the given widths (e.g. `[784, 1200, 1200, 10]`); dropout
    /// probabilities of 0 turn dropout off. Dropout acts only on an autodiff
    /// device, so a model made for evaluation with `valid()` is deterministic.
    pub fn new(widths: &[usize], input_dropout: f64, hidden_dropout: f64, device: &Device) -> Self {
        Self {
            layers: widths
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
            input_dropout: DropoutConfig::new(input_dropout).init(),
            hidden_dropout: DropoutConfig::new(hidden_dropout).init(),
        }
    }

    /// Logits `[batch, classes]` for inputs `[batch, widths[0]]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let mut h = self.input_dropout.forward(x);
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h);
            if i < last {
                h = self.hidden_dropout.forward(relu(h));
            }
        }
        h
    }

    /// Rescales every unit's incoming weight vector whose L2 norm exceeds
    /// `max_norm` back onto the ball of that radius (applied after each step).
    pub fn constrain_max_norm(mut self, max_norm: f32) -> Self {
        for layer in &mut self.layers {
            layer.weight = layer.weight.clone().map(|w| {
                // burn stores a Linear weight as [inputs, outputs]: a unit's
                // incoming weights are a column.
                // Computed outside the graph, then a fresh trainable leaf.
                let w = w.detach();
                let norms = w.clone().square().sum_dim(0).sqrt();
                let scale = norms.clamp_min(max_norm).recip().mul_scalar(max_norm);
                (w * scale).detach().require_grad()
            });
        }
        self
    }
}
