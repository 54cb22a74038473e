//! The generalist/specialist pipeline of Hinton, Vinyals & Dean (2015, §5),
//! end to end on synthetic data:
//!
//! ```text
//! cargo run --release --example specialists
//! ```
//!
//! 1. A 40-class problem whose classes come in 8 tight families of 5 (easy to
//!    tell families apart, hard to tell siblings apart). A small generalist
//!    MLP learns it.
//! 2. Confusable subsets are found without labels: K-means on the covariance of
//!    the generalist's predictions on unlabelled data, 8 clusters grown into
//!    overlapping subsets of up to 7 classes by the classes positively
//!    correlated with them (`SubsetOverlap::Correlated`).
//! 3. Each specialist starts from the generalist's weights (its output layer cut
//!    down to its subset plus a dustbin), and is trained on half subset / half
//!    other examples against the generalist's soft targets collapsed to its
//!    outputs (T = 2, shifted to the oversampled prior) and the mapped hard
//!    labels; its dustbin logit is then corrected for the oversampling.
//! 4. At test time the generalist and the active specialists (top-1) are
//!    combined by minimising eq. 5. Accuracy is reported overall and by the
//!    number of specialists covering the true class (the shape of the paper's
//!    Table 4).
//!
//! Why the gain once fell with coverage here (classes covered by 7–8
//! specialists lost 8–9% of their correct answers): subsets were padded to 7
//! classes with the classes nearest each cluster's centre, and the classes the
//! generalist confuses with nothing are near every centre, so two of them sat
//! in all eight subsets. On those classes eight specialists that never see
//! their real rivals outvoted the generalist in eq. 5; the soft targets, taken
//! under the data's prior while the labels had the oversampled one, got a
//! dustbin correction they did not need; and the combiner stopped at its cap,
//! having started from dustbin mass spread onto classes with no probability.
//! Subsets now grow only by correlated classes, the soft targets are shifted
//! to the training prior, and the combiner starts at the minimiser for one
//! active specialist and accelerates EM (it converges in a few iterations).

mod common;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::specialist::{
    ClassSubset, ConfusableSubsetsConfig, Specialist, SpecialistCombinerConfig, SpecialistSampler,
};
use burn_distill::{KdLossConfig, TeacherOutput};
use common::{Lcg, Mlp, accuracy, clusters, tensors, train};

const DIM: usize = 24;
const FAMILIES: usize = 8;
const SIBLINGS: usize = 5;
const CLASSES: usize = FAMILIES * SIBLINGS;
const T: f64 = 2.0;
/// Weight of the generalist's soft targets in a specialist's loss: low, as the
/// small generalist's soft targets carry the very confusions the specialists
/// are there to fix.
const SOFT: f64 = 0.1;
/// Hidden units of the generalist: few enough that it leaves confusions to
/// fix (with 48, specialists moved its 84.50% to between 84.62% and 85.00% in
/// every setting tried).
const HIDDEN: usize = 16;

/// A specialist network: the generalist's hidden layers, and an output layer
/// made of the generalist's output units for the subset plus one dustbin unit
/// (initialised to the mean of the other units).
fn specialist_from_generalist(generalist: &Mlp, specialist: &Specialist) -> Mlp {
    let mut layers = generalist.layers.clone();
    let last = layers.pop().expect("output layer");
    layers.push(specialist.output_layer(&last));
    Mlp { layers }
}

fn main() {
    let device = Device::flex().autodiff();
    device.seed(11);

    // Families far apart, siblings close together.
    let mut rng = Lcg::new(3);
    let family_centres: Vec<f32> = (0..FAMILIES * DIM)
        .map(|_| rng.uniform() * 8.0 - 4.0)
        .collect();
    let centres: Vec<f32> = (0..CLASSES)
        .flat_map(|c| {
            let family = c / SIBLINGS;
            (0..DIM)
                .map(|d| family_centres[family * DIM + d] + rng.uniform() * 1.6 - 0.8)
                .collect::<Vec<_>>()
        })
        .collect();
    let (n_train, n_unlabelled, n_test) = (8000, 4000, 4000);
    let (train_x, train_y_host) = clusters(&centres, DIM, n_train, 1.6, 1);
    let (x, y) = tensors(train_x, train_y_host.clone(), DIM, &device);
    let (unlabelled_x, unlabelled_y) = clusters(&centres, DIM, n_unlabelled, 1.6, 2);
    let (xu, _) = tensors(unlabelled_x, unlabelled_y, DIM, &device);
    let (test_x, test_y_host) = clusters(&centres, DIM, n_test, 1.6, 3);
    let (xt, yt) = tensors(test_x, test_y_host.clone(), DIM, &device);
    let ce = CrossEntropyLossConfig::new().init(&device);

    println!("generalist {DIM}-{HIDDEN}-{CLASSES}:");
    let generalist = train(
        Mlp::new(&[DIM, HIDDEN, CLASSES], &device),
        &x,
        2000,
        64,
        3e-3,
        "generalist",
        |_, logits, rows| ce.forward(logits, y.clone().slice([rows])),
    );

    // Confusable subsets from unlabelled predictions.
    let unlabelled_probs = softmax(generalist.forward(xu).detach(), 1);
    let subsets: Vec<ClassSubset> = ConfusableSubsetsConfig::new(8)
        .with_subset_size(Some(7))
        .with_seed(1)
        .find(unlabelled_probs.inner())
        .expect("valid clustering settings");
    println!("confusable subsets (K-means on the prediction covariance):");
    for s in &subsets {
        println!("  {:?}", s.classes());
    }

    // Specialists.
    let generalist_logits = generalist.forward(x.clone()).detach();
    let kd = KdLossConfig::new()
        .with_temperature(T)
        .with_soft_weight(SOFT)
        .with_hard_weight(1.0 - SOFT)
        .init();
    let mut specialists = Vec::new();
    let mut models = Vec::new();
    let mut corrections = Vec::new();
    for (m, subset) in subsets.iter().enumerate() {
        let specialist = Specialist::new(subset.clone());
        let sampler =
            SpecialistSampler::new(&train_y_host, subset).expect("examples on both sides");
        let sample = sampler.sample(4000, m as u64);
        let rows = Tensor::<1, Int>::from_data(
            TensorData::new(
                sample.indices.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [sample.indices.len()],
            ),
            &device,
        );
        let xs = x.clone().select(0, rows.clone());
        // The generalist's soft targets under the oversampled prior the labels
        // have, so that the dustbin correction at test time undoes both.
        let collapsed = specialist
            .collapse_logits(generalist_logits.clone().select(0, rows.clone()), T)
            .expect("the generalist has one logit per class");
        let soft = specialist
            .correct_dustbin(collapsed, -sampler.dustbin_logit_correction())
            .expect("a finite correction");
        let hard = specialist
            .map_labels(y.clone().select(0, rows))
            .expect("labels in range");
        let model = train(
            specialist_from_generalist(&generalist, &specialist),
            &xs,
            1500,
            64,
            3e-3,
            &format!("specialist {m}"),
            |_, logits, r| {
                let k = specialist.num_outputs();
                let teacher = TeacherOutput::Logits(soft.clone().slice([r.clone(), 0..k]));
                kd.forward(logits, teacher, hard.clone().slice([r]))
            },
        );
        corrections.push(sampler.dustbin_logit_correction());
        specialists.push(specialist);
        models.push(model);
    }

    // Inference: the paper's recipe (dustbin logit corrected for the
    // oversampling), and the same without the correction for comparison.
    let pg = softmax(generalist.forward(xt.clone()), 1).inner();
    let combiner = SpecialistCombinerConfig::new().init();
    let combine = |corrected: bool| {
        let specialist_probs: Vec<Tensor<2>> = specialists
            .iter()
            .zip(&models)
            .zip(&corrections)
            .map(|((s, model), &c)| {
                let logits = model.forward(xt.clone());
                let logits = if corrected {
                    s.correct_dustbin(logits, c).expect("a finite correction")
                } else {
                    logits
                };
                softmax(logits, 1).inner()
            })
            .collect();
        combiner
            .combine(pg.clone(), &specialists, &specialist_probs)
            .expect("one output per class and dustbin")
    };
    let combined = combine(true);
    let uncorrected = combine(false);
    println!(
        "\ncombiner: {} iterations, mean objective {:.4} → {:.4}",
        combined.iterations,
        combined.objective_trace[0] / n_test as f64,
        combined.objective_trace.last().unwrap() / n_test as f64
    );

    let argmax = |p: Tensor<2>| -> Vec<i64> { p.argmax(1).into_data().iter::<i64>().collect() };
    let correct = |pred: &[i64]| {
        pred.iter()
            .zip(&test_y_host)
            .filter(|(p, y)| p == y)
            .count()
    };
    let g_pred = argmax(pg.clone());
    let c_pred = argmax(combined.probs);
    let u_pred = argmax(uncorrected.probs);
    println!("\ntest accuracy on {n_test} examples:");
    println!(
        "  generalist                                    {:.2}%",
        100.0 * accuracy(pg, &yt.clone().inner())
    );
    println!(
        "  generalist + specialists (dustbin corrected)  {:.2}%",
        100.0 * correct(&c_pred) as f64 / n_test as f64
    );
    println!(
        "  generalist + specialists (no correction)      {:.2}%",
        100.0 * correct(&u_pred) as f64 / n_test as f64
    );
    println!(
        "\nby number of specialists covering the true class (dustbin corrected; cf. the paper's Table 4):"
    );
    println!("  covering  examples  generalist correct  combined correct  relative gain");
    let max_cover = subsets.len();
    for k in 0..=max_cover {
        let rows: Vec<usize> = (0..n_test)
            .filter(|&i| {
                subsets
                    .iter()
                    .filter(|s| s.contains(test_y_host[i] as usize))
                    .count()
                    == k
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let g = rows
            .iter()
            .filter(|&&i| g_pred[i] == test_y_host[i])
            .count();
        let c = rows
            .iter()
            .filter(|&&i| c_pred[i] == test_y_host[i])
            .count();
        println!(
            "  {k:8}  {:8}  {g:18}  {c:16}  {:+12.1}%",
            rows.len(),
            100.0 * (c as f64 - g as f64) / g.max(1) as f64
        );
    }
}
