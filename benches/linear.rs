//! Forward + backward of distillation from hidden states and output layers
//! (the teacher's too), f32 on flex: `FusedLinearKdLoss` (its default chunks,
//! 131 rows at 32,000 classes, and chunks of 256 rows)
//! against the materialised path — `hidden · weight` to the full logits, then
//! `KdLoss` with its fused kernel, or with `fused_kernel = false` (autodiff).
//! Forward KL, T = 4, 0.9 soft + 0.1 hard. `benches/compare_torch_linear.py`
//! times the PyTorch forms; `examples/linear_memory.rs` measures peak memory.
//!
//! ```text
//! cargo bench --bench linear
//! ```

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_distill::{FusedLinearKdLossConfig, KdLossConfig, LinearTeacher};
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use std::time::Duration;

const TOKENS: usize = 2048;
const D: usize = 512;
const VOCAB: usize = 32000;

fn bench(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    println!(
        "threads available: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let normal = |shape: [usize; 2], scale: f64| {
        Tensor::<2>::random(shape, Distribution::Normal(0.0, scale), &device)
    };
    let scale = 3.0 / (D as f64).sqrt();
    let hidden = normal([TOKENS, D], 1.0);
    let weight = normal([D, VOCAB], scale);
    let teacher_hidden = normal([TOKENS, D], 1.0);
    let teacher_weight = normal([D, VOCAB], scale);
    let labels =
        Tensor::<1, Int>::random([TOKENS], Distribution::Uniform(0.0, VOCAB as f64), &device);
    let kd = KdLossConfig::new().with_temperature(4.0);
    let fused = FusedLinearKdLossConfig::new(kd.clone()).init();
    let fused_256 = FusedLinearKdLossConfig::new(kd.clone())
        .with_chunk_size(Some(256))
        .init();
    let size = format!("{TOKENS}x{D}x{VOCAB}");

    let mut group = c.benchmark_group("linear_fwd_bwd/flex");
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let step = |b: &mut criterion::Bencher, loss: &dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<1>| {
        b.iter(|| {
            let (h, w) = (hidden.clone().require_grad(), weight.clone().require_grad());
            let grads = loss(h.clone(), w.clone()).backward();
            black_box((h.grad(&grads), w.grad(&grads)))
        })
    };
    for (name, fused) in [
        ("fused_linear", &fused),
        ("fused_linear_chunk256", &fused_256),
    ] {
        group.bench_function(format!("{name}/{size}"), |b| {
            step(b, &|h, w| {
                let teacher = LinearTeacher::Hidden {
                    hidden: teacher_hidden.clone(),
                    weight: teacher_weight.clone(),
                    bias: None,
                };
                fused.forward(h, w, None, teacher, labels.clone())
            })
        });
    }
    for (name, kernel) in [
        ("materialised_fused_kernel", true),
        ("materialised_autodiff", false),
    ] {
        let kd = kd.clone().with_fused_kernel(kernel).init();
        group.bench_function(format!("{name}/{size}"), |b| {
            step(b, &|h, w| {
                let teacher = teacher_hidden.clone().matmul(teacher_weight.clone());
                kd.forward(h.matmul(w), teacher, labels.clone())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
