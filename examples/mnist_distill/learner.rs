//! `--learner`: the distillation run through burn's own training loop —
//! burn-train's `Learner` and `SupervisedTraining`, burn's `DataLoaderBuilder`
//! over a burn `Dataset` of the images — with `burn_distill::train::Distiller`
//! as the model.
//! Same student initialisation, loss, optimiser, learning-rate schedule,
//! batch size and epochs as the hand-written loop in `train.rs`; only the
//! shuffling differs (burn's dataloader draws its own order).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{AccuracyMetric, LossMetric, MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use burn::train::{Learner, SupervisedTraining};
use burn_distill::KdLoss;
use burn_distill::feature::FeatureTerms;
use burn_distill::train::{
    AgreementMetric, ClassificationBatch, Classifier, DistillLossMetric, Distiller,
    FeatureLossMetric, FrozenTeacher, StoredTeacher, TeacherSource,
};

use crate::data::{PIXELS, Split};
use crate::model::Mlp;
use crate::train::{self, EpochRecord, TrainSettings};

impl Classifier for Mlp {
    type Input = Tensor<2>;

    fn logits(&self, inputs: Tensor<2>) -> Tensor<2> {
        self.forward(inputs)
    }
}

/// Where the Learner run's teacher comes from.
pub enum Teacher<'a> {
    /// The live teacher (evaluation mode), run on every batch.
    Live(&'a Mlp),
    /// Its top-k outputs read back from a teacher store by example index.
    Stored(StoredTeacher),
}

/// Trains a copy of `init` by distillation through burn's Learner on the
/// `train` images (validation: the `test` images, for watching only) and
/// returns it with its per-epoch history.
#[allow(clippy::too_many_arguments)]
pub fn distill(
    init: &Mlp,
    teacher: Teacher<'_>,
    loss: &KdLoss,
    settings: &TrainSettings,
    train: &Split,
    test: &Split,
    out: &std::path::Path,
    device: &Device,
) -> (Mlp, Vec<EpochRecord>) {
    let run = Run {
        settings,
        train,
        test,
        out,
        device,
    };
    let student = init.clone();
    match teacher {
        Teacher::Live(teacher) => run.launch(
            Distiller::new(student, FrozenTeacher::new(teacher.clone()), loss.clone()),
            &[],
        ),
        // The store holds the teacher on the training images only.
        Teacher::Stored(store) => run.launch(
            Distiller::new(student, store, loss.clone()).with_teacher_in_validation(false),
            &[],
        ),
    }
}

/// What a Learner run is given besides the distiller.
pub struct Run<'a> {
    pub settings: &'a TrainSettings,
    pub train: &'a Split,
    pub test: &'a Split,
    pub out: &'a std::path::Path,
    pub device: &'a Device,
}

impl Run<'_> {
    /// Trains the distiller's student; `feature_terms` names its feature
    /// terms, each reported as a metric and on the epoch lines.
    pub fn launch<S, T, F>(
        &self,
        distiller: Distiller<S, T, KdLoss, F>,
        feature_terms: &[String],
    ) -> (S, Vec<EpochRecord>)
    where
        S: Classifier<Input = Tensor<2>>,
        T: TeacherSource<Tensor<2>>,
        F: FeatureTerms,
    {
        let Run {
            settings,
            train,
            test,
            out,
            device,
        } = *self;
        let steps = settings.epochs * train.len().div_ceil(settings.batch);
        let loader_train = DataLoaderBuilder::new(MnistBatcher)
            .batch_size(settings.batch)
            .shuffle(settings.seed)
            .set_device(device.clone())
            .build(Digits(train.clone()));
        let loader_valid = DataLoaderBuilder::new(MnistBatcher)
            .batch_size(1000)
            .set_device(device.clone())
            .build(Digits(test.clone()));
        let scheduler = CosineAnnealingLrSchedulerConfig::new(settings.lr, steps)
            .init()
            .expect("a learning rate in (0, 1]");
        let learner = Learner::new(distiller, AdamConfig::new().init(), scheduler);

        let history = Arc::new(Mutex::new(Vec::new()));
        let mut training = SupervisedTraining::new(out.join("learner"), loader_train, loader_valid)
            .num_epochs(settings.epochs)
            .metric_train_numeric(LossMetric::new())
            .metric_train_numeric(DistillLossMetric::soft())
            .metric_train_numeric(DistillLossMetric::hard())
            .metric_train_numeric(AgreementMetric::new())
            .metric_train_numeric(AccuracyMetric::new())
            .metric_valid_numeric(LossMetric::new())
            .metric_valid_numeric(AgreementMetric::new())
            .metric_valid_numeric(AccuracyMetric::new())
            .with_application_logger(None);
        for term in feature_terms {
            training = training.metric_train_numeric(FeatureLossMetric::new(term.clone()));
        }
        let training = match dashboard(&training) {
            Some(renderer) => training.renderer(renderer),
            None => training.renderer(Box::new(EpochLines::new(
                settings.epochs,
                test.len(),
                feature_terms.to_vec(),
                history.clone(),
            ))),
        };
        let result = training.launch(learner);
        let student = result.model.student;
        let history = history.lock().expect("history").clone();
        (student, history)
    }
}

/// burn-train's terminal dashboard when the `tui` feature is on and stdout is
/// a terminal; otherwise `None` (one plain line per epoch instead).
#[cfg(feature = "tui")]
fn dashboard<M: burn::train::LearnerModel>(
    training: &SupervisedTraining<M>,
) -> Option<Box<dyn MetricsRenderer>> {
    use std::io::IsTerminal;
    std::io::stdout()
        .is_terminal()
        .then(|| burn::train::renderer::default_renderer(training.interrupter(), None))
}

#[cfg(not(feature = "tui"))]
fn dashboard<M: burn::train::LearnerModel>(
    _training: &SupervisedTraining<M>,
) -> Option<Box<dyn MetricsRenderer>> {
    None
}

/// A split as a burn `Dataset` of (index, pixels in [0, 1], label): the
/// index is what a stored teacher reads its rows by.
struct Digits(Split);

/// One image of [`Digits`].
#[derive(Clone, Debug)]
struct Digit {
    index: usize,
    pixels: Vec<f32>,
    label: u8,
}

impl Dataset<Digit> for Digits {
    fn get(&self, index: usize) -> Result<Digit, DatasetError> {
        // burn's convention: an index past the end panics, as slices do.
        Ok(Digit {
            index,
            pixels: self.0.images[index * PIXELS..(index + 1) * PIXELS].to_vec(),
            label: self.0.labels[index],
        })
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Stacks [`Digit`]s into `[batch, 784]` pixels (as the hand-written loop's
/// data) with labels and example indices.
#[derive(Clone)]
struct MnistBatcher;

impl Batcher<Digit, ClassificationBatch<Tensor<2>>> for MnistBatcher {
    fn batch(&self, items: Vec<Digit>, device: &Device) -> ClassificationBatch<Tensor<2>> {
        let n = items.len();
        let pixels: Vec<f32> = items
            .iter()
            .flat_map(|item| item.pixels.iter().copied())
            .collect();
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        ClassificationBatch::new(
            Tensor::from_data(TensorData::new(pixels, [n, PIXELS]), device),
            Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), device),
        )
        .with_examples(items.iter().map(|item| item.index).collect())
    }
}

/// Plain-text progress: one line per epoch with the epoch's training and
/// validation metrics (burn's own plain renderer prints every batch), and the
/// epoch records for the JSON report.
struct EpochLines {
    epochs: usize,
    test_rows: usize,
    /// The feature terms' names, whose metrics the lines add.
    feature_terms: Vec<String>,
    names: HashMap<MetricId, String>,
    /// (split, metric name) → (weighted sum, count) over the current epoch.
    sums: HashMap<(String, String), (f64, usize)>,
    split: String,
    epoch: usize,
    started: Instant,
    history: Arc<Mutex<Vec<EpochRecord>>>,
}

impl EpochLines {
    fn new(
        epochs: usize,
        test_rows: usize,
        feature_terms: Vec<String>,
        history: Arc<Mutex<Vec<EpochRecord>>>,
    ) -> Self {
        Self {
            epochs,
            test_rows,
            feature_terms,
            names: HashMap::new(),
            sums: HashMap::new(),
            split: String::new(),
            epoch: 0,
            started: Instant::now(),
            history,
        }
    }

    fn record(&mut self, state: MetricState) {
        let MetricState::Numeric(entry, Some(value)) = state else {
            return;
        };
        let (value, count) = match value {
            NumericEntry::Value(v) => (v, 1),
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            } => (aggregated_value, count),
            NumericEntry::Final(_) => return,
        };
        if !value.is_finite() || count == 0 {
            return;
        }
        let name = self
            .names
            .get(&entry.metric_id)
            .cloned()
            .unwrap_or_default();
        let sum = self.sums.entry((self.split.clone(), name)).or_default();
        sum.0 += value * count as f64;
        sum.1 += count;
    }

    fn mean(&self, split: &str, name: &str) -> Option<f64> {
        self.sums
            .get(&(split.to_string(), name.to_string()))
            .map(|&(sum, count)| sum / count as f64)
    }

    fn epoch_done(&mut self) {
        self.epoch += 1;
        let seconds = self.started.elapsed().as_secs_f64();
        let f = |v: Option<f64>, digits: usize| v.map_or("n/a".into(), |v| format!("{v:.digits$}"));
        let valid_accuracy = self.mean("valid", "Accuracy");
        let test_errors = valid_accuracy.map_or(0, |a| {
            ((100.0 - a) / 100.0 * self.test_rows as f64).round() as usize
        });
        let features: String = self
            .feature_terms
            .iter()
            .map(|term| {
                let value = self.mean("train", &format!("Feature loss ({term})"));
                format!(", {term} {}", f(value, 4))
            })
            .collect();
        println!(
            "  [learner] epoch {:3}/{}  loss {} (soft {}, hard {}{features})  agreement {}%  \
             train acc {}%  test errors {:5}/{}  {:6.0} s",
            self.epoch,
            self.epochs,
            f(self.mean("train", "Loss"), 4),
            f(self.mean("train", "Soft loss"), 4),
            f(self.mean("train", "Hard loss"), 4),
            f(self.mean("train", "Teacher agreement"), 2),
            f(self.mean("train", "Accuracy"), 2),
            test_errors,
            self.test_rows,
            seconds,
        );
        self.history.lock().expect("history").push(EpochRecord {
            epoch: self.epoch,
            mean_loss: self.mean("train", "Loss").unwrap_or(f64::NAN),
            train_accuracy: self.mean("train", "Accuracy").unwrap_or(f64::NAN) / 100.0,
            test_errors,
            seconds,
        });
        self.sums.clear();
    }
}

impl MetricsRendererTraining for EpochLines {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }
}

impl MetricsRendererEvaluation for EpochLines {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl TrainingProgressLogger for EpochLines {
    fn start(
        &mut self,
        _epochs: usize,
        _start: usize,
        _items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.started = Instant::now();
    }

    fn update_epoch(&mut self, _epoch: usize) {}

    fn start_split(&mut self, split: &str, _total_items: usize) {
        self.split = split.to_string();
    }

    fn update_split(&mut self, _items_processed: usize) {}

    fn end_split(&mut self) {
        if self.split == "valid" {
            self.epoch_done();
        }
    }

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for EpochLines {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for EpochLines {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }
}

/// The errors of `student` on `test` (as the hand-written runs are scored).
pub fn test_errors(student: &Mlp, test: &Split) -> usize {
    train::errors(&student.valid(), test, None)
}
