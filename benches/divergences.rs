//! Forward + backward (w.r.t. the student logits) of `KdLoss` with every
//! divergence, DKD and a top-k teacher, f32 on flex, at LLM-vocabulary sizes.
//! Every loss is called as a user calls it — teacher logits in, the teacher's
//! log-softmax computed inside the timed call, with the hard term (weights 0.9
//! and 0.1, T = 4). Each divergence runs through the fused kernel (the
//! default); `…/autodiff` rows are the same loss with `fused_kernel = false`
//! (burn ops differentiated by autodiff), at 64×32000 only, to keep the run
//! short. `uld` (`Divergence::Uld`) is the CPU engine's own row loop (a radix
//! sort per row), `uld/autodiff` burn ops' sort, at both sizes.
//! `benches/compare_torch.py --divergences` times the PyTorch forms.
//!
//! `memory_floor/*` is the machine's floor for the fused path's traffic: a
//! two-thread loop that reads two `[batch, classes]` f32 arrays and writes a
//! third (`c = a + b`), into a new allocation each time (`fresh`: its pages are
//! first touched, as the kernel's gradient's are) or into one reused buffer
//! (`reused`: bandwidth alone).
//!
//! ```text
//! cargo bench --bench divergences
//! ```

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_distill::{Divergence, DkdLossConfig, KdLossConfig, SparseTeacher};
use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use std::time::Duration;

const SIZES: [(usize, usize); 2] = [(64, 32000), (512, 32000)];
const T: f64 = 4.0;

/// The divergences timed, by the names `compare_torch.py` uses.
const DIVERGENCES: [(&str, Divergence); 7] = [
    ("forward_kl", Divergence::ForwardKl),
    ("reverse_kl", Divergence::ReverseKl),
    ("jsd_0.5", Divergence::Jsd { beta: 0.5 }),
    (
        "jsd_normalized_0.1",
        Divergence::JsdNormalized { beta: 0.1 },
    ),
    (
        "skew_forward_kl_0.1",
        Divergence::SkewForwardKl { alpha: 0.1 },
    ),
    (
        "skew_reverse_kl_0.1",
        Divergence::SkewReverseKl { alpha: 0.1 },
    ),
    ("tvd", Divergence::Tvd),
];

fn bench(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    println!(
        "threads available: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dkd = DkdLossConfig::new().init();
    let kd = |divergence: Divergence, fused: bool| {
        KdLossConfig::new()
            .with_temperature(T)
            .with_divergence(divergence)
            .with_fused_kernel(fused)
            .init()
    };
    let mut group = c.benchmark_group("divergences_fwd_bwd/flex");
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    for (batch, classes) in SIZES {
        let student =
            Tensor::<2>::random([batch, classes], Distribution::Normal(0.0, 3.0), &device);
        let teacher =
            Tensor::<2>::random([batch, classes], Distribution::Normal(0.0, 3.0), &device);
        let targets =
            Tensor::<1, Int>::random([batch], Distribution::Uniform(0.0, classes as f64), &device);
        let sparse = SparseTeacher::top_k(teacher.clone(), 64.min(classes), T).unwrap();
        let size = format!("{batch}x{classes}");
        let run = |b: &mut criterion::Bencher, loss: &dyn Fn(Tensor<2>) -> Tensor<1>| {
            b.iter(|| {
                let z = student.clone().require_grad();
                let grads = loss(z.clone()).backward();
                black_box(z.grad(&grads))
            })
        };
        for (name, divergence) in DIVERGENCES {
            let fused = kd(divergence, true);
            group.bench_with_input(BenchmarkId::new(name, &size), &(), |b, _| {
                run(b, &|z| fused.forward(z, teacher.clone(), targets.clone()))
            });
            if batch == 64 {
                let autodiff = kd(divergence, false);
                let id = BenchmarkId::new(format!("{name}/autodiff"), &size);
                group.bench_with_input(id, &(), |b, _| {
                    run(b, &|z| {
                        autodiff.forward(z, teacher.clone(), targets.clone())
                    })
                });
            }
        }
        // ULD sorts both rows: the CPU engine's radix sort, and burn ops'
        // sort with autodiff (at both sizes: the baseline it replaces).
        for (id, fused) in [("uld", true), ("uld/autodiff", false)] {
            let uld = kd(Divergence::Uld, fused);
            group.bench_with_input(BenchmarkId::new(id, &size), &(), |b, _| {
                run(b, &|z| uld.forward(z, teacher.clone(), targets.clone()))
            });
        }
        group.bench_with_input(BenchmarkId::new("dkd", &size), &(), |b, _| {
            run(b, &|z| dkd.forward(z, teacher.clone(), targets.clone()))
        });
        let forward_kl = kd(Divergence::ForwardKl, true);
        group.bench_with_input(BenchmarkId::new("sparse_top64", &size), &(), |b, _| {
            run(b, &|z| {
                forward_kl.forward(z, sparse.clone(), targets.clone())
            })
        });
        if batch == 64 {
            let dkd = DkdLossConfig::new().with_fused_kernel(false).init();
            let id = BenchmarkId::new("dkd/autodiff", &size);
            group.bench_with_input(id, &(), |b, _| {
                run(b, &|z| dkd.forward(z, teacher.clone(), targets.clone()))
            });
            let forward_kl = kd(Divergence::ForwardKl, false);
            let id = BenchmarkId::new("sparse_top64/autodiff", &size);
            group.bench_with_input(id, &(), |b, _| {
                run(b, &|z| {
                    forward_kl.forward(z, sparse.clone(), targets.clone())
                })
            });
        }
        let a = vec![1.0f32; batch * classes];
        let b = vec![2.0f32; batch * classes];
        let id = BenchmarkId::new("memory_floor/fresh", &size);
        group.bench_with_input(id, &(), |bench, _| {
            bench.iter(|| {
                let mut c = Vec::with_capacity(a.len());
                // SAFETY: every element is written by add_into before it is read.
                #[allow(clippy::uninit_vec)]
                unsafe {
                    c.set_len(a.len())
                };
                add_into(&a, &b, &mut c);
                black_box(c)
            })
        });
        let mut c = vec![0.0f32; batch * classes];
        let id = BenchmarkId::new("memory_floor/reused", &size);
        group.bench_with_input(id, &(), |bench, _| {
            bench.iter(|| {
                add_into(&a, &b, &mut c);
                black_box(&c);
            })
        });
    }
    group.finish();
}

/// `c = a + b` on two threads, halves of the arrays each.
fn add_into(a: &[f32], b: &[f32], c: &mut [f32]) {
    let half = a.len().div_ceil(2);
    std::thread::scope(|scope| {
        for ((a, b), c) in a.chunks(half).zip(b.chunks(half)).zip(c.chunks_mut(half)) {
            scope.spawn(move || {
                for ((x, y), z) in a.iter().zip(b).zip(c.iter_mut()) {
                    *z = x + y;
                }
            });
        }
    });
}

/// GOLD (`burn_distill::gold`) forward + backward at an LM's shapes: 4
/// sequences, the student's 128 tokens of 3 bytes against the teacher's 96
/// of 4 bytes over one 384-byte answer each (32 spans of 4 and 3 tokens),
/// vocabularies of 32,000 and 32,768, T = 1. `benches/compare_torch_gold.py`
/// times TRL's `ULDLoss` (`use_extended_uld`) on the same shapes.
fn bench_gold(c: &mut Criterion) {
    use burn_distill::gold::{GoldLossConfig, SpanAlignment, Tokenization};
    let device = Device::flex().autodiff();
    let (batch, s_len, t_len, vs, vt) = (4, 128, 96, 32000, 32768);
    let offsets = |n: usize, width: usize| -> Vec<[usize; 2]> {
        (0..n).map(|k| [k * width, (k + 1) * width]).collect()
    };
    let (s_offsets, t_offsets) = (offsets(s_len, 3), offsets(t_len, 4));
    let s_tokens: Vec<i64> = (0..s_len as i64).map(|k| (k * 7919) % vs as i64).collect();
    let t_tokens: Vec<i64> = (0..t_len as i64)
        .map(|k| (k * 104_729) % vt as i64)
        .collect();
    let side = |tokens: &'static [i64], offsets: &'static [[usize; 2]]| Tokenization {
        first_row: 0,
        tokens,
        byte_offsets: offsets,
    };
    let (s_tokens, t_tokens): (&'static [i64], &'static [i64]) = (s_tokens.leak(), t_tokens.leak());
    let (s_offsets, t_offsets): (&'static [[usize; 2]], &'static [[usize; 2]]) =
        (s_offsets.leak(), t_offsets.leak());
    let alignment =
        SpanAlignment::from_byte_offsets(side(s_tokens, s_offsets), side(t_tokens, t_offsets))
            .unwrap();
    assert_eq!(alignment.spans().len(), 32);
    let alignments = vec![alignment; batch];
    let student = Tensor::<3>::random([batch, s_len, vs], Distribution::Normal(0.0, 3.0), &device);
    let teacher = Tensor::<3>::random([batch, t_len, vt], Distribution::Normal(0.0, 3.0), &device);
    let loss = GoldLossConfig::new().init();
    let mut group = c.benchmark_group("gold_fwd_bwd/flex");
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    let id = BenchmarkId::new("gold", format!("{batch}x{s_len}x{vs}_vs_{t_len}x{vt}"));
    group.bench_with_input(id, &(), |b, _| {
        b.iter(|| {
            let z = student.clone().require_grad();
            let grads = loss
                .forward(z.clone(), teacher.clone(), &alignments)
                .backward();
            black_box(z.grad(&grads))
        })
    });
    group.finish();
}

criterion_group!(benches, bench, bench_gold);
criterion_main!(benches);
