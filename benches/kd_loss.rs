//! Forward + backward (w.r.t. the student logits) of the KD loss, f32.
//!
//! ```text
//! cargo bench --features ndarray --bench kd_loss
//! ```
//!
//! (Without `--features ndarray` the ndarray `analytic` case is the autodiff path.)
//!
//! Three implementations side by side, in one run, on each CPU device, all
//! computing the same loss (T = 4, 0.9 soft / 0.1 hard, T²):
//! - `analytic`: `KdLoss::forward` as shipped (the name is kept from 0.1 so
//!   that BENCHMARKS.md's runs compare) — on flex and ndarray the fused
//!   CPU kernel with its closed-form backward; elsewhere the same as `autodiff`;
//! - `autodiff`: `KdLoss` with `fused_kernel = false` — burn ops, autodiff
//!   walks back through them (the crate's reference path);
//! - `burn_nn_composed`: the same loss written with burn-nn's own pieces, as a user
//!   would without this crate: `log_softmax(z/T)`, `log_softmax(v/T)`,
//!   `KLDivLoss { log_target: true }` (batchmean) × T² plus `CrossEntropyLoss`.

use burn::nn::loss::{CrossEntropyLossConfig, KLDivLossConfig, Reduction};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_distill::KdLossConfig;
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use std::time::Duration;

const SIZES: [(usize, usize); 4] = [(128, 10), (256, 1000), (64, 32000), (512, 32000)];
const T: f64 = 4.0;

/// flex and ndarray; with `--features wgpu` (or `vulkan`) and
/// `BURN_DISTILL_BENCH_WGPU=1`, the default wgpu device too (see scripts/gpu-check.sh).
#[allow(deprecated)] // Device::ndarray is deprecated in burn 0.22 but still supported.
fn devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut list = vec![("flex", Device::flex()), ("ndarray", Device::ndarray())];
    #[cfg(feature = "wgpu")]
    if std::env::var_os("BURN_DISTILL_BENCH_WGPU").is_some() {
        list.push((
            "wgpu",
            Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        ));
    }
    list
}

fn bench_kd(c: &mut Criterion) {
    // Beside torch's thread count (benches/compare_torch.py prints it): the
    // fused kernel uses every available core for inputs of 65,536 elements and up.
    println!(
        "threads available: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let analytic = KdLossConfig::new().with_temperature(T).init();
    let autodiff = KdLossConfig::new()
        .with_temperature(T)
        .with_fused_kernel(false)
        .init();
    let kl = KLDivLossConfig::new().with_log_target(true).init();
    for (device_name, device) in devices() {
        let device = device.autodiff();
        let ce = CrossEntropyLossConfig::new().init(&device);
        let mut group = c.benchmark_group(format!("kd_loss_fwd_bwd/{device_name}"));
        group.warm_up_time(Duration::from_secs(1));
        for (batch, classes) in SIZES {
            let elements = batch * classes;
            group.throughput(Throughput::Elements(elements as u64));
            // Few, long samples for the big cases so a full run stays in minutes.
            let (samples, seconds) = if elements >= 1_000_000 {
                (10, 8)
            } else {
                (30, 3)
            };
            group.sample_size(samples);
            group.measurement_time(Duration::from_secs(seconds));

            let student =
                Tensor::<2>::random([batch, classes], Distribution::Normal(0.0, 3.0), &device);
            let teacher =
                Tensor::<2>::random([batch, classes], Distribution::Normal(0.0, 3.0), &device);
            let targets = Tensor::<1, Int>::random(
                [batch],
                Distribution::Uniform(0.0, classes as f64),
                &device,
            );
            let size = format!("{batch}x{classes}");

            for (name, kd) in [("analytic", &analytic), ("autodiff", &autodiff)] {
                group.bench_with_input(BenchmarkId::new(name, &size), &(), |b, _| {
                    b.iter(|| {
                        let z = student.clone().require_grad();
                        let loss = kd.forward(z.clone(), teacher.clone(), targets.clone());
                        let grads = loss.backward();
                        let grad = black_box(z.grad(&grads));
                        // GPU backends queue work: wait for it (a no-op on the CPU ones).
                        device.sync().expect("device sync");
                        grad
                    })
                });
            }
            group.bench_with_input(BenchmarkId::new("burn_nn_composed", &size), &(), |b, _| {
                b.iter(|| {
                    let z = student.clone().require_grad();
                    let log_q = log_softmax(z.clone().div_scalar(T), 1);
                    let log_p = log_softmax(teacher.clone().div_scalar(T).detach(), 1);
                    let soft = kl
                        .forward(log_q, log_p, Reduction::BatchMean)
                        .mul_scalar(T * T);
                    let hard = ce.forward(z.clone(), targets.clone());
                    let loss = soft.mul_scalar(0.9) + hard.mul_scalar(0.1);
                    let grads = loss.backward();
                    let grad = black_box(z.grad(&grads));
                    device.sync().expect("device sync");
                    grad
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_kd);
criterion_main!(benches);
