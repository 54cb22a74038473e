//! The KD loss on a GPU (burn's Cube backends): forward + backward with
//! respect to the student logits, the fused Cube kernel against the same
//! loss by burn ops and autodiff, side by side in one run; and, before the
//! timings, the device memory each holds between its forward and backward.
//!
//! ```text
//! cargo bench --features wgpu,cube-kernel --bench gpu          # wgpu (Vulkan, Metal, DX12)
//! cargo bench --features cuda,cube-kernel --bench gpu          # with BURN_DISTILL_BENCH_DEVICE=cuda
//! ```
//!
//! 512×32000 runs in f16 too where the device has it, with a top-k
//! teacher (`SparseTeacher::top_k` of the teacher's logits, k = 8 and 64,
//! selected before the timing) as `top8`/`top64` cases, and as DKD
//! (`DkdLoss`, α = 1, β = 8, the same T) as the `dkd` case. `BURN_DISTILL_BENCH_LLM=1`
//! adds the LLM-scale case 8192×128256 (4.2 GB per f32 logit tensor) in f32
//! and, where the device has it, bf16. All cases:
//! T = 4, 0.9 soft / 0.1 hard, T², forward KL, `KdLoss::forward` (but `dkd`):
//! - `fused`: the Cube kernel with its closed-form backward;
//! - `autodiff`: `fused_kernel = false` (burn ops, autodiff through them) —
//!   what every GPU user had before.
//!
//! Every timed closure ends with `device.sync()`, so the GPU's queued work is
//! inside the timing. The memory lines read burn's memory-pool usage (bytes
//! in live allocations) after the inputs exist, after the forward pass (what
//! the graph holds for the backward), and after the backward pass with the
//! gradient alive; they are not peaks inside a kernel.

use burn::tensor::{DType, Device, Distribution, Int, Tensor};
use burn_distill::diagnostics::cube_kernel_launches;
use burn_distill::{DkdLoss, DkdLossConfig, KdLoss, KdLossConfig, SparseTeacher, TeacherOutput};
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use std::time::Duration;

const T: f64 = 4.0;

/// The device under test: wgpu's default device, or CUDA with
/// `BURN_DISTILL_BENCH_DEVICE=cuda` (and the `cuda` feature).
fn device() -> Device {
    let wanted = std::env::var("BURN_DISTILL_BENCH_DEVICE").unwrap_or_default();
    match wanted.as_str() {
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(0),
        #[cfg(feature = "wgpu")]
        "" | "wgpu" => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        other => panic!(
            "BURN_DISTILL_BENCH_DEVICE={other:?}: build with --features wgpu (default device) or cuda"
        ),
    }
}

/// What a case computes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `KdLoss` with the dense teacher.
    Dense,
    /// `KdLoss` with the teacher's top `k` classes.
    TopK(usize),
    /// `DkdLoss` with the dense teacher.
    Dkd,
}

/// `(batch, classes, dtype, kind)` cases.
fn cases(device: &Device) -> Vec<(usize, usize, DType, Kind)> {
    let mut cases = vec![
        (512, 10, DType::F32, Kind::Dense),
        (512, 32000, DType::F32, Kind::Dense),
    ];
    if device.supports_dtype(DType::F16) {
        cases.push((512, 32000, DType::F16, Kind::Dense));
    }
    cases.push((512, 32000, DType::F32, Kind::TopK(8)));
    cases.push((512, 32000, DType::F32, Kind::TopK(64)));
    cases.push((512, 32000, DType::F32, Kind::Dkd));
    if std::env::var_os("BURN_DISTILL_BENCH_LLM").is_some() {
        cases.push((8192, 128256, DType::F32, Kind::Dense));
        if device.supports_dtype(DType::BF16) {
            cases.push((8192, 128256, DType::BF16, Kind::Dense));
        } else {
            println!("bf16: not supported by this device; skipped");
        }
    }
    cases
}

/// A case's name: `512x32000/F32`, `512x32000/F32/top8`, `512x32000/F32/dkd`.
fn case_name(batch: usize, classes: usize, dtype: DType, kind: Kind) -> String {
    let teacher = match kind {
        Kind::Dense => String::new(),
        Kind::TopK(k) => format!("/top{k}"),
        Kind::Dkd => "/dkd".to_string(),
    };
    format!("{batch}x{classes}/{dtype:?}{teacher}")
}

/// The loss of a case.
enum Loss {
    Kd(KdLoss),
    Dkd(DkdLoss),
}

impl Loss {
    fn forward(&self, z: Tensor<2>, v: TeacherOutput, y: Tensor<1, Int>) -> Tensor<1> {
        match self {
            Self::Kd(kd) => kd.forward(z, v, y),
            Self::Dkd(dkd) => dkd.forward(z, v, y),
        }
    }
}

/// The fused and the burn-ops form of a case's loss.
fn losses(kind: Kind) -> [(&'static str, Loss); 2] {
    if kind == Kind::Dkd {
        let config = DkdLossConfig::new().with_temperature(T);
        return [
            ("fused", Loss::Dkd(config.clone().init())),
            (
                "autodiff",
                Loss::Dkd(config.with_fused_kernel(false).init()),
            ),
        ];
    }
    let config = KdLossConfig::new().with_temperature(T);
    [
        ("fused", Loss::Kd(config.clone().init())),
        ("autodiff", Loss::Kd(config.with_fused_kernel(false).init())),
    ]
}

/// Inputs of one case on `device` (with autodiff): student, teacher, labels.
fn inputs(
    device: &Device,
    batch: usize,
    classes: usize,
    dtype: DType,
    kind: Kind,
) -> (Tensor<2>, TeacherOutput, Tensor<1, Int>) {
    let normal =
        |d| Tensor::<2>::random([batch, classes], Distribution::Normal(0.0, 3.0), d).cast(dtype);
    let labels =
        Tensor::<1, Int>::random([batch], Distribution::Uniform(0.0, classes as f64), device);
    let teacher = match kind {
        Kind::Dense | Kind::Dkd => TeacherOutput::Logits(normal(device)),
        Kind::TopK(k) => TeacherOutput::TopK(SparseTeacher::top_k(normal(device), k, T).unwrap()),
    };
    (normal(device), teacher, labels)
}

/// One forward + backward; returns the gradient.
fn step(kd: &Loss, z: &Tensor<2>, v: &TeacherOutput, y: &Tensor<1, Int>) -> Tensor<2> {
    let z = z.clone().require_grad();
    let loss = kd.forward(z.clone(), v.clone(), y.clone());
    let grads = loss.backward();
    z.grad(&grads).expect("student gradient")
}

/// Bytes in live allocations on the device, after its queued work.
fn in_use(device: &Device) -> Option<u64> {
    device.sync().expect("device sync");
    device.memory_pool_usage().map(|usage| usage.bytes_in_use)
}

/// Prints the memory the graph holds between forward and backward, in units
/// of one `[batch, classes]` tensor of the inputs' dtype.
fn report_memory(device: &Device) {
    for (batch, classes, dtype, kind) in cases(device) {
        let unit = (batch * classes * dtype.size()) as f64;
        let size = case_name(batch, classes, dtype, kind);
        for (name, kd) in losses(kind) {
            let (z, v, y) = inputs(device, batch, classes, dtype, kind);
            let Some(base) = in_use(device) else {
                println!("memory: this device reports no memory-pool usage");
                return;
            };
            let zg = z.clone().require_grad();
            let loss = kd.forward(zg.clone(), v.clone(), y.clone());
            let held = in_use(device).expect("usage") as f64 - base as f64;
            let grads = loss.backward();
            let grad = zg.grad(&grads).expect("gradient");
            let after = in_use(device).expect("usage") as f64 - base as f64;
            println!(
                "memory {name} {size}: held for backward {:.1} MB = {:.2} x [B,C]; \
                 after backward (gradient alive) {:.1} MB = {:.2} x [B,C]",
                held / 1e6,
                held / unit,
                after / 1e6,
                after / unit,
            );
            drop((grad, grads));
            device.memory_cleanup();
        }
    }
}

fn bench_gpu(c: &mut Criterion) {
    let device = device().autodiff();
    println!("device: {device:?}");
    report_memory(&device);
    let mut group = c.benchmark_group("kd_loss_gpu");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    for (batch, classes, dtype, kind) in cases(&device) {
        group.throughput(Throughput::Elements((batch * classes) as u64));
        let (z, v, y) = inputs(&device, batch, classes, dtype, kind);
        let size = case_name(batch, classes, dtype, kind);
        for (name, kd) in losses(kind) {
            let before = cube_kernel_launches();
            black_box(step(&kd, &z, &v, &y));
            let fused = cube_kernel_launches() > before;
            assert_eq!(
                fused,
                name == "fused",
                "{name} {size}: the kernel ran: {fused}"
            );
            group.bench_with_input(BenchmarkId::new(name, &size), &(), |b, _| {
                b.iter(|| {
                    let grad = black_box(step(&kd, &z, &v, &y));
                    device.sync().expect("device sync");
                    grad
                })
            });
        }
        device.memory_cleanup();
    }
    group.finish();
}

criterion_group!(benches, bench_gpu);
criterion_main!(benches);
