//! Training and evaluation: minibatch Adam with a cosine-decayed learning
//! rate, optional ±k-pixel jitter, optional max-norm, and either hard labels or
//! `KdLoss` on a teacher's logits as the objective.
#![allow(dead_code)] // the integration test uses a different part than the example

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::KdLoss;
use burn_distill::specialist::Specialist;
use burn_distill::store::{StoreSummary, TeacherStore, TeacherStoreConfig};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::data::{CLASSES, PIXELS, SIDE, Split};
use crate::model::Mlp;

#[path = "../../src/specialist/rng.rs"]
mod rng;

/// A seeded generator (the crate's SplitMix64): shuffles and jitter are
/// reproducible. Its seeding and `below` are the example's own, kept so that
/// the results quoted in the README stay reproducible.
#[derive(Debug, Clone)]
pub struct Rng(rng::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(rng::SplitMix64::new(seed ^ 0x5851_F42D_4C95_7F2D))
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Copies `rows` of `split` into one batch, each image shifted by a random
/// whole number of pixels in `-jitter..=jitter` along each axis (zeros fill
/// in), as Hinton et al. jittered the teacher's inputs "by up to two pixels".
pub fn batch_images(split: &Split, rows: &[usize], jitter: usize, rng: &mut Rng) -> Vec<f32> {
    let mut out = vec![0.0f32; rows.len() * PIXELS];
    for (b, &row) in rows.iter().enumerate() {
        let src = &split.images[row * PIXELS..(row + 1) * PIXELS];
        let dst = &mut out[b * PIXELS..(b + 1) * PIXELS];
        if jitter == 0 {
            dst.copy_from_slice(src);
            continue;
        }
        let span = 2 * jitter + 1;
        let dx = rng.below(span) as isize - jitter as isize;
        let dy = rng.below(span) as isize - jitter as isize;
        for y in 0..SIDE as isize {
            let sy = y - dy;
            if !(0..SIDE as isize).contains(&sy) {
                continue;
            }
            for x in 0..SIDE as isize {
                let sx = x - dx;
                if (0..SIDE as isize).contains(&sx) {
                    dst[(y * SIDE as isize + x) as usize] = src[(sy * SIDE as isize + sx) as usize];
                }
            }
        }
    }
    out
}

/// How one training run is set up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSettings {
    pub epochs: usize,
    pub batch: usize,
    /// Peak Adam learning rate; decays to zero along a cosine over the run.
    pub lr: f64,
    /// Shift inputs by up to this many pixels (0: none).
    pub jitter: usize,
    /// Max-norm radius for every unit's incoming weights (`None`: none).
    pub max_norm: Option<f32>,
    pub seed: u64,
}

/// What the student is trained to match.
pub enum Objective<'a> {
    /// Cross-entropy with the labels.
    Hard,
    /// `KdLoss` against a (frozen, evaluation-mode) teacher, run on the same
    /// jittered batch the student sees.
    Distill { teacher: &'a Mlp, loss: &'a KdLoss },
    /// `KdLoss` against the teacher's top-k log-probabilities read from a
    /// store written by [`write_teacher_store`] on the same examples, in the
    /// same order (no teacher runs; no jitter, since the store holds the
    /// teacher on the images as they are).
    Stored {
        store: &'a TeacherStore,
        loss: &'a KdLoss,
    },
    /// A specialist's objective (the paper's §5): `KdLoss` against the
    /// generalist's logits collapsed to the specialist's outputs at the loss's
    /// temperature. The data's labels must already be mapped to the
    /// specialist's outputs (dustbin for classes outside its subset).
    Specialist {
        generalist: &'a Mlp,
        specialist: &'a Specialist,
        loss: &'a KdLoss,
        /// Added to the collapsed dustbin logit.
        dustbin_shift: f64,
    },
}

/// One epoch of a run, for the progress log and the JSON report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub mean_loss: f64,
    /// Accuracy on the training batches as they were seen (dropout and jitter on).
    pub train_accuracy: f64,
    pub test_errors: usize,
    pub seconds: f64,
}

/// Trains `model` on `data` and returns it with its per-epoch history; the
/// test errors logged after each epoch are for watching only (nothing is
/// chosen on them).
pub fn train(
    mut model: Mlp,
    data: &Split,
    test: &Split,
    settings: &TrainSettings,
    objective: Objective<'_>,
    label: &str,
    device: &Device,
) -> (Mlp, Vec<EpochRecord>) {
    let n = data.len();
    assert!(
        n >= settings.batch,
        "{label}: {n} examples, fewer than one batch of {}",
        settings.batch
    );
    assert!(
        settings.jitter == 0 || !matches!(objective, Objective::Stored { .. }),
        "{label}: a teacher store holds the teacher on unjittered images; train without jitter"
    );
    let steps_per_epoch = n / settings.batch;
    let total_steps = settings.epochs * steps_per_epoch;
    let mut optimizer = AdamConfig::new().init();
    let ce = CrossEntropyLossConfig::new().init(device);
    let mut rng = Rng::new(settings.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let bar = progress_bar(label, total_steps as u64);
    let mut history = Vec::new();
    let start = Instant::now();
    for epoch in 1..=settings.epochs {
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for step in 0..steps_per_epoch {
            let rows = &order[step * settings.batch..(step + 1) * settings.batch];
            let pixels = batch_images(data, rows, settings.jitter, &mut rng);
            let x = Tensor::<2>::from_data(TensorData::new(pixels, [rows.len(), PIXELS]), device);
            let labels: Vec<i64> = rows.iter().map(|&r| data.labels[r] as i64).collect();
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [rows.len()]), device);
            let logits = model.forward(x.clone());
            let loss = match &objective {
                Objective::Hard => ce.forward(logits.clone(), y.clone()),
                Objective::Distill { teacher, loss } => {
                    let teacher_logits = constant_logits(teacher, &x, device);
                    loss.forward(logits.clone(), teacher_logits, y.clone())
                }
                Objective::Specialist {
                    generalist,
                    specialist,
                    loss,
                    dustbin_shift,
                } => {
                    // The specialist, its loss and its shift were checked
                    // when the run was set up.
                    let collapsed = specialist
                        .collapse_logits(
                            constant_logits(generalist, &x, device),
                            loss.config().temperature,
                        )
                        .expect("the generalist has one logit per class");
                    let collapsed = specialist
                        .correct_dustbin(collapsed, *dustbin_shift)
                        .expect("a finite dustbin shift");
                    loss.forward(logits.clone(), collapsed, y.clone())
                }
                Objective::Stored { store, loss } => {
                    // The store was verified before training: a failure here
                    // is the file changing or vanishing under the run.
                    let teacher = store
                        .read(rows, device)
                        .unwrap_or_else(|e| panic!("{label}: {e}"));
                    loss.forward(logits.clone(), teacher, y.clone())
                }
            };
            // Reading values back synchronises; every step is cheap next to a
            // training step of these nets.
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            correct += count_correct(logits.detach(), &y);
            seen += rows.len();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let step_index = (epoch - 1) * steps_per_epoch + step;
            model = optimizer.step(
                cosine_lr(settings.lr, step_index, total_steps),
                model,
                grads,
            );
            if let Some(radius) = settings.max_norm {
                model = model.constrain_max_norm(radius);
            }
            bar.inc(1);
            if step % 20 == 0 {
                bar.set_message(format!(
                    "epoch {epoch}/{} loss {:.4} acc {:.2}%",
                    settings.epochs,
                    loss_sum / (step + 1) as f64,
                    100.0 * correct as f64 / seen as f64
                ));
            }
        }
        let test_errors = errors(&model.valid(), test, None);
        let record = EpochRecord {
            epoch,
            mean_loss: loss_sum / steps_per_epoch as f64,
            train_accuracy: correct as f64 / seen as f64,
            test_errors,
            seconds: start.elapsed().as_secs_f64(),
        };
        let line = format!(
            "  [{label}] epoch {epoch:3}/{}  loss {:.4}  train acc {:6.2}%  test errors {:5}/{}  {:6.0} s",
            settings.epochs,
            record.mean_loss,
            100.0 * record.train_accuracy,
            record.test_errors,
            test.len(),
            record.seconds
        );
        // A hidden bar (stderr not a terminal, as in CI) prints nothing itself.
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
        history.push(record);
    }
    bar.finish_and_clear();
    (model, history)
}

/// `model`'s logits on `x`, run without autodiff and brought back to
/// `device` as a constant (a frozen teacher or generalist).
fn constant_logits(model: &Mlp, x: &Tensor<2>, device: &Device) -> Tensor<2> {
    let logits = model.forward(x.clone().without_autodiff());
    Tensor::<2>::from_data(logits.into_data(), device)
}

/// Writes `teacher`'s top-k log-probabilities on every image of `split`
/// (unjittered, in order: example `i` of the store is row `i` of `split`).
pub fn write_teacher_store(
    teacher: &Mlp,
    split: &Split,
    config: &TeacherStoreConfig,
    path: &std::path::Path,
) -> Result<StoreSummary, burn_distill::DistillError> {
    let device = teacher.devices()[0].clone();
    let all = logits(teacher, split);
    let mut writer = config.create(path)?;
    for rows in all.chunks(1000 * CLASSES) {
        let shape = [rows.len() / CLASSES, CLASSES];
        writer.append_logits(Tensor::from_data(
            TensorData::new(rows.to_vec(), shape),
            &device,
        ))?;
    }
    writer.finish()
}

/// Learning rate at `step` of `total`: `peak · (1 + cos(π·step/total)) / 2`.
pub fn cosine_lr(peak: f64, step: usize, total: usize) -> f64 {
    peak * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos())
}

fn progress_bar(label: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    // indicatif hides itself when stderr is not a terminal (CI logs then get
    // only the per-epoch lines printed through `println`).
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} steps  {msg}  {elapsed_precise} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

pub fn count_correct(logits: Tensor<2>, y: &Tensor<1, Int>) -> usize {
    let predicted = logits.argmax(1).flatten::<1>(0, 1);
    predicted.equal(y.clone()).int().sum().into_scalar::<i64>() as usize
}

/// Logits `[n, outputs]` of `model` on `split` (no jitter), row-major.
pub fn logits(model: &Mlp, split: &Split) -> Vec<f32> {
    logits_of(|x| model.forward(x), &model.devices()[0], split)
}

/// Logits `[n, outputs]` of `forward` on `split`'s images, 1,000 at a time,
/// row-major.
pub fn logits_of(
    forward: impl Fn(Tensor<2>) -> Tensor<2>,
    device: &Device,
    split: &Split,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(split.len() * CLASSES);
    for start in (0..split.len()).step_by(1000) {
        let end = (start + 1000).min(split.len());
        let x = Tensor::<2>::from_data(
            TensorData::new(
                split.images[start * PIXELS..end * PIXELS].to_vec(),
                [end - start, PIXELS],
            ),
            device,
        );
        out.extend(
            forward(x)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32 logits"),
        );
    }
    out
}

/// Misclassified rows of `split`, with `bias` added to the logits first.
pub fn errors(model: &Mlp, split: &Split, bias: Option<&[f32; CLASSES]>) -> usize {
    count_errors(&logits(model, split), &split.labels, bias, None)
}

/// Rows whose arg-max (after adding `bias`) is not the label; only rows with
/// label `only` when given. `logits` is row-major with one row per label (any
/// width: ten classes, or a specialist's outputs with mapped labels).
pub fn count_errors(
    logits: &[f32],
    labels: &[u8],
    bias: Option<&[f32; CLASSES]>,
    only: Option<u8>,
) -> usize {
    let width = logits.len() / labels.len().max(1);
    let bias = |class: usize| bias.map_or(0.0, |b| b[class]);
    labels
        .iter()
        .enumerate()
        .filter(|&(_, &label)| only.is_none_or(|digit| label == digit))
        .filter(|&(row, &label)| {
            let z = &logits[row * width..(row + 1) * width];
            let predicted = (0..width)
                .max_by(|&a, &b| (z[a] + bias(a)).total_cmp(&(z[b] + bias(b))))
                .expect("at least one output");
            predicted != label as usize
        })
        .count()
}

/// The bias for `class`'s logit, from `0..=max` in steps of `step`, that
/// minimises the errors on a validation split (`logits`, `labels`); the
/// smallest such bias on ties. Returns it with the validation errors.
pub fn choose_bias(
    logits: &[f32],
    labels: &[u8],
    class: usize,
    max: f32,
    step: f32,
) -> (f32, usize) {
    let mut best = (0.0, usize::MAX);
    let candidates = (max / step).round() as usize;
    for i in 0..=candidates {
        let b = i as f32 * step;
        let mut bias = [0.0; CLASSES];
        bias[class] = b;
        let e = count_errors(logits, labels, Some(&bias), None);
        if e < best.1 {
            best = (b, e);
        }
    }
    best
}
