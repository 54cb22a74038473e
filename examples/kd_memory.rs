//! One forward + backward of the KD loss at a given size, for measuring peak
//! memory from outside (criterion cannot). Used by `BENCHMARKS.md`:
//!
//! ```text
//! cargo build --release --example kd_memory
//! /usr/bin/time -v target/release/examples/kd_memory analytic 512 32000
//! ```
//!
//! Arguments: `analytic | autodiff | inputs`, batch, classes, and optionally
//! the divergence (`forward_kl` by default; `reverse_kl`, `jsd_0.5`,
//! `jsd_normalized_0.1`, `skew_forward_kl_0.1`, `skew_reverse_kl_0.1`, `tvd`).
//! `inputs` only creates the logits, to measure the baseline the others add to.

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_distill::{Divergence, KdLossConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: kd_memory analytic|autodiff|inputs BATCH CLASSES [DIVERGENCE]";
    let mode = args.get(1).expect(usage).as_str();
    let batch: usize = args.get(2).expect(usage).parse().expect(usage);
    let classes: usize = args.get(3).expect(usage).parse().expect(usage);

    let device = Device::flex().autodiff();
    let student = Tensor::<2>::random([batch, classes], Distribution::Normal(0.0, 3.0), &device);
    let teacher = Tensor::<2>::random([batch, classes], Distribution::Normal(0.0, 3.0), &device);
    let targets =
        Tensor::<1, Int>::random([batch], Distribution::Uniform(0.0, classes as f64), &device);
    let divergence = match args.get(4).map_or("forward_kl", String::as_str) {
        "forward_kl" => Divergence::ForwardKl,
        "reverse_kl" => Divergence::ReverseKl,
        "jsd_0.5" => Divergence::Jsd { beta: 0.5 },
        "jsd_normalized_0.1" => Divergence::JsdNormalized { beta: 0.1 },
        "skew_forward_kl_0.1" => Divergence::SkewForwardKl { alpha: 0.1 },
        "skew_reverse_kl_0.1" => Divergence::SkewReverseKl { alpha: 0.1 },
        "tvd" => Divergence::Tvd,
        other => panic!("unknown divergence {other}; {usage}"),
    };
    let config = KdLossConfig::new()
        .with_temperature(4.0)
        .with_divergence(divergence);
    let kd = match mode {
        "analytic" | "inputs" => config.init(),
        "autodiff" => config.with_fused_kernel(false).init(),
        _ => panic!("{usage}"),
    };
    if mode == "inputs" {
        let sum = student.sum().into_scalar::<f32>() + teacher.sum().into_scalar::<f32>();
        println!("inputs only: {batch}x{classes}, checksum {sum:.3}");
        return;
    }
    let z = student.require_grad();
    let loss = kd.forward(z.clone(), teacher, targets);
    let value = loss.clone().into_scalar::<f32>();
    let grads = loss.backward();
    let grad_sum = z
        .grad(&grads)
        .expect("gradient")
        .abs()
        .sum()
        .into_scalar::<f32>();
    println!("{mode} {divergence:?}: {batch}x{classes}, loss {value:.4}, sum|grad| {grad_sum:.4}");
}
