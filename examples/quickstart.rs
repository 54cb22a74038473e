//! Quick start: distil a teacher MLP into a small student on synthetic data.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! A 10-class problem in 20 dimensions (noisy clusters bent by a fixed
//! non-linearity) is learnt by a 20-128-128-10 teacher from 4000 points. A
//! 20-64-10 student then sees only 300 of those points (the paper's §4 setting,
//! where soft targets stop a model from overfitting a small transfer set), and is
//! trained twice from the same initialisation and data order: on the hard labels
//! alone, and with `KdLoss` (T = 4, 0.9 soft / 0.1 hard). The program prints the
//! losses as it goes and the test accuracy of all three models.

mod common;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::Device;
use burn_distill::{KdLoss, KdLossConfig};
use common::{Lcg, Mlp, accuracy, clusters, tensors, train};

const DIM: usize = 20;
const CLASSES: usize = 10;

fn main() {
    let device = Device::flex().autodiff();
    // Seeded parameter initialisation, so that every run prints the same numbers.
    device.seed(7);
    let mut rng = Lcg::new(0);
    let centres: Vec<f32> = (0..CLASSES * DIM)
        .map(|_| rng.uniform() * 4.0 - 2.0)
        .collect();
    let (n_train, n_test) = (4000, 2000);
    let (train_x, train_y) = clusters(&centres, DIM, n_train, 2.5, 1);
    let (test_x, test_y) = clusters(&centres, DIM, n_test, 2.5, 2);
    let (x, y) = tensors(train_x, train_y, DIM, &device);
    let (xt, yt) = tensors(test_x, test_y, DIM, &device);
    let (steps, batch, lr) = (1500, 64, 3e-3);
    let ce = CrossEntropyLossConfig::new().init(&device);

    println!("teacher 20-128-128-10, hard labels:");
    let teacher = train(
        Mlp::new(&[DIM, 128, 128, CLASSES], &device),
        &x,
        steps,
        batch,
        lr,
        "teacher",
        |_, logits, rows| ce.forward(logits, y.clone().slice([rows])),
    );
    let teacher_logits = teacher.forward(x.clone()).detach();

    // The student's transfer set: the first 300 training points only.
    let n_transfer = 300;
    let transfer = x.clone().slice([0..n_transfer, 0..DIM]);
    let student_init = Mlp::new(&[DIM, 64, CLASSES], &device);
    println!("student 20-64-10 on {n_transfer} points, hard labels only:");
    let baseline = train(
        student_init.clone(),
        &transfer,
        steps,
        batch,
        lr,
        "student",
        |_, logits, rows| ce.forward(logits, y.clone().slice([rows])),
    );
    let kd: KdLoss = KdLossConfig::new().with_temperature(4.0).init();
    println!("student 20-64-10 on {n_transfer} points, distilled ({kd}):");
    let distilled = train(
        student_init,
        &transfer,
        steps,
        batch,
        lr,
        "distilled",
        |_, logits, rows| {
            let teacher = teacher_logits.clone().slice([rows.clone(), 0..CLASSES]);
            kd.forward(logits, teacher, y.clone().slice([rows]))
        },
    );

    println!("\ntest accuracy on {n_test} held-out points:");
    for (name, model) in [
        ("teacher          ", &teacher),
        ("student (hard)   ", &baseline),
        ("student (KD, T=4)", &distilled),
    ] {
        println!(
            "  {name}  {:.2}%",
            100.0 * accuracy(model.forward(xt.clone()), &yt)
        );
    }
}
