//! The `LmDistiller`'s training step at the `lm_distill` example's full-plan
//! shapes, split into model time and loss time, f32 on flex:
//! 32 sequences × 32 tokens (992 scored positions), vocabulary 4,096, the
//! student the example's (2 layers × 64, 2 heads), the teacher its
//! (4 layers × 128, 4 heads), both built by the example's own `model.rs`.
//!
//! ```text
//! cargo bench --bench lm_step
//! ```
//!
//! - `model/student_fwd_bwd`: the student's logits and the backward through
//!   the student (the loss a plain mean of the logits): the model's share.
//! - `model/teacher_fwd`: the teacher's logits, no autodiff.
//! - `loss/{fkl,rkl,jsd}/992x4096`: `KdLoss` (T = 1, 0.5 soft + 0.5 hard, as
//!   the example's rows) forward + backward w.r.t. `[32, 31, 4096]` student
//!   logits against given teacher logits: the loss's share.
//!   `benches/compare_torch.py --lm` times the same loss in PyTorch.
//! - `step/{dense_fkl,fused_fkl_chunk64}`: the whole `TrainStep::step` (teacher,
//!   student, loss, backward), as burn's `Learner` calls it, whole batch.

#[path = "../examples/lm_distill/model.rs"]
#[allow(dead_code)]
mod model;

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn::train::TrainStep;
use burn_distill::lm::{CausalLm, TokenBatch};
use burn_distill::train::{FrozenTeacher, LmDistiller, LmTeacherSource};
use burn_distill::{Divergence, FusedLinearKdLossConfig, KdLossConfig, Targets, TeacherOutput};
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use model::GptConfig;
use std::time::Duration;

const BATCH: usize = 32;
const CONTEXT: usize = 32;
const VOCAB: usize = 4096;

fn kd(divergence: Divergence) -> KdLossConfig {
    KdLossConfig::new()
        .with_divergence(divergence)
        .with_temperature(1.0)
        .with_soft_weight(0.5)
        .with_hard_weight(0.5)
}

fn bench(c: &mut Criterion) {
    println!(
        "threads available: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let device = Device::flex().autodiff();
    device.seed(0);
    let student = GptConfig::new(VOCAB, CONTEXT, 64, 2, 2).init(&device);
    let teacher = GptConfig::new(VOCAB, CONTEXT, 128, 4, 4).init(&device);
    let tokens = Tensor::<2, Int>::random(
        [BATCH, CONTEXT],
        Distribution::Uniform(4.0, VOCAB as f64),
        &device,
    );
    let batch = TokenBatch::new(tokens.clone());
    let rows = BATCH * (CONTEXT - 1);

    let mut group = c.benchmark_group("lm_step/flex");
    group.warm_up_time(Duration::from_secs(2));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));

    group.bench_function("model/student_fwd_bwd", |b| {
        b.iter(|| {
            let grads = student.logits(tokens.clone(), None).mean().backward();
            black_box(grads)
        })
    });
    let frozen = FrozenTeacher::new(teacher.clone());
    group.bench_function("model/teacher_fwd", |b| {
        b.iter(|| black_box(frozen.teach(&batch, &device).is_ok()))
    });

    // The loss alone, on logits of the step's shape: the student's a leaf.
    let student_logits = Tensor::<3>::random(
        [BATCH, CONTEXT - 1, VOCAB],
        Distribution::Normal(0.0, 2.0),
        &device,
    );
    let teacher_logits = Tensor::<3>::random(
        [BATCH, CONTEXT - 1, VOCAB],
        Distribution::Normal(0.0, 2.0),
        &device.clone().without_autodiff(),
    );
    let labels = tokens.clone().slice([0..BATCH, 1..CONTEXT]);
    for (name, divergence) in [
        ("fkl", Divergence::ForwardKl),
        ("rkl", Divergence::ReverseKl),
        ("jsd", Divergence::Jsd { beta: 0.5 }),
    ] {
        let loss = kd(divergence).init();
        group.bench_function(format!("loss/{name}/{rows}x{VOCAB}"), |b| {
            b.iter(|| {
                let z = student_logits.clone().require_grad();
                let value = loss.forward(
                    z.clone(),
                    TeacherOutput::Logits(teacher_logits.clone()),
                    Targets::for_sequences(labels.clone()),
                );
                let grads = value.backward();
                black_box(z.grad(&grads))
            })
        });
    }

    let dense = LmDistiller::new(
        student.clone(),
        FrozenTeacher::new(teacher.clone()),
        kd(Divergence::ForwardKl).init(),
    );
    group.bench_function("step/dense_fkl", |b| {
        b.iter(|| black_box(dense.step(batch.clone()).grads))
    });
    let fused = LmDistiller::new(
        student.clone(),
        FrozenTeacher::new(teacher.clone()),
        FusedLinearKdLossConfig::new(kd(Divergence::ForwardKl))
            .with_chunk_size(Some(64))
            .init(),
    );
    group.bench_function("step/fused_fkl_chunk64", |b| {
        b.iter(|| black_box(fused.step(batch.clone()).grads))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
