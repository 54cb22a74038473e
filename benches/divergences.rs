//! Forward + backward (w.r.t. the student logits) of `KdLoss` with the other
//! divergences, DKD and a top-k teacher, f32 on flex, at the KD bench's sizes.
//! Every loss is called as a user calls it — teacher logits in, the teacher's
//! log-softmax computed inside the timed call — and all of these are burn ops
//! differentiated by autodiff (only forward KL has the fused kernel).
//!
//! ```text
//! cargo bench --bench divergences
//! ```

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_distill::{Divergence, DkdLossConfig, KdLossConfig, SparseTeacher};
use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use std::time::Duration;

const SIZES: [(usize, usize); 3] = [(128, 10), (256, 1000), (64, 32000)];
const T: f64 = 4.0;

fn bench(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    println!(
        "threads available: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dkd = DkdLossConfig::new().init();
    let losses = [
        ("reverse_kl", Divergence::ReverseKl),
        ("jsd_beta_0.5", Divergence::Jsd { beta: 0.5 }),
        (
            "skew_forward_kl_0.1",
            Divergence::SkewForwardKl { alpha: 0.1 },
        ),
        ("tvd", Divergence::Tvd),
    ]
    .map(|(name, divergence)| {
        let kd = KdLossConfig::new()
            .with_temperature(T)
            .with_divergence(divergence)
            .init();
        (name, kd)
    });
    let mut group = c.benchmark_group("divergences_fwd_bwd/flex");
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for (batch, classes) in SIZES {
        let student =
            Tensor::<2>::random([batch, classes], Distribution::Normal(0.0, 3.0), &device);
        let teacher =
            Tensor::<2>::random([batch, classes], Distribution::Normal(0.0, 3.0), &device);
        let targets =
            Tensor::<1, Int>::random([batch], Distribution::Uniform(0.0, classes as f64), &device);
        let sparse = SparseTeacher::top_k(teacher.clone(), 64.min(classes), T);
        let size = format!("{batch}x{classes}");
        let run = |b: &mut criterion::Bencher, loss: &dyn Fn(Tensor<2>) -> Tensor<1>| {
            b.iter(|| {
                let z = student.clone().require_grad();
                let grads = loss(z.clone()).backward();
                black_box(z.grad(&grads))
            })
        };
        for (name, kd) in &losses {
            group.bench_with_input(BenchmarkId::new(*name, &size), &(), |b, _| {
                run(b, &|z| kd.forward(z, teacher.clone(), targets.clone()))
            });
        }
        group.bench_with_input(BenchmarkId::new("dkd", &size), &(), |b, _| {
            run(b, &|z| dkd.forward(z, teacher.clone(), targets.clone()))
        });
        let forward_kl = KdLossConfig::new().with_temperature(T).init();
        group.bench_with_input(BenchmarkId::new("sparse_top64", &size), &(), |b, _| {
            run(b, &|z| {
                forward_kl.forward(z, sparse.clone(), targets.clone())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
