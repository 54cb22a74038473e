//! One forward + backward of distillation from hidden states and output layers,
//! for measuring peak memory from outside (`/usr/bin/time -f %M`), as
//! `BENCHMARKS.md` does:
//!
//! ```text
//! cargo build --release --example linear_memory
//! /usr/bin/time -f %M target/release/examples/linear_memory fused 2048 512 32000
//! ```
//!
//! Arguments: the path — `fused` (`FusedLinearKdLoss`, chunks of `CHUNK` rows, by default
//! its own choice: `AUTO_CHUNK_ELEMENTS / VOCAB`),
//! `materialised` (`Linear` forward to the full logits, then `KdLoss` with its
//! fused kernel), `autodiff` (the same with `fused_kernel = false`) or `inputs`
//! (only the hidden states and layers: the baseline the others add to) — then
//! tokens, hidden size (both models) and vocabulary. Forward KL, T = 4, labels
//! at random; the teacher is its hidden states and output layer.

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_distill::{FusedLinearKdLossConfig, KdLossConfig, LinearTeacher};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: linear_memory fused|materialised|autodiff|inputs TOKENS D VOCAB [CHUNK]";
    let mode = args.get(1).expect(usage).as_str();
    let arg = |i: usize| -> usize { args.get(i).expect(usage).parse().expect(usage) };
    let (tokens, d, vocab) = (arg(2), arg(3), arg(4));
    let chunk = args.get(5).map(|c| c.parse::<usize>().expect(usage));

    let device = Device::flex().autodiff();
    let normal = |shape: [usize; 2], scale: f64| {
        Tensor::<2>::random(shape, Distribution::Normal(0.0, scale), &device)
    };
    let scale = 1.0 / (d as f64).sqrt();
    let hidden = normal([tokens, d], 1.0).require_grad();
    let weight = normal([d, vocab], 3.0 * scale).require_grad();
    let teacher_hidden = normal([tokens, d], 1.0);
    let teacher_weight = normal([d, vocab], 3.0 * scale);
    let labels =
        Tensor::<1, Int>::random([tokens], Distribution::Uniform(0.0, vocab as f64), &device);
    let kd = KdLossConfig::new().with_temperature(4.0);
    let loss = match mode {
        "inputs" => {
            let sum = hidden.sum() + weight.sum() + teacher_hidden.sum() + teacher_weight.sum();
            println!("inputs only: checksum {:.3}", sum.into_scalar::<f32>());
            return;
        }
        "fused" => {
            let teacher = LinearTeacher::Hidden {
                hidden: teacher_hidden,
                weight: teacher_weight,
                bias: None,
            };
            let fused = FusedLinearKdLossConfig::new(kd)
                .with_chunk_size(chunk)
                .init();
            println!("chunks of {} rows", fused.rows_per_chunk(vocab));
            fused.forward(hidden.clone(), weight.clone(), None, teacher, labels)
        }
        "materialised" | "autodiff" => {
            let teacher_logits = teacher_hidden.matmul(teacher_weight);
            let logits = hidden.clone().matmul(weight.clone());
            let kd = kd.with_fused_kernel(mode == "materialised").init();
            kd.forward(logits, teacher_logits, labels)
        }
        _ => panic!("{usage}"),
    };
    let value = loss.clone().into_scalar::<f32>();
    let grads = loss.backward();
    // Reductions only: no other [tokens, vocab]-sized buffer is made here.
    let gh = hidden
        .grad(&grads)
        .expect("gradient")
        .max()
        .into_scalar::<f32>();
    let gw = weight
        .grad(&grads)
        .expect("gradient")
        .max()
        .into_scalar::<f32>();
    println!("{mode} {tokens}x{d}x{vocab}: loss {value:.5}, max ∂h {gh:.3e}, max ∂W {gw:.3e}");
}
