//! Feature terms in the `Distiller`: a step equals the loss and gradients
//! written out by hand (FitNets' regressor and a projection included), the
//! teacher's features carry no autodiff, the terms' parameters train and are
//! saved in the distiller's record, each term is reported as a metric, and
//! missing or mismatched features are refused with the term's name.

use std::sync::{Arc, Mutex};

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use burn::train::logger::InMemoryMetricLogger;
use burn::train::metric::{Adaptor, LossMetric, Metric, MetricMetadata, Numeric};
use burn::train::{Learner, SupervisedTraining, TrainStep};
use burn_distill::feature::{
    AttentionTransferLossConfig, FeatureTerm, FeatureTerms, Features, HiddenStateLossConfig,
    HintLossConfig,
};
use burn_distill::train::{
    ClassificationBatch, Classifier, Distiller, FeatureLossMetric, FrozenTeacher,
};
use burn_distill::{DistillError, KdLoss, KdLossConfig};

use crate::common::{GradientPairs, Normals, Params, assert_close, params, values};

const SIDE: usize = 5;
const CLASSES: usize = 4;

/// conv 3×3 (1 → `channels`) → relu: the feature map "block"; flattened:
/// the embedding "embed"; a linear layer: the logits. `seen` (shared by
/// clones, not a parameter) logs whether each forward's feature map was on
/// autodiff.
#[derive(Module, Debug)]
struct ConvNet {
    conv: Conv2d,
    out: Linear,
    #[module(skip)]
    seen: Arc<Mutex<Vec<bool>>>,
}

impl ConvNet {
    fn new(channels: usize, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([1, channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            out: LinearConfig::new(channels * SIDE * SIDE, CLASSES).init(device),
            seen: Arc::default(),
        }
    }
}

impl Classifier for ConvNet {
    type Input = Tensor<4>;

    fn logits(&self, inputs: Tensor<4>) -> Tensor<2> {
        self.logits_and_features(inputs).0
    }

    fn logits_and_features(&self, inputs: Tensor<4>) -> (Tensor<2>, Features) {
        let block = relu(self.conv.forward(inputs));
        self.seen.lock().unwrap().push(block.is_autodiff());
        let embed: Tensor<2> = block.clone().flatten(1, 3);
        let logits = self.out.forward(embed.clone());
        (
            logits,
            Features::new().with("block", block).with("embed", embed),
        )
    }
}

fn kd() -> KdLoss {
    KdLossConfig::new()
        .with_temperature(2.0)
        .with_soft_weight(0.6)
        .with_hard_weight(0.4)
        .init()
}

const HINT_WEIGHT: f64 = 0.7;
const AT_WEIGHT: f64 = 50.0;
const COSINE_WEIGHT: f64 = 0.4;

type Terms = (
    FeatureTerm<burn_distill::feature::HintLoss>,
    FeatureTerm<burn_distill::feature::AttentionTransferLoss>,
    FeatureTerm<burn_distill::feature::HiddenStateLoss>,
);

/// FitNets on "block" (2 → 4 channels), attention transfer on "block", and
/// hidden-state cosine on "embed" through a projection (50 → 100).
fn terms(device: &Device) -> Terms {
    (
        FeatureTerm::new("block", HintLossConfig::new(2, 4).init(device)).with_weight(HINT_WEIGHT),
        FeatureTerm::new("block", AttentionTransferLossConfig::new().init()).with_weight(AT_WEIGHT),
        FeatureTerm::new("embed", HiddenStateLossConfig::new().init())
            .with_projection(2 * SIDE * SIDE, 4 * SIDE * SIDE, device)
            .with_weight(COSINE_WEIGHT),
    )
}

type FeatureDistiller = Distiller<ConvNet, FrozenTeacher<ConvNet>, KdLoss, Terms>;

fn distiller(device: &Device) -> FeatureDistiller {
    device.seed(21);
    let student = ConvNet::new(2, device);
    let teacher = ConvNet::new(4, device);
    Distiller::new(student, FrozenTeacher::new(teacher), kd()).with_features(terms(device))
}

fn batch(rows: usize, seed: u64, device: &Device) -> ClassificationBatch<Tensor<4>> {
    device.seed(seed);
    let x = Tensor::<4>::random(
        [rows, 1, SIDE, SIDE],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let labels: Vec<i64> = (0..rows).map(|i| (i % CLASSES) as i64).collect();
    ClassificationBatch::new(
        x,
        Tensor::<1, Int>::from_data(TensorData::new(labels, [rows]), device),
    )
}

/// `[batch, c, h, w]` maps through the 1×1 regressor `weight` `[c, o]`,
/// `bias` `[o]`.
fn regress(maps: Tensor<4>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<4> {
    let [batch, channels, h, w] = maps.dims();
    let out = weight.dims()[1];
    let rows = maps
        .permute([0, 2, 3, 1])
        .reshape([batch * h * w, channels]);
    (rows.matmul(weight) + bias.reshape([1, out]))
        .reshape([batch, h, w, out])
        .permute([0, 3, 1, 2])
}

/// Zagoruyko & Komodakis' map: `mean_c f²`, flattened, over its L2 norm.
fn attention(maps: Tensor<4>) -> Tensor<2> {
    let [batch, _, h, w] = maps.dims();
    let a = maps.powi_scalar(2).mean_dim(1).reshape([batch, h * w]);
    let norm = a.clone().powi_scalar(2).sum_dim(1).sqrt();
    a * norm.recip()
}

/// `1 − cos(s, t)` per row, averaged.
fn cosine_distance(s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
    let dot = (s.clone() * t.clone()).sum_dim(1);
    let norms = s.powi_scalar(2).sum_dim(1).sqrt() * t.powi_scalar(2).sum_dim(1).sqrt();
    (dot * norms.recip()).neg().add_scalar(1.0).mean()
}

#[test]
fn a_step_with_feature_terms_equals_the_hand_written_loss_and_gradients() {
    for (name, device) in crate::common::devices() {
        let device = device.autodiff();
        let model = distiller(&device);
        let b = batch(6, 3, &device);
        let out = TrainStep::step(&model, b.clone());

        // By hand, on a clone (the same parameters, by id).
        let hand_model = model.clone();
        let student = &hand_model.student;
        let teacher = hand_model.teacher.model();
        let block_s = relu(student.conv.forward(b.inputs.clone()));
        let embed_s: Tensor<2> = block_s.clone().flatten(1, 3);
        let logits_s = student.out.forward(embed_s.clone());
        let block_t = relu(teacher.conv.forward(b.inputs.clone().without_autodiff()));
        let embed_t: Tensor<2> = block_t.clone().flatten(1, 3);
        let logits_t = teacher.out.forward(embed_t.clone());
        let term_params = params(&hand_model.features);
        let shaped = |i: usize| term_params.0[i].2.clone();
        let (w_dims, p_dims) = (&term_params.0[0].1, &term_params.0[2].1);
        assert_eq!(
            (w_dims.as_slice(), p_dims.as_slice()),
            ([2, 4].as_slice(), [50, 100].as_slice()),
            "the regressor and the projection are the terms' parameters"
        );
        let hint = (regress(block_s.clone(), shaped(0).reshape([2, 4]), shaped(1))
            - block_t.clone())
        .powi_scalar(2)
        .mean();
        let at = (attention(block_s) - attention(block_t))
            .powi_scalar(2)
            .mean_dim(1)
            .mean();
        let projected = embed_s.matmul(shaped(2).reshape([50, 100])) + shaped(3).reshape([1, 100]);
        let cosine = cosine_distance(projected, embed_t);
        let kd_loss = kd().forward(logits_s, logits_t, b.targets.clone());
        let loss = kd_loss
            + hint.clone().mul_scalar(HINT_WEIGHT)
            + at.clone().mul_scalar(AT_WEIGHT)
            + cosine.clone().mul_scalar(COSINE_WEIGHT);
        let hand = GradientsParams::from_grads(loss.backward(), &hand_model);

        assert_close(
            &format!("{name}: loss"),
            &values(out.item.loss.clone()),
            &values(loss),
            1e-5,
        );
        let reported: Vec<(&str, f64)> = out
            .item
            .features
            .iter()
            .map(|term| (term.name.as_str(), term.weight))
            .collect();
        assert_eq!(
            reported,
            [
                ("hint block", HINT_WEIGHT),
                ("attention block", AT_WEIGHT),
                ("hidden-state embed", COSINE_WEIGHT)
            ]
        );
        for (term, expected) in out.item.features.iter().zip([hint, at, cosine]) {
            assert_close(
                &format!("{name}: {}", term.name),
                &values(term.value.clone()),
                &values(expected),
                1e-5,
            );
        }
        // The student's 4 parameters and the terms' 4; none of the teacher's.
        assert_eq!(out.grads.len(), 8, "{name}: gradients");
        let mut pairs = GradientPairs {
            step: &out.grads,
            hand: &hand,
            pairs: Vec::new(),
        };
        hand_model.visit(&mut pairs);
        assert_eq!(pairs.pairs.len(), 8);
        for (i, (step, hand)) in pairs.pairs.iter().enumerate() {
            assert!(
                hand.iter().any(|g| *g != 0.0),
                "{name}: parameter {i}: no gradient"
            );
            assert_close(&format!("{name}: parameter {i} gradient"), step, hand, 1e-4);
        }
        // The teacher's features were computed without autodiff; the
        // student's with it (so the probe can fail).
        let teacher_seen = model.teacher.model().seen.lock().unwrap().clone();
        assert_eq!(teacher_seen, [false], "{name}: the step's teacher forward");
        let student_seen = model.student.seen.lock().unwrap().clone();
        assert_eq!(student_seen, [true], "{name}: the step's student forward");
    }
}

#[test]
fn without_terms_the_loss_is_the_logit_loss_alone() {
    let device = Device::flex().autodiff();
    device.seed(4);
    let (student, teacher) = (ConvNet::new(2, &device), ConvNet::new(4, &device));
    let b = batch(3, 1, &device);
    let expected = kd().forward(
        student.logits(b.inputs.clone()),
        teacher.logits(b.inputs.clone().without_autodiff()),
        b.targets.clone(),
    );
    let logits_only = Distiller::new(student, FrozenTeacher::new(teacher), kd());
    let out = TrainStep::step(&logits_only, b);
    assert!(out.item.features.is_empty());
    assert_close("loss", &values(out.item.loss), &values(expected), 1e-6);
    assert_eq!(out.grads.len(), 4);
}

/// Rows of a small synthetic image set.
#[derive(Clone)]
struct Images;

impl Batcher<(Vec<f32>, i64), ClassificationBatch<Tensor<4>>> for Images {
    fn batch(
        &self,
        items: Vec<(Vec<f32>, i64)>,
        device: &Device,
    ) -> ClassificationBatch<Tensor<4>> {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|(x, _)| x.clone()).collect();
        let y: Vec<i64> = items.iter().map(|(_, y)| *y).collect();
        ClassificationBatch::new(
            Tensor::from_data(TensorData::new(x, [n, 1, SIDE, SIDE]), device),
            Tensor::from_data(TensorData::new(y, [n]), device),
        )
    }
}

fn images(n: usize, seed: u64) -> InMemDataset<(Vec<f32>, i64)> {
    let mut rng = crate::common::Rng::new(seed);
    InMemDataset::new(
        (0..n)
            .map(|i| {
                let x: Vec<f32> = (0..SIDE * SIDE).map(|_| rng.normal() as f32).collect();
                (x, (i % CLASSES) as i64)
            })
            .collect(),
    )
}

#[test]
fn the_learner_trains_the_terms_and_the_record_saves_them() {
    let device = Device::flex().autodiff();
    let model = distiller(&device);
    let before = params(&model.features);
    let dir = tempfile::tempdir().unwrap();
    let result = SupervisedTraining::new(
        dir.path(),
        DataLoaderBuilder::new(Images)
            .batch_size(8)
            .build(images(32, 1)),
        DataLoaderBuilder::new(Images)
            .batch_size(8)
            .build(images(16, 2)),
    )
    .num_epochs(1)
    .with_metric_logger(InMemoryMetricLogger::new())
    .metric_train_numeric(LossMetric::new())
    .metric_train_numeric(FeatureLossMetric::new("hint block"))
    .metric_train_numeric(FeatureLossMetric::new("attention block"))
    .metric_valid_numeric(FeatureLossMetric::new("hidden-state embed"))
    .with_application_logger(None)
    .launch(Learner::new(model, AdamConfig::new().init(), 1e-2));
    let trained = result.model;
    let after = params(&trained.features);
    assert_eq!(before.0.len(), 4);
    for ((_, dims, b), (_, _, a)) in before.0.iter().zip(&after.0) {
        assert_ne!(
            values(b.clone()),
            values(a.clone()),
            "{dims:?}: not trained"
        );
    }

    // Saved with the distiller, loaded into a fresh one.
    let path = dir.path().join("distiller.bpk");
    trained.clone().save_file(&path).unwrap();
    device.seed(99);
    let fresh = Distiller::new(
        ConvNet::new(2, &device),
        FrozenTeacher::new(ConvNet::new(4, &device)),
        kd(),
    )
    .with_features(terms(&device));
    let fresh_values =
        |p: &Params| -> Vec<Vec<f64>> { p.0.iter().map(|(_, _, t)| values(t.clone())).collect() };
    assert_ne!(fresh_values(&params(&fresh.features)), fresh_values(&after));
    let loaded = fresh.load_file(&path);
    assert_eq!(
        fresh_values(&params(&loaded.features)),
        fresh_values(&after)
    );
}

#[test]
fn the_metric_reports_each_term_before_weighting() {
    let device = Device::flex().autodiff();
    let model = distiller(&device);
    let meta = MetricMetadata {
        progress: burn::data::dataloader::Progress::new(1, 1, None),
        iteration: Some(0),
        lr: None,
    };
    let (big, small) = (
        TrainStep::step(&model, batch(6, 1, &device)).item,
        TrainStep::step(&model, batch(2, 2, &device)).item,
    );
    let mut metric = FeatureLossMetric::new("attention block");
    assert_eq!(metric.name().as_str(), "Feature loss (attention block)");
    metric.update(&big.adapt(), &meta).unwrap();
    metric.update(&small.adapt(), &meta).unwrap();
    let (v6, v2) = (
        values(big.features[1].value.clone())[0],
        values(small.features[1].value.clone())[0],
    );
    assert_close(
        "epoch mean by rows",
        &[metric.running_value().unwrap().current()],
        &[(6.0 * v6 + 2.0 * v2) / 8.0],
        1e-6,
    );
    // A term the distiller does not have: not available.
    let mut absent = FeatureLossMetric::new("hint nowhere");
    assert!(
        absent
            .update(&big.adapt(), &meta)
            .unwrap()
            .is_not_available()
    );
}

fn refusal(terms: &impl FeatureTerms, student: Features, teacher: Features) -> DistillError {
    terms
        .feature_values(
            &student,
            &teacher,
            &burn_distill::Targets::unlabelled(),
            1.0,
            &mut Vec::new(),
        )
        .expect_err("refused")
}

#[test]
fn missing_and_mismatched_features_are_refused_with_the_terms_name() {
    let device = Device::flex();
    let maps = |c: usize| Tensor::<4>::ones([2, c, 3, 3], &device);
    let hint = FeatureTerm::new("block", HintLossConfig::new(2, 4).init(&device));
    // No feature of that name: the names there are.
    let error = refusal(
        &hint,
        Features::new().with("other", maps(2)),
        Features::new().with("block", maps(4)),
    );
    let DistillError::InFeatureTerm { term, error } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(term, "hint block");
    assert_eq!(
        **error,
        DistillError::MissingFeature {
            name: "block".into(),
            available: vec!["other".into()],
        }
    );
    // Ranks that differ.
    let error = refusal(
        &hint,
        Features::new().with("block", maps(2)),
        Features::new().with("block", Tensor::<2>::ones([2, 4], &device)),
    );
    assert!(
        error.to_string().starts_with("feature term \"hint block\": student_features has shape [2, 2, 3, 3] but teacher_features has shape [2, 4]"),
        "{error}"
    );
    // Channels the regressor does not take: the loss's own check.
    let error = refusal(
        &hint,
        Features::new().with("block", maps(3)),
        Features::new().with("block", maps(4)),
    );
    assert!(
        matches!(&error, DistillError::InFeatureTerm { error, .. } if matches!(**error, DistillError::ShapeMismatch { .. })),
        "{error:?}"
    );
    // Hidden states of rank 4.
    let hidden = FeatureTerm::new("block", HiddenStateLossConfig::new().init());
    let error = refusal(
        &hidden,
        Features::new().with("block", maps(4)),
        Features::new().with("block", maps(4)),
    );
    assert!(error.to_string().contains("rank of 2 or 3"), "{error}");
    // A projection of another width.
    let projected = FeatureTerm::new("embed", HiddenStateLossConfig::new().init())
        .with_projection(5, 8, &device);
    let error = refusal(
        &projected,
        Features::new().with("embed", Tensor::<2>::ones([2, 6], &device)),
        Features::new().with("embed", Tensor::<2>::ones([2, 8], &device)),
    );
    assert!(
        matches!(&error, DistillError::InFeatureTerm { error, .. } if matches!(**error, DistillError::ShapeMismatch { .. })),
        "{error:?}"
    );
}

#[test]
fn a_student_without_features_panics_with_the_terms_name() {
    #[derive(Module, Debug)]
    struct Plain {
        out: Linear,
    }
    impl Classifier for Plain {
        type Input = Tensor<2>;
        fn logits(&self, inputs: Tensor<2>) -> Tensor<2> {
            self.out.forward(inputs)
        }
    }
    let device = Device::flex().autodiff();
    let plain = || Plain {
        out: LinearConfig::new(3, CLASSES).init(&device),
    };
    let model = Distiller::new(plain(), FrozenTeacher::new(plain()), kd()).with_features(
        FeatureTerm::new("embed", HiddenStateLossConfig::new().init()),
    );
    let batch = ClassificationBatch::new(
        Tensor::<2>::ones([2, 3], &device),
        Tensor::<1, Int>::from_ints([0, 1], &device),
    );
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        TrainStep::step(&model, batch).item
    }))
    .expect_err("no features");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.starts_with(
            "Distiller: feature term \"hidden-state embed\": no feature named \"embed\" (the model gave [])"
        ),
        "{message}"
    );
}

#[test]
fn a_weight_below_zero_is_refused() {
    let panic = std::panic::catch_unwind(|| {
        FeatureTerm::new("x", AttentionTransferLossConfig::new().init()).with_weight(-1.0)
    })
    .expect_err("refused");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.starts_with("weight must be a finite number"),
        "{message}"
    );
}
