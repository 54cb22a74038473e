//! Forward + backward of the feature losses (`burn_distill::feature`), f32 on
//! flex, at the shapes they meet in use: FitNets' hint and attention transfer
//! on a CIFAR ResNet's middle layer (`[64, 64, 16, 16]` student features
//! against a `[64, 128, 16, 16]` teacher; the hint's regressor trained with
//! them), RKD on a batch of 128 embeddings (512 wide against 2048), and the
//! hidden-state cosine on `[8, 256, 768]` states through a projection from 512.
//! The gradient is taken with respect to the student's features (and the
//! regressor / projection). `benches/compare_torch_features.py` times
//! torchdistill's forms of the same losses at the same shapes, eager and
//! `torch.compile`.
//!
//! ```text
//! cargo bench --bench features
//! ```

use burn::tensor::{Device, Distribution, Tensor};
use burn_distill::Targets;
use burn_distill::feature::{
    AttentionTransferLossConfig, FeatureProjectionConfig, HiddenStateLossConfig, HintLossConfig,
    RkdLossConfig,
};
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use std::time::Duration;

fn normal<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn bench(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    println!(
        "threads available: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut group = c.benchmark_group("features_fwd_bwd/flex");
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));

    let student_maps = normal([64, 64, 16, 16], &device);
    let teacher_maps = normal([64, 128, 16, 16], &device);
    let hint = HintLossConfig::new(64, 128).init(&device);
    group.bench_function("hint/64x64x16x16_to_128", |b| {
        b.iter(|| {
            let s = student_maps.clone().require_grad();
            let grads = hint.forward(s.clone(), teacher_maps.clone()).backward();
            black_box(s.grad(&grads))
        })
    });
    for (name, distance) in [
        (
            "attention_code",
            burn_distill::feature::AttentionDistance::MeanSquared,
        ),
        (
            "attention_paper",
            burn_distill::feature::AttentionDistance::Norm,
        ),
    ] {
        let loss = AttentionTransferLossConfig::new()
            .with_distance(distance)
            .init();
        group.bench_function(format!("{name}/64x64x16x16_vs_128"), |b| {
            b.iter(|| {
                let s = student_maps.clone().require_grad();
                let grads = loss.forward(s.clone(), teacher_maps.clone()).backward();
                black_box(s.grad(&grads))
            })
        });
    }

    let student_embeddings = normal([128, 512], &device);
    let teacher_embeddings = normal([128, 2048], &device);
    let rkd = RkdLossConfig::new().init();
    group.bench_function("rkd/128x512_vs_2048", |b| {
        b.iter(|| {
            let s = student_embeddings.clone().require_grad();
            let grads = rkd
                .forward(s.clone(), teacher_embeddings.clone())
                .backward();
            black_box(s.grad(&grads))
        })
    });

    let student_hidden = normal([8, 256, 512], &device);
    let teacher_hidden = normal([8, 256, 768], &device);
    let projection = FeatureProjectionConfig::new(512, 768).init(&device);
    let cosine = HiddenStateLossConfig::new().init();
    group.bench_function("hidden_cosine/8x256x512_to_768", |b| {
        b.iter(|| {
            let s = student_hidden.clone().require_grad();
            let loss = cosine.forward(
                projection.forward(s.clone()),
                teacher_hidden.clone(),
                Targets::unlabelled(),
            );
            let grads = loss.backward();
            black_box(s.grad(&grads))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
