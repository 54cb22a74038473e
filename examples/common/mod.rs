//! Code shared by the examples: a small MLP, seeded synthetic classification
//! data, and an Adam training loop.
#![allow(dead_code)] // each example uses a different part

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// A ReLU multi-layer perceptron.
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// Layers of the given widths, e.g. `[20, 128, 10]`.
    pub fn new(widths: &[usize], device: &Device) -> Self {
        let layers = widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Self { layers }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let h = layer.forward(h);
            if i < last { relu(h) } else { h }
        })
    }
}

/// A seeded linear congruential generator for the data.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) as f32
    }

    /// Roughly normal (sum of three uniforms), scaled.
    pub fn noise(&mut self, scale: f32) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() - 1.5) * scale
    }
}

/// `n` points around class `centres` (`[classes × dim]`), bent by a fixed
/// non-linearity so the classes are not linearly separable. Returns features
/// `[n × dim]` and labels.
pub fn clusters(
    centres: &[f32],
    dim: usize,
    n: usize,
    noise: f32,
    seed: u64,
) -> (Vec<f32>, Vec<i64>) {
    let classes = centres.len() / dim;
    let mut rng = Lcg::new(seed);
    let mut x = Vec::with_capacity(n * dim);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let class = (rng.uniform() * classes as f32) as usize % classes;
        y.push(class as i64);
        for d in 0..dim {
            let base = centres[class * dim + d] + rng.noise(noise);
            x.push(base + 0.8 * (1.7 * centres[class * dim + (d + 1) % dim] * base).sin());
        }
    }
    (x, y)
}

/// Features and labels as tensors.
pub fn tensors(
    x: Vec<f32>,
    y: Vec<i64>,
    dim: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<1, Int>) {
    let n = y.len();
    (
        Tensor::from_data(TensorData::new(x, [n, dim]), device),
        Tensor::from_data(TensorData::new(y, [n]), device),
    )
}

/// Fraction of rows whose arg-max equals the label.
pub fn accuracy(logits: Tensor<2>, y: &Tensor<1, Int>) -> f64 {
    let predicted = logits.argmax(1).flatten::<1>(0, 1);
    let correct = predicted.equal(y.clone()).int().sum().into_scalar::<i64>();
    correct as f64 / y.dims()[0] as f64
}

/// Adam for `steps` minibatches of `batch` rows taken in order from the `n`
/// rows of `x` (features `[n, dim]`). `loss_fn(model, logits, rows)` returns the
/// loss of a minibatch; it is printed five times over the run.
pub fn train(
    mut model: Mlp,
    x: &Tensor<2>,
    steps: usize,
    batch: usize,
    lr: f64,
    label: &str,
    mut loss_fn: impl FnMut(&Mlp, Tensor<2>, std::ops::Range<usize>) -> Tensor<1>,
) -> Mlp {
    let [n, dim] = x.dims();
    let mut optimizer = AdamConfig::new().init();
    for step in 0..steps {
        let start = (step * batch) % (n - batch + 1);
        let rows = start..start + batch;
        let logits = model.forward(x.clone().slice([rows.clone(), 0..dim]));
        let loss = loss_fn(&model, logits, rows);
        if step % (steps / 5).max(1) == 0 || step + 1 == steps {
            println!(
                "  [{label}] step {step:4}  loss {:.4}",
                loss.clone().into_scalar::<f32>()
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(lr, model, grads);
    }
    model
}
