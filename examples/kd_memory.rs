//! One forward + backward of a distillation loss at a given size, for
//! measuring peak memory from outside (criterion cannot). Used by
//! `BENCHMARKS.md`:
//!
//! ```text
//! cargo build --release --example kd_memory
//! /usr/bin/time -v target/release/examples/kd_memory analytic 512 32000 jsd_0.5
//! ```
//!
//! Arguments: `analytic | autodiff | inputs`, batch, classes, and optionally
//! the loss: `forward_kl` (the default), `reverse_kl`, `jsd_0.5`,
//! `jsd_normalized_0.1`, `skew_forward_kl_0.1`, `skew_reverse_kl_0.1`, `tvd`
//! (`KdLoss` with that divergence), `dkd` (`DkdLoss`), or `sparse_top64`
//! (forward KL against a top-64 teacher, made directly from indices and
//! log-probabilities so that no dense teacher is ever allocated). `inputs`
//! only creates the logits, to measure the baseline the others add to.

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use burn_distill::{
    Divergence, DkdLossConfig, KdLossConfig, SparseTeacher, Targets, TeacherOutput,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: kd_memory analytic|autodiff|inputs BATCH CLASSES [LOSS]";
    let mode = args.get(1).expect(usage).as_str();
    let batch: usize = args.get(2).expect(usage).parse().expect(usage);
    let classes: usize = args.get(3).expect(usage).parse().expect(usage);
    let loss_name = args.get(4).map_or("forward_kl", String::as_str);
    let fused = match mode {
        "analytic" | "inputs" => true,
        "autodiff" => false,
        _ => panic!("{usage}"),
    };

    let device = Device::flex().autodiff();
    let student = Tensor::<2>::random([batch, classes], Distribution::Normal(0.0, 3.0), &device);
    let targets =
        Tensor::<1, Int>::random([batch], Distribution::Uniform(0.0, classes as f64), &device);
    let teacher = if loss_name == "sparse_top64" {
        // 64 distinct classes per row, each with probability 0.9/64.
        let k = 64;
        let indices: Vec<i64> = (0..batch * k)
            .map(|i| ((i / k * 7 + i % k * 13) % classes) as i64)
            .collect();
        let indices = Tensor::<2, Int>::from_data(TensorData::new(indices, [batch, k]), &device);
        let log_probs = Tensor::<2>::full([batch, k], (0.9f32 / k as f32).ln(), &device);
        TeacherOutput::TopK(SparseTeacher::new(indices, log_probs).expect("same shapes"))
    } else {
        TeacherOutput::Logits(Tensor::<2>::random(
            [batch, classes],
            Distribution::Normal(0.0, 3.0),
            &device,
        ))
    };
    if mode == "inputs" {
        let teacher_sum = match &teacher {
            TeacherOutput::TopK(sparse) => sparse.log_probs().clone().sum(),
            TeacherOutput::Logits(logits) => logits.clone().sum(),
            _ => unreachable!("made above"),
        };
        let sum = student.sum().into_scalar::<f32>() + teacher_sum.into_scalar::<f32>();
        println!("inputs only: {batch}x{classes}, checksum {sum:.3}");
        return;
    }
    let divergence = match loss_name {
        "forward_kl" | "sparse_top64" | "dkd" => Divergence::ForwardKl,
        "reverse_kl" => Divergence::ReverseKl,
        "jsd_0.5" => Divergence::Jsd { beta: 0.5 },
        "jsd_normalized_0.1" => Divergence::JsdNormalized { beta: 0.1 },
        "skew_forward_kl_0.1" => Divergence::SkewForwardKl { alpha: 0.1 },
        "skew_reverse_kl_0.1" => Divergence::SkewReverseKl { alpha: 0.1 },
        "tvd" => Divergence::Tvd,
        other => panic!("unknown loss {other}; {usage}"),
    };
    let z = student.require_grad();
    let targets = Targets::new(targets);
    let loss = if loss_name == "dkd" {
        let dkd = DkdLossConfig::new().with_fused_kernel(fused).init();
        dkd.forward(z.clone(), teacher, targets)
    } else {
        let kd = KdLossConfig::new()
            .with_temperature(4.0)
            .with_divergence(divergence)
            .with_fused_kernel(fused)
            .init();
        kd.forward(z.clone(), teacher, targets)
    };
    let value = loss.clone().into_scalar::<f32>();
    let grads = loss.backward();
    let grad = z.grad(&grads).expect("gradient");
    // Reductions only: `grad.abs()` would allocate another [batch, classes]
    // buffer here, which the measurement would count against the loss.
    let largest = grad.clone().max().into_scalar::<f32>();
    let smallest = grad.min().into_scalar::<f32>();
    println!(
        "{mode} {loss_name}: {batch}x{classes}, loss {value:.4}, gradient in [{smallest:.3e}, {largest:.3e}]"
    );
}
