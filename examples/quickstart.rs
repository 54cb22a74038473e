//! Quick start: distil a teacher MLP into a small student on synthetic data.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! A 10-class problem in 20 dimensions (noisy clusters bent by a fixed
//! non-linearity) is learnt by a 20-128-128-10 teacher from 4000 points. A
//! 20-64-10 student then sees only 300 of those points (the paper's §4 setting,
//! where soft targets stop a model from overfitting a small transfer set), and is
//! trained twice from the same initialisation and data order: on the hard labels
//! alone, and with `KdLoss` (T = 4, 0.9 soft / 0.1 hard). The program prints the
//! losses as it goes and the test accuracy of all three models.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::{KdLoss, KdLossConfig};

const DIM: usize = 20;
const CLASSES: usize = 10;

#[derive(Module, Debug)]
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn new(widths: &[usize], device: &Device) -> Self {
        let layers = widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Self { layers }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let h = layer.forward(h);
            if i < last { relu(h) } else { h }
        })
    }
}

/// Seeded synthetic data: `n` points, features `[n, DIM]` and labels `[n]`.
fn synthetic(n: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let mut state = seed;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) as f32
    };
    // Class centres are fixed (seed 0) so train and test share them.
    let mut centre_state = 0u64;
    let mut centre_uniform = move || {
        centre_state = centre_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((centre_state >> 11) as f64 / (1u64 << 53) as f64) as f32
    };
    let centres: Vec<f32> = (0..CLASSES * DIM)
        .map(|_| centre_uniform() * 4.0 - 2.0)
        .collect();
    let mut x = Vec::with_capacity(n * DIM);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let class = (uniform() * CLASSES as f32) as usize % CLASSES;
        y.push(class as i64);
        for d in 0..DIM {
            let noise = (uniform() + uniform() + uniform() - 1.5) * 2.5;
            let base = centres[class * DIM + d] + noise;
            // A fixed bend so the classes are not linearly separable.
            x.push(base + 0.8 * (1.7 * centres[class * DIM + (d + 1) % DIM] * base).sin());
        }
    }
    (x, y)
}

fn accuracy(model: &Mlp, x: &Tensor<2>, y: &Tensor<1, Int>) -> f64 {
    let predicted = model.forward(x.clone()).argmax(1).flatten::<1>(0, 1);
    let correct = predicted.equal(y.clone()).int().sum().into_scalar::<i64>();
    correct as f64 / y.dims()[0] as f64
}

/// Trains `model` for `steps` minibatches; `loss_fn` maps (logits, batch index range) to a loss.
fn train(
    mut model: Mlp,
    steps: usize,
    batch: usize,
    n: usize,
    label: &str,
    mut loss_fn: impl FnMut(&Mlp, Tensor<2>, std::ops::Range<usize>) -> Tensor<1>,
    x: &Tensor<2>,
) -> Mlp {
    let mut optimizer = AdamConfig::new().init();
    for step in 0..steps {
        let start = (step * batch) % (n - batch);
        let rows = start..start + batch;
        let logits = model.forward(x.clone().slice([rows.clone(), 0..DIM]));
        let loss = loss_fn(&model, logits, rows);
        if step % (steps / 5) == 0 || step + 1 == steps {
            println!(
                "  [{label}] step {step:4}  loss {:.4}",
                loss.clone().into_scalar::<f32>()
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(3e-3, model, grads);
    }
    model
}

fn main() {
    let device = Device::flex().autodiff();
    // Seeded parameter initialisation, so that every run prints the same numbers.
    device.seed(7);
    let (n_train, n_test) = (4000, 2000);
    let (x_train, y_train) = synthetic(n_train, 1);
    let (x_test, y_test) = synthetic(n_test, 2);
    let x = Tensor::<2>::from_data(TensorData::new(x_train, [n_train, DIM]), &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(y_train, [n_train]), &device);
    let xt = Tensor::<2>::from_data(TensorData::new(x_test, [n_test, DIM]), &device);
    let yt = Tensor::<1, Int>::from_data(TensorData::new(y_test, [n_test]), &device);
    let (steps, batch) = (1500, 64);
    let ce = CrossEntropyLossConfig::new().init(&device);

    println!("teacher 20-128-128-10, hard labels:");
    let teacher = train(
        Mlp::new(&[DIM, 128, 128, CLASSES], &device),
        steps,
        batch,
        n_train,
        "teacher",
        |_, logits, rows| ce.forward(logits, y.clone().slice([rows])),
        &x,
    );
    let teacher_logits = teacher.forward(x.clone()).detach();

    // The student's transfer set: the first 300 training points only.
    let n_transfer = 300;
    let student_init = Mlp::new(&[DIM, 64, CLASSES], &device);
    println!("student 20-64-10 on {n_transfer} points, hard labels only:");
    let baseline = train(
        student_init.clone(),
        steps,
        batch,
        n_transfer,
        "student",
        |_, logits, rows| ce.forward(logits, y.clone().slice([rows])),
        &x,
    );
    let kd: KdLoss = KdLossConfig::new().with_temperature(4.0).init();
    println!("student 20-64-10 on {n_transfer} points, distilled ({kd}):");
    let distilled = train(
        student_init,
        steps,
        batch,
        n_transfer,
        "distilled",
        |_, logits, rows| {
            let parts = kd.forward_parts(
                logits,
                teacher_logits.clone().slice([rows.clone(), 0..CLASSES]),
                y.clone().slice([rows]),
            );
            parts.total
        },
        &x,
    );

    println!("\ntest accuracy on {n_test} held-out points:");
    println!(
        "  teacher            {:.2}%",
        100.0 * accuracy(&teacher, &xt, &yt)
    );
    println!(
        "  student (hard)     {:.2}%",
        100.0 * accuracy(&baseline, &xt, &yt)
    );
    println!(
        "  student (KD, T=4)  {:.2}%",
        100.0 * accuracy(&distilled, &xt, &yt)
    );
}
