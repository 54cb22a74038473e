//! The `Distiller` in burn-train's Learner: the teacher stays frozen (its
//! parameters unchanged, out of the optimizer, no autodiff node), a step
//! equals a hand-written one, checkpoints round-trip, the teacher stays on its
//! device under `fork`, and the metrics read what they claim.

use std::sync::{Arc, Mutex};

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use burn::train::checkpoint::{AsyncCheckpointer, FileCheckpointer, KeepLastNCheckpoints};
use burn::train::logger::InMemoryMetricLogger;
use burn::train::metric::{AccuracyMetric, LossMetric, Metric, MetricMetadata};
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, LearningCheckpointer, MultiDeviceOptim,
    SupervisedTraining, TrainStep,
};
use burn_distill::train::{
    AgreementMetric, ClassificationBatch, Classifier, DistillLossMetric, Distiller, FrozenTeacher,
    TeacherSource,
};
use burn_distill::{KdLoss, KdLossConfig, TeacherOutput};

use crate::common::{Normals, assert_close, values};

const FEATURES: usize = 6;
const CLASSES: usize = 5;

/// A two-layer perceptron; `seen` (shared by clones, not a parameter) logs,
/// per forward, whether its input or its weights were on autodiff and which
/// device it ran on — the probe for the teacher's frozen forward.
#[derive(Module, Debug)]
struct Net {
    hidden: Linear,
    out: Linear,
    #[module(skip)]
    seen: Arc<Mutex<Vec<Forward>>>,
}

#[derive(Debug, Clone)]
struct Forward {
    input_autodiff: bool,
    weights_autodiff: bool,
    device: Device,
}

impl Net {
    fn new(hidden: usize, device: &Device) -> Self {
        Self {
            hidden: LinearConfig::new(FEATURES, hidden).init(device),
            out: LinearConfig::new(hidden, CLASSES).init(device),
            seen: Arc::default(),
        }
    }

    fn forwards(&self) -> Vec<Forward> {
        self.seen.lock().unwrap().clone()
    }

    /// Every weight, flattened, in order.
    fn weights(&self) -> Vec<f64> {
        [&self.hidden, &self.out]
            .iter()
            .flat_map(|l| {
                let mut w = values(l.weight.val());
                w.extend(values(l.bias.as_ref().unwrap().val()));
                w
            })
            .collect()
    }
}

impl Classifier for Net {
    type Input = Tensor<2>;

    fn logits(&self, inputs: Tensor<2>) -> Tensor<2> {
        self.seen.lock().unwrap().push(Forward {
            input_autodiff: inputs.is_autodiff(),
            weights_autodiff: self.hidden.weight.val().is_autodiff(),
            device: self.hidden.weight.val().device(),
        });
        let h = burn::tensor::activation::relu(self.hidden.forward(inputs));
        self.out.forward(h)
    }
}

fn kd() -> KdLoss {
    KdLossConfig::new()
        .with_temperature(3.0)
        .with_soft_weight(0.7)
        .with_hard_weight(0.3)
        .init()
}

fn batch(rows: usize, seed: u64, device: &Device) -> ClassificationBatch<Tensor<2>> {
    device.seed(seed);
    let x = Tensor::<2>::random([rows, FEATURES], Distribution::Normal(0.0, 1.0), device);
    let labels: Vec<i64> = (0..rows)
        .map(|i| ((i as u64 * 7 + seed) % CLASSES as u64) as i64)
        .collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [rows]), device);
    ClassificationBatch::new(x, y)
}

fn distiller(device: &Device) -> Distiller<Net, FrozenTeacher<Net>> {
    device.seed(11);
    let student = Net::new(8, device);
    let teacher = Net::new(16, device);
    Distiller::new(student, FrozenTeacher::new(teacher), kd())
}

#[test]
fn teacher_is_unchanged_and_absent_from_the_optimizer() {
    let device = Device::flex().autodiff();
    let mut model = distiller(&device);
    let teacher_before = model.teacher.model().weights();
    let student_before = model.student.weights();
    let mut optim = AdamConfig::new().init();
    // The same steps on the student alone, by hand: the optimizer state a
    // correct distiller must match (a teacher in it would add its moments).
    let mut alone = model.student.clone();
    let mut optim_alone = AdamConfig::new().init();
    let teacher = model.teacher.model().clone();
    let kd = kd();
    for step in 0..3 {
        let b = batch(12, step, &device);
        let out = TrainStep::step(&model, b.clone());
        assert_eq!(
            out.grads.len(),
            4,
            "gradients for the student's 4 parameters only"
        );
        model = model.optimize(&mut optim, 0.01_f64.into(), out.grads);

        let t = teacher.logits(b.inputs.clone().without_autodiff());
        let loss = kd.forward(alone.logits(b.inputs), t, b.targets);
        let grads = GradientsParams::from_grads(loss.backward(), &alone);
        alone = optim_alone.step(0.01, alone, grads);
    }
    assert_eq!(
        model.teacher.model().weights(),
        teacher_before,
        "teacher changed"
    );
    assert_ne!(
        model.student.weights(),
        student_before,
        "student did not train"
    );
    let (with_teacher, student_only) = (optim.to_record().len(), optim_alone.to_record().len());
    assert!(student_only > 0);
    assert_eq!(
        with_teacher, student_only,
        "optimizer state: {with_teacher} tensors, {student_only} for the student alone"
    );
    assert_close(
        "student after 3 steps vs by hand",
        &model.student.weights(),
        &alone.weights(),
        1e-5,
    );
}

#[test]
fn teacher_forward_records_no_autodiff_node() {
    let device = Device::flex().autodiff();
    let model = distiller(&device);
    let b = batch(4, 1, &device);
    let b = ClassificationBatch::new(b.inputs.require_grad(), b.targets);
    let out = TrainStep::step(&model, b.clone());
    assert!(out.item.loss.is_autodiff());
    let forwards = model.teacher.model().forwards();
    assert_eq!(forwards.len(), 1, "one teacher forward per step");
    assert!(
        !forwards[0].input_autodiff && !forwards[0].weights_autodiff,
        "the teacher ran on autodiff: {:?}",
        forwards[0]
    );
    let TeacherOutput::Logits(logits) = model.teacher.teach(&b, &device).unwrap() else {
        panic!("a live teacher gives logits")
    };
    assert!(!logits.is_autodiff() && !logits.is_tracked());
    // The probe can fail: the student itself runs on autodiff.
    let student = model.student.forwards();
    assert!(student[0].input_autodiff && student[0].weights_autodiff);
}

#[test]
fn a_step_equals_a_hand_written_step() {
    for (name, device) in crate::common::devices() {
        let device = device.autodiff();
        let model = distiller(&device);
        let b = batch(9, 5, &device);
        let kept = b.clone();
        let out = TrainStep::step(&model, b.clone());

        let student = model.student.clone();
        let teacher = model.teacher.model().clone();
        let t = teacher.logits(b.inputs.clone().without_autodiff());
        let loss = kd().forward(student.logits(b.inputs), t, b.targets);
        let grads = GradientsParams::from_grads(loss.backward(), &student);

        assert_close(
            &format!("{name}: loss"),
            &values(out.item.loss.clone()),
            &values(loss),
            1e-6,
        );
        let pairs = [
            (&student.hidden, &model.student.hidden),
            (&student.out, &model.student.out),
        ];
        for (layer, (by_hand, in_step)) in pairs.into_iter().enumerate() {
            assert_eq!(by_hand.weight.id, in_step.weight.id);
            let expected = grads.get::<2>(by_hand.weight.id).expect("hand gradient");
            let actual = out
                .grads
                .get::<2>(in_step.weight.id)
                .expect("step gradient");
            assert_close(
                &format!("{name}: layer {layer} weight gradient"),
                &values(actual),
                &values(expected),
                1e-6,
            );
            let bias = by_hand.bias.as_ref().unwrap().id;
            assert_close(
                &format!("{name}: layer {layer} bias gradient"),
                &values(out.grads.get::<1>(bias).unwrap()),
                &values(grads.get::<1>(bias).unwrap()),
                1e-6,
            );
        }
        // The parts: soft and hard as the loss reports them.
        let parts = kd().forward_parts(
            model.student.logits(kept.inputs.clone()),
            model.teacher.model().logits(kept.inputs.without_autodiff()),
            kept.targets,
        );
        assert_close(
            &format!("{name}: soft"),
            &values(out.item.soft.clone().unwrap()),
            &values(parts.soft),
            1e-6,
        );
        assert_close(
            &format!("{name}: hard"),
            &values(out.item.hard.clone()),
            &values(parts.hard),
            1e-6,
        );
    }
}

#[test]
fn checkpoint_round_trips_the_student_and_leaves_the_teacher_out() {
    let device = Device::flex().autodiff();
    let mut model = distiller(&device);
    let mut optim = SgdConfig::new().init();
    let out = TrainStep::step(&model, batch(8, 2, &device));
    model = model.optimize(&mut optim, 0.1_f64.into(), out.grads);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("distiller.bpk");
    model.clone().save_file(&path).unwrap();

    device.seed(99);
    let fresh = Distiller::new(
        Net::new(8, &device),
        FrozenTeacher::new(Net::new(16, &device)),
        kd(),
    );
    let fresh_teacher = fresh.teacher.model().weights();
    assert_ne!(fresh.student.weights(), model.student.weights());
    let loaded = fresh.load_file(&path);
    assert_eq!(loaded.student.weights(), model.student.weights());
    assert_eq!(
        loaded.teacher.model().weights(),
        fresh_teacher,
        "the teacher is not in the record: loading keeps the one given"
    );
    assert_eq!(loaded.loss.config().temperature, 3.0);
    // The file holds the student's parameters, not the teacher's: it is the
    // size of the student's own file, give or take the names, where the
    // teacher's values alone would add 4 bytes per parameter.
    let student_path = dir.path().join("student.bpk");
    model.student.clone().save_file(&student_path).unwrap();
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len() as usize;
    let (both, alone) = (size(&path), size(&student_path));
    let teacher_bytes = 4 * model.teacher.model().num_params();
    assert!(
        both < alone + teacher_bytes / 4,
        "distiller {both} bytes, student alone {alone}, teacher values {teacher_bytes}"
    );
}

/// Rows of a small synthetic data set, batched for the distiller.
#[derive(Clone)]
struct Rows;

impl Batcher<(Vec<f32>, i64), ClassificationBatch<Tensor<2>>> for Rows {
    fn batch(
        &self,
        items: Vec<(Vec<f32>, i64)>,
        device: &Device,
    ) -> ClassificationBatch<Tensor<2>> {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|(x, _)| x.clone()).collect();
        let y: Vec<i64> = items.iter().map(|(_, y)| *y).collect();
        ClassificationBatch::new(
            Tensor::from_data(TensorData::new(x, [n, FEATURES]), device),
            Tensor::from_data(TensorData::new(y, [n]), device),
        )
    }
}

fn dataset(n: usize, seed: u64) -> InMemDataset<(Vec<f32>, i64)> {
    let mut rng = crate::common::Rng::new(seed);
    InMemDataset::new(
        (0..n)
            .map(|i| {
                let x: Vec<f32> = (0..FEATURES).map(|_| rng.normal() as f32).collect();
                (x, (i % CLASSES) as i64)
            })
            .collect(),
    )
}

#[test]
fn learner_trains_checkpoints_and_resumes() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let loaders = || {
        (
            DataLoaderBuilder::new(Rows)
                .batch_size(16)
                .shuffle(3)
                .build(dataset(64, 1)),
            DataLoaderBuilder::new(Rows)
                .batch_size(16)
                .build(dataset(32, 2)),
        )
    };
    let model = distiller(&device);
    let teacher_before = model.teacher.model().weights();
    let (train, valid) = loaders();
    let result = SupervisedTraining::new(dir.path(), train, valid)
        .num_epochs(2)
        .with_default_checkpointers()
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(2))
        .with_metric_logger(InMemoryMetricLogger::new())
        .metric_train_numeric(LossMetric::new())
        .metric_train_numeric(DistillLossMetric::soft())
        .metric_train_numeric(DistillLossMetric::hard())
        .metric_train_numeric(AgreementMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_valid_numeric(AccuracyMetric::new())
        .metric_valid_numeric(AgreementMetric::new())
        .with_application_logger(None)
        .launch(Learner::new(model.clone(), AdamConfig::new().init(), 1e-2));
    let trained = result.model;
    assert_eq!(trained.teacher.model().weights(), teacher_before);
    assert_ne!(trained.student.weights(), model.student.weights());

    // A fresh distiller (other weights) restored from the last checkpoint:
    // the trained student, and its own teacher (none is in the checkpoint).
    device.seed(77);
    let fresh = Distiller::new(
        Net::new(8, &device),
        FrozenTeacher::new(Net::new(16, &device)),
        kd(),
    );
    let fresh_teacher = fresh.teacher.model().weights();
    let checkpoints = dir.path().join("checkpoint");
    let checkpointer = LearningCheckpointer::new(
        AsyncCheckpointer::new(FileCheckpointer::new(&checkpoints, "model")),
        AsyncCheckpointer::new(FileCheckpointer::new(&checkpoints, "optim")),
        AsyncCheckpointer::new(FileCheckpointer::new(&checkpoints, "scheduler")),
        Box::new(KeepLastNCheckpoints::new(2)),
    );
    let learner = Learner::new(fresh, AdamConfig::new().init(), 1e-2);
    let restored = checkpointer.load_checkpoint(learner, 2).model();
    assert_eq!(restored.student.weights(), trained.student.weights());
    assert_eq!(restored.teacher.model().weights(), fresh_teacher);
}

#[test]
#[allow(deprecated)] // Device::ndarray: deprecated in burn 0.22, still supported
fn fork_leaves_the_teacher_on_its_device() {
    let flex = Device::flex().autodiff();
    let ndarray = Device::ndarray();
    flex.seed(4);
    let student = Net::new(8, &flex);
    let teacher = Net::new(16, &ndarray);
    let model = Distiller::new(student, FrozenTeacher::new(teacher), kd());
    let forked = model.clone().fork(&ndarray.clone().autodiff());
    assert_eq!(forked.student.devices(), vec![ndarray.clone()]);
    assert_eq!(forked.teacher.model().devices(), vec![ndarray.clone()]);
    let on_flex = model.clone().fork(&flex);
    assert_eq!(on_flex.student.devices(), vec![flex.clone()]);
    assert_eq!(on_flex.teacher.model().devices(), vec![ndarray.clone()]);

    // Student on flex, teacher on ndarray: inputs go to the teacher's device,
    // its logits come back; the loss equals the one on a single device.
    let b = batch(6, 8, &flex);
    let out = TrainStep::step(&on_flex, b.clone());
    let seen = on_flex.teacher.model().forwards();
    assert_eq!(seen.last().unwrap().device, ndarray);
    let t = on_flex.teacher.model().clone().to_device(&Device::flex());
    let expected = kd().forward(
        on_flex.student.logits(b.inputs.clone()),
        t.logits(b.inputs.without_autodiff()),
        b.targets,
    );
    assert_close(
        "loss across devices",
        &values(out.item.loss),
        &values(expected),
        1e-5,
    );
}

#[test]
#[allow(deprecated)] // Device::ndarray
fn multi_device_learner_forks_the_student_and_not_the_teacher() {
    // burn-train's multi-device strategy forks the model to every device on
    // every step; on the CPU backends it needs no all-reduce. Students train
    // on flex and ndarray; the one teacher stays on flex and is never copied.
    let flex = Device::flex().autodiff();
    let ndarray = Device::ndarray().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let model = distiller(&flex);
    let teacher_before = model.teacher.model().weights();
    let train = DataLoaderBuilder::new(Rows)
        .batch_size(8)
        .build(dataset(64, 1));
    let valid = DataLoaderBuilder::new(Rows)
        .batch_size(8)
        .build(dataset(16, 2));
    let result = SupervisedTraining::new(dir.path(), train, valid)
        .num_epochs(1)
        .with_training_strategy(
            ExecutionStrategy::multi(
                vec![flex.clone(), ndarray.clone()],
                MultiDeviceOptim::OptimMainDevice,
            )
            .into(),
        )
        .with_metric_logger(InMemoryMetricLogger::new())
        .metric_train_numeric(LossMetric::new())
        .with_application_logger(None)
        .launch(Learner::new(model.clone(), AdamConfig::new().init(), 1e-2));
    let forwards = model.teacher.model().forwards();
    // 8 training batches and 2 validation batches, each through the one teacher.
    assert_eq!(forwards.len(), 10);
    assert!(
        forwards
            .iter()
            .all(|f| f.device == Device::flex() && !f.weights_autodiff)
    );
    let students = model.student.forwards();
    let on = |d: &Device| students.iter().filter(|f| f.device == *d).count();
    assert!(
        on(&flex) > 0 && on(&ndarray) > 0,
        "students ran on both devices"
    );
    assert_eq!(result.model.teacher.model().weights(), teacher_before);
    assert_ne!(result.model.student.weights(), model.student.weights());
}

#[test]
#[allow(deprecated)]
fn replicas_serve_each_device_its_own_teacher() {
    let flex = Device::flex();
    let ndarray = Device::ndarray();
    flex.seed(5);
    let teacher =
        FrozenTeacher::with_replicas(Net::new(16, &flex), &[flex.clone(), ndarray.clone()])
            .unwrap();
    assert_eq!(teacher.replicas().len(), 2);
    // No device to copy to: an error naming the argument, not a panic.
    let err = FrozenTeacher::with_replicas(Net::new(16, &flex), &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "devices = 0 is invalid: it must be at least 1 (the devices to copy the teacher to)"
    );
    for device in [&flex, &ndarray] {
        let b = batch(3, 1, &device.clone().autodiff());
        teacher.teach(&b, &device.clone().autodiff()).unwrap();
    }
    // Clones share the log: every replica's forwards are in it.
    let devices: Vec<Device> = teacher
        .model()
        .forwards()
        .into_iter()
        .map(|f| f.device)
        .collect();
    assert_eq!(devices, vec![flex.clone(), ndarray.clone()]);
    // Same weights on both devices: the same logits.
    let x = batch(3, 1, &flex).inputs;
    let a = values(teacher.replicas()[0].logits(x.clone()));
    let b = values(teacher.replicas()[1].logits(x.to_device(&ndarray)));
    assert_close("replicas", &b, &a, 1e-6);
}

#[test]
fn validation_without_the_teacher_reports_the_task_loss() {
    let device = Device::flex();
    let model = distiller(&device.clone().autodiff())
        .valid()
        .with_teacher_in_validation(false);
    let b = batch(10, 3, &device);
    let out = InferenceStep::step(&model, b.clone());
    assert!(out.soft.is_none() && out.teacher_top1.is_none());
    assert!(
        model.teacher.model().forwards().is_empty(),
        "the teacher ran"
    );
    // burn's own cross-entropy, independent of the crate.
    let ce = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(model.student.logits(b.inputs), b.targets);
    assert_close("validation loss = CE", &values(out.loss), &values(ce), 1e-6);

    let with_teacher = model.with_teacher_in_validation(true);
    let out = InferenceStep::step(&with_teacher, batch(10, 3, &device));
    assert!(out.soft.is_some());
}

#[test]
fn metrics_read_the_terms_and_the_agreement() {
    let device = Device::flex();
    let model = distiller(&device.clone().autodiff()).valid();
    let b = batch(20, 6, &device);
    let out = InferenceStep::step(&model, b.clone());
    let meta = MetricMetadata {
        progress: burn::data::dataloader::Progress::new(1, 1, None),
        iteration: Some(0),
        lr: None,
    };
    use burn::train::metric::{Adaptor, Numeric};
    let mut soft = DistillLossMetric::soft();
    soft.update(&out.adapt(), &meta).unwrap();
    assert_close(
        "soft metric",
        &[soft.value().unwrap().current()],
        &values(out.soft.clone().unwrap()),
        1e-6,
    );
    let mut agreement = AgreementMetric::new();
    agreement.update(&out.adapt(), &meta).unwrap();
    // By hand from the two models' logits.
    let argmax = |v: &[f64]| (0..CLASSES).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let s = values(model.student.logits(b.inputs.clone()));
    let t = values(model.teacher.model().logits(b.inputs));
    let same = (0..20)
        .filter(|&r| argmax(&s[r * CLASSES..][..CLASSES]) == argmax(&t[r * CLASSES..][..CLASSES]))
        .count();
    assert_close(
        "agreement",
        &[agreement.value().unwrap().current()],
        &[100.0 * same as f64 / 20.0],
        1e-9,
    );
    // Over an epoch the terms average by rows: 20 rows then 5.
    let small = InferenceStep::step(&model, batch(5, 7, &device));
    let mut hard = DistillLossMetric::hard();
    hard.update(&out.adapt(), &meta).unwrap();
    hard.update(&small.adapt(), &meta).unwrap();
    let (h20, h5) = (values(out.hard.clone())[0], values(small.hard.clone())[0]);
    assert_close(
        "hard metric, epoch mean",
        &[hard.running_value().unwrap().current()],
        &[(20.0 * h20 + 5.0 * h5) / 25.0],
        1e-6,
    );
    // Without the teacher: not available, and nothing accumulated.
    let blind = model.with_teacher_in_validation(false);
    let out = InferenceStep::step(&blind, batch(20, 6, &device));
    let mut agreement = AgreementMetric::new();
    assert!(
        agreement
            .update(&out.adapt(), &meta)
            .unwrap()
            .is_not_available()
    );
    assert!(agreement.value().is_none());
}

#[cfg(feature = "store")]
#[test]
fn a_stored_teacher_serves_the_batch_by_example_index() {
    use burn_distill::store::{StorePrecision, TeacherStore, TeacherStoreConfig};
    use burn_distill::train::StoredTeacher;

    let device = Device::flex().autodiff();
    let model = distiller(&device);
    let teacher = model.teacher.model().clone();
    // The teacher's logits on a 10-example data set, stored with every class
    // (k = classes) in f32: the stored teacher is then the live one.
    let all = batch(10, 9, &Device::flex());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("teacher.kds");
    let mut writer = TeacherStoreConfig::new(CLASSES, CLASSES, 3.0)
        .with_precision(StorePrecision::F32)
        .create(&path)
        .unwrap();
    writer
        .append_logits(teacher.logits(all.inputs.clone()))
        .unwrap();
    writer.finish().unwrap();

    let wrong = KdLossConfig::new().with_temperature(1.0).init();
    let error = StoredTeacher::new(TeacherStore::open(&path).unwrap(), &wrong).unwrap_err();
    assert!(error.to_string().contains("temperature"), "{error}");

    let stored = StoredTeacher::new(TeacherStore::open(&path).unwrap(), &kd()).unwrap();
    let offline = Distiller::new(model.student.clone(), stored, kd());
    // Rows 7, 2, 4 of the data set, in that order.
    let rows = [7usize, 2, 4];
    let pick = |t: Tensor<2>| t.select(0, Tensor::<1, Int>::from_ints(rows, &Device::flex()));
    let inputs = pick(all.inputs.clone()).to_device(&device);
    let targets = all
        .targets
        .clone()
        .select(0, Tensor::<1, Int>::from_ints(rows, &Device::flex()));
    let b =
        ClassificationBatch::new(inputs, targets.to_device(&device)).with_examples(rows.to_vec());
    let out = TrainStep::step(&offline, b.clone());
    let live = TrainStep::step(&model, b.clone());
    assert_close(
        "stored vs live loss",
        &values(out.item.loss),
        &values(live.item.loss),
        1e-5,
    );
    assert_eq!(
        values(out.item.teacher_top1.unwrap().float()),
        values(live.item.teacher_top1.unwrap().float())
    );

    let unindexed = ClassificationBatch::new(b.inputs.clone(), b.targets.clone());
    let error = offline.teacher.teach(&unindexed, &device).unwrap_err();
    assert!(error.to_string().contains("batch.examples"), "{error}");
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        TrainStep::step(&offline, unindexed).item.loss
    }))
    .unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("teacher source failed") && message.contains("0"),
        "{message}"
    );
}
