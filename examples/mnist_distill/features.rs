//! `features`: feature distillation on MNIST. A CNN teacher and a smaller
//! CNN student; the student trained through burn's Learner with
//! `burn_distill::train::Distiller` four ways from the same initialisation,
//! on the same batches: hard labels only, the soft targets (KD), KD plus a
//! FitNets hint on the second block (Romero et al. 2015, through a trained
//! 1×1 regressor from the student's channels to the teacher's), and KD plus
//! attention transfer on both blocks (Zagoruyko & Komodakis 2017, β/2 = 500
//! per pair as in their code).

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_distill::KdLossConfig;
use burn_distill::feature::{AttentionTransferLossConfig, FeatureTerm, Features, HintLossConfig};
use burn_distill::train::{Classifier, Distiller, FrozenTeacher};

use crate::data::{CLASSES, PIXELS, SIDE, Split};
use crate::learner::Run;
use crate::report::Experiment;
use crate::train::{self, EpochRecord, Rng, TrainSettings};

/// The teacher's channels in its two blocks.
pub const TEACHER_CHANNELS: [usize; 2] = [32, 64];
/// The student's: a quarter of the teacher's.
pub const STUDENT_CHANNELS: [usize; 2] = [8, 16];
/// FitNets' hint weight (the hint is a mean squared error over the
/// teacher's `[64, 7, 7]` maps).
pub const HINT_WEIGHT: f64 = 1.0;
/// Attention transfer's weight per pair of maps: β/2 with Zagoruyko &
/// Komodakis' β = 1000 (their loss is the mean over the batch and the map).
pub const ATTENTION_WEIGHT: f64 = 500.0;

/// Two blocks of 3×3 convolution (padding 1) → ReLU → 2×2 max-pool, then a
/// linear layer from the flattened `[c2, 7, 7]` maps to the ten logits. The
/// blocks' outputs are the features `"block1"` (`[batch, c1, 14, 14]`) and
/// `"block2"` (`[batch, c2, 7, 7]`).
#[derive(Module, Debug)]
pub struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    out: Linear,
}

impl Cnn {
    pub fn new(channels: [usize; 2], device: &Device) -> Self {
        let conv = |from: usize, to: usize| {
            Conv2dConfig::new([from, to], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            conv1: conv(1, channels[0]),
            conv2: conv(channels[0], channels[1]),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            out: LinearConfig::new(channels[1] * (SIDE / 4) * (SIDE / 4), CLASSES).init(device),
        }
    }

    /// The two blocks' maps and the logits for `[batch, 784]` pixels.
    fn blocks(&self, pixels: Tensor<2>) -> (Tensor<4>, Tensor<4>, Tensor<2>) {
        let [batch, _] = pixels.dims();
        let images = pixels.reshape([batch, 1, SIDE, SIDE]);
        let block1 = self.pool.forward(relu(self.conv1.forward(images)));
        let block2 = self.pool.forward(relu(self.conv2.forward(block1.clone())));
        let logits = self.out.forward(block2.clone().flatten(1, 3));
        (block1, block2, logits)
    }

    /// Logits `[batch, 10]` for `[batch, 784]` pixels.
    pub fn forward(&self, pixels: Tensor<2>) -> Tensor<2> {
        self.blocks(pixels).2
    }
}

impl Classifier for Cnn {
    type Input = Tensor<2>;

    fn logits(&self, inputs: Tensor<2>) -> Tensor<2> {
        self.forward(inputs)
    }

    fn logits_and_features(&self, inputs: Tensor<2>) -> (Tensor<2>, Features) {
        let (block1, block2, logits) = self.blocks(inputs);
        (
            logits,
            Features::new()
                .with("block1", block1)
                .with("block2", block2),
        )
    }
}

/// What `features` is given.
pub struct FeatureSettings {
    pub teacher: TrainSettings,
    pub student: TrainSettings,
    pub temperature: f64,
    pub soft_weight: f64,
    pub retrain_teacher: bool,
}

/// The teacher (trained, or loaded from its checkpoint under `out`) and the
/// four students, each scored on `test`.
pub fn run(
    settings: &FeatureSettings,
    train_set: &Split,
    test: &Split,
    backend: &str,
    out: &Path,
    device: &Device,
) -> Result<Vec<Experiment>, String> {
    let mut runs = Vec::new();
    let (teacher, teacher_run) = teacher(settings, train_set, test, backend, out, device)?;
    runs.push(teacher_run);

    let kd = |soft_weight: f64| {
        KdLossConfig::new()
            .with_temperature(settings.temperature)
            .with_soft_weight(soft_weight)
            .with_hard_weight(1.0 - soft_weight)
            .try_init()
            .map_err(|e| format!("--cnn-temperature / --soft-weight: {e}"))
    };
    let (hard, soft) = (kd(0.0)?, kd(settings.soft_weight)?);
    // Every student starts from these weights and sees the same batches.
    device.seed(settings.student.seed);
    let init = Cnn::new(STUDENT_CHANNELS, device);
    let run = Run {
        settings: &settings.student,
        train: train_set,
        test,
        out,
        device,
    };
    let frozen = || FrozenTeacher::new(teacher.clone());
    let [c1, c2] = STUDENT_CHANNELS;
    let student = format!("CNN student {c1}-{c2}");
    let t = settings.temperature;
    let mut score =
        |name: &str, description: String, launched: (Cnn, Vec<EpochRecord>), start: Instant| {
            let (model, history) = launched;
            runs.push(Experiment {
                name: name.into(),
                description,
                test_errors: errors(&model.valid(), test),
                test_size: test.len(),
                paper_errors: None,
                train_seconds: start.elapsed().as_secs_f64(),
                settings: Some(settings.student.clone()),
                history,
            });
        };

    let start = Instant::now();
    let launched = run.launch(Distiller::new(init.clone(), frozen(), hard), &[]);
    score(
        "cnn-student",
        format!("{student}, hard labels"),
        launched,
        start,
    );

    let start = Instant::now();
    let launched = run.launch(Distiller::new(init.clone(), frozen(), soft.clone()), &[]);
    score(
        "cnn-kd",
        format!("{student}, KD at T = {t}"),
        launched,
        start,
    );

    let start = Instant::now();
    device.seed(settings.student.seed + 1);
    let hint = FeatureTerm::new(
        "block2",
        HintLossConfig::new(STUDENT_CHANNELS[1], TEACHER_CHANNELS[1]).init(device),
    )
    .with_weight(HINT_WEIGHT);
    let names = [hint.name()];
    let launched = run.launch(
        Distiller::new(init.clone(), frozen(), soft.clone()).with_features(hint),
        &names,
    );
    score(
        "cnn-kd-fitnets",
        "  … KD + FitNets (block2)".into(),
        launched,
        start,
    );

    let start = Instant::now();
    let attention = |feature: &str| {
        FeatureTerm::new(feature, AttentionTransferLossConfig::new().init())
            .with_weight(ATTENTION_WEIGHT)
    };
    let terms = vec![attention("block1"), attention("block2")];
    let names: Vec<String> = terms.iter().map(FeatureTerm::name).collect();
    let launched = run.launch(
        Distiller::new(init, frozen(), soft).with_features(terms),
        &names,
    );
    score(
        "cnn-kd-at",
        "  … KD + attention (both blocks)".into(),
        launched,
        start,
    );
    Ok(runs)
}

/// The CNN teacher on hard labels (its inputs jittered by up to 2 pixels),
/// trained by a plain loop, or loaded from a checkpoint named by everything
/// that changes its weights.
fn teacher(
    settings: &FeatureSettings,
    train_set: &Split,
    test: &Split,
    backend: &str,
    out: &Path,
    device: &Device,
) -> Result<(Cnn, Experiment), String> {
    let teacher = &settings.teacher;
    let key = format!(
        "cnn{TEACHER_CHANNELS:?}|{teacher:?}|{}|{backend}",
        train_set.len()
    );
    let path = out.join(format!(
        "cnn-teacher-{:016x}.bpk",
        crate::fnv1a(key.as_bytes())
    ));
    device.seed(teacher.seed);
    let mut model = Cnn::new(TEACHER_CHANNELS, device);
    let start = Instant::now();
    let history = if path.exists() && !settings.retrain_teacher {
        crate::load_checkpoint(&mut model, &path)?;
        println!(
            "cnn teacher: loaded {} (--retrain-teacher to train anew)",
            path.display()
        );
        Vec::new()
    } else {
        let history;
        (model, history) = train_hard(model, train_set, test, teacher, device);
        crate::save_checkpoint(&model, &path)?;
        println!("cnn teacher: saved {}", path.display());
        history
    };
    let seconds = if history.is_empty() {
        0.0
    } else {
        start.elapsed().as_secs_f64()
    };
    let [c1, c2] = TEACHER_CHANNELS;
    let run = Experiment {
        name: "cnn-teacher".into(),
        description: format!("CNN teacher {c1}-{c2}, jitter"),
        test_errors: errors(&model.valid(), test),
        test_size: test.len(),
        paper_errors: None,
        train_seconds: seconds,
        settings: Some(teacher.clone()),
        history,
    };
    Ok((model, run))
}

/// Minibatch Adam on cross-entropy with a cosine-decayed learning rate and
/// the settings' jitter.
fn train_hard(
    mut model: Cnn,
    data: &Split,
    test: &Split,
    settings: &TrainSettings,
    device: &Device,
) -> (Cnn, Vec<EpochRecord>) {
    let n = data.len();
    let steps_per_epoch = n / settings.batch;
    let total = settings.epochs * steps_per_epoch;
    let mut optimizer = AdamConfig::new().init();
    let ce = CrossEntropyLossConfig::new().init(device);
    let mut rng = Rng::new(settings.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut history = Vec::new();
    let start = Instant::now();
    for epoch in 1..=settings.epochs {
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct) = (0.0, 0);
        for step in 0..steps_per_epoch {
            let rows = &order[step * settings.batch..(step + 1) * settings.batch];
            let pixels = train::batch_images(data, rows, settings.jitter, &mut rng);
            let x = Tensor::<2>::from_data(TensorData::new(pixels, [rows.len(), PIXELS]), device);
            let labels: Vec<i64> = rows.iter().map(|&r| data.labels[r] as i64).collect();
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [rows.len()]), device);
            let logits = model.forward(x);
            correct += train::count_correct(logits.clone().detach(), &y);
            let loss = ce.forward(logits, y);
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = train::cosine_lr(settings.lr, (epoch - 1) * steps_per_epoch + step, total);
            model = optimizer.step(lr, model, grads);
        }
        let record = EpochRecord {
            epoch,
            mean_loss: loss_sum / steps_per_epoch as f64,
            train_accuracy: correct as f64 / (steps_per_epoch * settings.batch) as f64,
            test_errors: errors(&model.valid(), test),
            seconds: start.elapsed().as_secs_f64(),
        };
        println!(
            "  [cnn teacher] epoch {epoch:3}/{}  loss {:.4}  test errors {:5}/{}  {:6.0} s",
            settings.epochs,
            record.mean_loss,
            record.test_errors,
            test.len(),
            record.seconds
        );
        history.push(record);
    }
    (model, history)
}

/// Misclassified images of `split`.
pub fn errors(model: &Cnn, split: &Split) -> usize {
    let logits = train::logits_of(|x| model.forward(x), &model.devices()[0], split);
    train::count_errors(&logits, &split.labels, None, None)
}
