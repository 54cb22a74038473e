//! The eq. 5 specialist combiner at B = 1024, C = 1000, 10 specialists of 50
//! classes, top-1, next to the cost it is measured against: one forward pass of
//! a 784-800-800-1000 MLP on the same batch.
//!
//! ```text
//! cargo bench --bench combiner
//! ```

use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Distribution, Tensor};
use burn_distill::specialist::{ClassSubset, Specialist, SpecialistCombinerConfig};
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use std::time::Duration;

const BATCH: usize = 1024;
const CLASSES: usize = 1000;
const SPECIALISTS: usize = 10;
const SUBSET: usize = 50;

fn bench_combiner(c: &mut Criterion) {
    let device = Device::flex();
    device.seed(0);
    let generalist = softmax(
        Tensor::<2>::random([BATCH, CLASSES], Distribution::Normal(0.0, 3.0), &device),
        1,
    );
    // Specialist m covers classes m·50 .. m·50+50, so top-1 activates at most one.
    let specialists: Vec<Specialist> = (0..SPECIALISTS)
        .map(|m| {
            Specialist::new(
                ClassSubset::new((m * SUBSET..(m + 1) * SUBSET).collect(), CLASSES).unwrap(),
            )
        })
        .collect();
    let specialist_probs: Vec<Tensor<2>> = specialists
        .iter()
        .map(|s| {
            softmax(
                Tensor::<2>::random(
                    [BATCH, s.num_outputs()],
                    Distribution::Normal(0.0, 3.0),
                    &device,
                ),
                1,
            )
        })
        .collect();
    let combiner = SpecialistCombinerConfig::new().init();
    let out = combiner
        .combine(generalist.clone(), &specialists, &specialist_probs)
        .unwrap();
    println!(
        "combiner: {} iterations (default settings: each row stops when its q moves by < 1e-9); objective trace {:?}",
        out.iterations, out.objective_trace
    );

    let layers: Vec<Linear> = [784, 800, 800, CLASSES]
        .windows(2)
        .map(|w| LinearConfig::new(w[0], w[1]).init(&device))
        .collect();
    let input = Tensor::<2>::random([BATCH, 784], Distribution::Default, &device);

    let mut group = c.benchmark_group("specialist_combiner");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("combine_1024x1000_10x50_top1", |b| {
        b.iter(|| {
            black_box(
                combiner
                    .combine(generalist.clone(), &specialists, &specialist_probs)
                    .unwrap()
                    .probs,
            )
        })
    });
    group.bench_function("mlp_784_800_800_1000_forward_1024", |b| {
        b.iter(|| {
            let h = relu(layers[0].forward(input.clone()));
            let h = relu(layers[1].forward(h));
            black_box(layers[2].forward(h))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_combiner);
criterion_main!(benches);
