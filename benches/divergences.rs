//! Forward + backward (w.r.t. the student logits) of the other losses, f32 on
//! flex, at the KD bench's sizes: reverse KL, generalized JSD (β = 0.5), DKD,
//! and the top-k sparse teacher (k = 64). All are burn ops differentiated by
//! autodiff.
//!
//! ```text
//! cargo bench --bench divergences
//! ```

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_distill::divergence::{generalized_jsd, reverse_kl};
use burn_distill::dkd::DkdLossConfig;
use burn_distill::sparse::{SparseTeacher, sparse_forward_kl};
use burn_distill::temperature::log_softmax;
use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use std::time::Duration;

const SIZES: [(usize, usize); 3] = [(128, 10), (256, 1000), (64, 32000)];
const T: f64 = 4.0;

fn bench(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let dkd = DkdLossConfig::new().init();
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
        let log_p = log_softmax(teacher.clone(), T, 1);
        group.bench_with_input(BenchmarkId::new("reverse_kl", &size), &(), |b, _| {
            run(b, &|z| {
                reverse_kl(log_softmax(z, T, 1), log_p.clone()).mean()
            })
        });
        group.bench_with_input(BenchmarkId::new("jsd_beta_0.5", &size), &(), |b, _| {
            run(b, &|z| {
                generalized_jsd(log_softmax(z, T, 1), log_p.clone(), 0.5).mean()
            })
        });
        group.bench_with_input(BenchmarkId::new("dkd", &size), &(), |b, _| {
            run(b, &|z| dkd.forward(z, teacher.clone(), targets.clone()))
        });
        group.bench_with_input(BenchmarkId::new("sparse_top64", &size), &(), |b, _| {
            run(b, &|z| sparse_forward_kl(z, &sparse, T).mean())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
