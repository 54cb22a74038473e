//! Distil a tiny GPT on a real English corpus, end to end, through burn's
//! Learner: a 4-layer teacher trained here (and cached) on the Brown corpus,
//! a 2-layer student of half its width, and one row per way of distilling —
//! hard labels only, dense KD with forward KL, reverse KL and JSD, forward KL
//! with a hidden-state cosine term (DistilBERT's) beside it, the same
//! through `FusedLinearKdLoss` from hidden states, a top-k teacher store at
//! k = 8 and k = 64, on-policy GKD and sequence-level KD — each from the same
//! student initialisation over the same data order. Then a student with
//! another tokenizer (byte-pair pieces learned from the training split)
//! distilled from the word-level teacher by ULD and by GOLD (`cross`), every
//! row also scored in bits per byte of one text, a unit both tokenizers share.
//!
//! ```text
//! cargo run --release --example lm_distill -- --quick    # every row on a slice
//! cargo run --release --example lm_distill               # the full plan
//! ```
//!
//! Prints the table and writes `lm_distill.json` and `lm_distill.png`
//! (validation perplexity over steps) to `--out`.

mod bpe;
mod cross;
mod data;
mod model;
mod report;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::AdamConfig;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn::train::{InferenceStep, Learner};
use burn_distill::feature::{FeatureTerm, FeatureTerms, HiddenStateLossConfig, NoFeatures};
use burn_distill::lm::{CausalLm, SamplerConfig, TokenBatch, generate};
use burn_distill::store::{StorePrecision, TeacherStore, TeacherStoreConfig};
use burn_distill::train::{
    Completions, FrozenTeacher, LmDistiller, LmLoss, LmTeacherSource, StoredTeacher,
};
use burn_distill::{
    DistillError, Divergence, FusedLinearKdLossConfig, KdLossConfig, TeacherOutput,
};
use clap::{Parser, ValueEnum};

use data::{BOS, EOS, PAD, Vocab};
use model::{Gpt, GptConfig};
use report::{Report, Row};

/// Counts the bytes the process holds, and the most it has held since the
/// last reset: a row's peak memory on the CPU backends.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes held now; the peak restarts from here.
fn reset_peak() -> usize {
    let now = CURRENT.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

#[derive(Parser, Debug)]
#[command(about = "Distil a tiny GPT on the Brown corpus through burn's Learner")]
struct Cli {
    /// Every row on a slice of the data with small models (about a minute once built).
    #[arg(long)]
    quick: bool,
    /// Backend to train on.
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    backend: Backend,
    /// Where the table, JSON and PNG go.
    #[arg(long, default_value = "lm_distill_out")]
    out: PathBuf,
    /// The corpus, the teacher and the stores are cached here
    /// (default: <user cache>/burn-distill/brown).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Train the teacher even if a cached one exists.
    #[arg(long)]
    retrain_teacher: bool,
    /// Seed of the data order and of the student's initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training steps of the teacher (default: the plan's).
    #[arg(long)]
    teacher_steps: Option<usize>,
    /// Training steps of each student row (default: the plan's).
    #[arg(long)]
    student_steps: Option<usize>,
    /// Run only the student rows of these names (comma-separated, as the
    /// table prints them, e.g. `--only "hard (seed 0),dense FKL"`); the
    /// teacher is trained or loaded as always. Default: every row.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Trains nothing: prints the table of a JSON written earlier and draws
    /// its figure again, into `--out`.
    #[arg(long, value_name = "JSON")]
    plot: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, serde::Serialize)]
enum Backend {
    Flex,
    Ndarray,
    Wgpu,
}

impl Backend {
    fn device(self) -> Result<Device, String> {
        Ok(match self {
            Backend::Flex => Device::flex(),
            #[allow(deprecated)] // ndarray is deprecated in burn 0.22, still supported
            Backend::Ndarray => Device::ndarray(),
            Backend::Wgpu => wgpu_device()?,
        })
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device, String> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device, String> {
    Err("--backend wgpu needs the crate's `wgpu` feature: \
         cargo run --release --features wgpu --example lm_distill"
        .into())
}

/// Sizes of a full or a `--quick` run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub vocab: usize,
    pub context: usize,
    pub teacher: ModelSize,
    pub student: ModelSize,
    pub batch: usize,
    pub teacher_steps: usize,
    pub student_steps: usize,
    pub lr: f64,
    pub eval_every: usize,
    pub valid_sequences: usize,
    pub test_sequences: usize,
    /// Prompt tokens (with `<s>`) for GKD and sequence-level KD.
    pub prompt: usize,
    /// Teacher completions sampled once for sequence-level KD.
    pub seq_kd_sequences: usize,
    pub micro_batch: usize,
    /// The byte-pair student's vocabulary and context (the cross-tokenizer
    /// rows).
    #[serde(default)]
    pub bpe_vocab: usize,
    #[serde(default)]
    pub bpe_context: usize,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModelSize {
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                vocab: 512,
                context: 24,
                teacher: ModelSize {
                    d_model: 32,
                    n_heads: 2,
                    n_layers: 2,
                },
                student: ModelSize {
                    d_model: 16,
                    n_heads: 2,
                    n_layers: 2,
                },
                batch: 16,
                teacher_steps: 60,
                student_steps: 20,
                lr: 3e-3,
                eval_every: 10,
                valid_sequences: 64,
                test_sequences: 128,
                prompt: 4,
                seq_kd_sequences: 64,
                micro_batch: 8,
                bpe_vocab: 256,
                bpe_context: 48,
            }
        } else {
            Self {
                vocab: 4096,
                context: 32,
                teacher: ModelSize {
                    d_model: 128,
                    n_heads: 4,
                    n_layers: 4,
                },
                student: ModelSize {
                    d_model: 64,
                    n_heads: 2,
                    n_layers: 2,
                },
                batch: 32,
                teacher_steps: 3000,
                // 1,000 steps (32,000 of the 51,634 training sentences): the
                // full run took 61:57 on 2 cores with the teacher trained and
                // 37:31 with it cached; at 1,500 steps, 67:27.
                student_steps: 1000,
                lr: 1e-3,
                eval_every: 100,
                valid_sequences: 512,
                test_sequences: 4096,
                prompt: 4,
                seq_kd_sequences: 8192,
                micro_batch: 16,
                bpe_vocab: 1024,
                bpe_context: 64,
            }
        }
    }

    fn config(&self, size: &ModelSize, dropout: f64) -> GptConfig {
        Self::config_over(self.vocab, self.context, size, dropout)
    }

    /// A model of `size` over a vocabulary of `vocab` and `context` tokens
    /// (the byte-pair student's differ from the plan's word-level ones).
    fn config_over(vocab: usize, context: usize, size: &ModelSize, dropout: f64) -> GptConfig {
        GptConfig::new(vocab, context, size.d_model, size.n_heads, size.n_layers)
            .with_dropout(dropout)
    }

    /// What the teacher's weights depend on (its model, data, schedule and
    /// seed), not the students' plan: it names the cached teacher and the
    /// stores made from it, so changing a student setting keeps the cache.
    fn teacher_key(&self, seed: u64) -> String {
        format!(
            "{:?} vocab {} batch {} steps {} lr {} micro-batch {} seed {seed}",
            self.config(&self.teacher, 0.1),
            self.vocab,
            self.batch,
            self.teacher_steps,
            self.lr,
            self.micro_batch,
        )
    }
}

/// Sequences padded to the context, as batches.
struct Sequences {
    rows: Vec<Vec<usize>>,
    context: usize,
}

impl Sequences {
    /// Sequences `start..start + n` (cycling), as a batch with examples
    /// `start..start + n` (modulo the count) and a prompt mask of `prompt`
    /// tokens when given.
    fn batch(&self, start: usize, n: usize, prompt: Option<usize>, device: &Device) -> TokenBatch {
        let count = self.rows.len();
        let examples: Vec<usize> = (start..start + n).map(|i| i % count).collect();
        let mut tokens = Vec::with_capacity(n * self.context);
        let mut padding = Vec::with_capacity(n * self.context);
        let mut prompts = Vec::with_capacity(n * self.context);
        for &e in &examples {
            let row = &self.rows[e];
            for t in 0..self.context {
                tokens.push(row.get(t).map_or(PAD as i64, |&id| id as i64));
                padding.push(t >= row.len());
                prompts.push(prompt.is_some_and(|p| t < p.min(row.len() - 1)));
            }
        }
        let shape = [n, self.context];
        let mut batch = TokenBatch::new(Tensor::<2, Int>::from_data(
            TensorData::new(tokens, shape),
            device,
        ))
        .with_padding_mask(Tensor::<2, Bool>::from_data(
            TensorData::new(padding, shape),
            device,
        ))
        .with_examples(examples);
        if prompt.is_some() {
            batch = batch.with_prompt_mask(Tensor::<2, Bool>::from_data(
                TensorData::new(prompts, shape),
                device,
            ));
        }
        batch
    }
}

/// A teacher that is never consulted: the hard-label rows (soft weight 0)
/// get uniform logits, so no teacher model runs for them.
#[derive(Clone, Debug)]
pub struct NoTeacher {
    pub vocab: usize,
}

impl LmTeacherSource for NoTeacher {
    fn teach(&self, batch: &TokenBatch, device: &Device) -> Result<TeacherOutput<3>, DistillError> {
        let [b, s] = batch.dims();
        Ok(TeacherOutput::Logits(Tensor::zeros(
            [b, s, self.vocab],
            &device.clone().without_autodiff(),
        )))
    }
}

/// The data of a run: the splits encoded, the training order fixed.
struct Data {
    train: Sequences,
    valid: Sequences,
    test: Sequences,
    vocab: Vocab,
    unknown_rate: f64,
    /// The same sentences under the word-level and the byte-pair tokenizer.
    cross: cross::CrossData,
}

fn prepare(cache: &Path, plan: &Plan, seed: u64) -> Result<Data, String> {
    let corpus = data::load(cache)?;
    let splits = corpus.splits();
    let vocab = Vocab::build(&splits.train, plan.vocab);
    let unknown_rate = vocab.unknown_rate(&splits.test);
    let ids = |sentences: &[Vec<String>]| -> Vec<Vec<usize>> {
        sentences
            .iter()
            .map(|s| s.iter().map(|w| vocab.id(w)).collect())
            .collect()
    };
    let mut train = ids(&splits.train);
    // One fixed order for every row (Fisher–Yates, SplitMix64 by the seed).
    let mut state = seed ^ 0x5EED;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..train.len()).rev() {
        train.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    let mut valid = ids(&splits.valid);
    valid.truncate(plan.valid_sequences);
    let mut test = ids(&splits.test);
    test.truncate(plan.test_sequences);
    let context = plan.context;
    let encode = |sentences: &[Vec<usize>]| -> Vec<Vec<usize>> {
        sentences
            .iter()
            .map(|s| vocab.encode_ids(s, context))
            .collect()
    };
    println!(
        "corpus: {} / {} / {} sentences (train / validation / test); vocabulary {} words, {:.1}% of test words unknown",
        train.len(),
        valid.len(),
        test.len(),
        vocab.len(),
        100.0 * unknown_rate
    );
    let cross = cross::CrossData::new(
        &vocab,
        [&train, &valid, &test],
        plan.bpe_vocab,
        context,
        plan.bpe_context,
    )?;
    Ok(Data {
        train: Sequences {
            rows: encode(&train),
            context,
        },
        valid: Sequences {
            rows: encode(&valid),
            context,
        },
        test: Sequences {
            rows: encode(&test),
            context,
        },
        vocab,
        unknown_rate,
        cross,
    })
}

/// Perplexity of `model` over `set`, and its top-1 agreement with `teacher`
/// (in %), over the counted tokens.
fn evaluate(
    model: &Gpt,
    teacher: Option<&Gpt>,
    set: &Sequences,
    device: &Device,
) -> (f64, Option<f64>) {
    let model = model.valid();
    let mut nll = 0.0;
    let mut tokens = 0usize;
    let mut same = 0usize;
    let batch = 64;
    let kd = KdLossConfig::new().with_temperature(1.0).init();
    for start in (0..set.rows.len()).step_by(batch) {
        let n = batch.min(set.rows.len() - start);
        let batch = set.batch(start, n, None, device);
        let (log_probs, counted, student, agreeing) = match teacher {
            Some(teacher) => {
                let distiller = LmDistiller::new(
                    model.clone(),
                    FrozenTeacher::new(teacher.clone()),
                    kd.clone(),
                );
                let out = InferenceStep::step(&distiller, batch);
                (
                    out.token_log_probs,
                    out.counted,
                    out.student_top1,
                    out.teacher_top1,
                )
            }
            None => {
                let distiller = LmDistiller::new(model.clone(), NoTeacher { vocab: 1 }, kd.clone())
                    .with_teacher_in_validation(false);
                let out = InferenceStep::step(&distiller, batch);
                (out.token_log_probs, out.counted, out.student_top1, None)
            }
        };
        let counted: Vec<bool> = counted.into_data().iter::<bool>().collect();
        let log_probs: Vec<f64> = log_probs.into_data().iter::<f64>().collect();
        for (lp, c) in log_probs.iter().zip(&counted) {
            if *c {
                nll -= lp;
                tokens += 1;
            }
        }
        if let Some(teacher_top1) = agreeing {
            let s: Vec<i64> = student.into_data().iter::<i64>().collect();
            let t: Vec<i64> = teacher_top1.into_data().iter::<i64>().collect();
            same += (0..s.len()).filter(|&i| counted[i] && s[i] == t[i]).count();
        }
    }
    let perplexity = (nll / tokens.max(1) as f64).exp();
    (
        perplexity,
        teacher.map(|_| 100.0 * same as f64 / tokens.max(1) as f64),
    )
}

/// Trains `student` through burn's Learner with `loss` against `teacher`
/// over `plan.student_steps` batches of `stream` (from sequence 0, in
/// order); validation perplexity every `eval_every` steps.
/// What every row shares: the plan, the data, the teacher it is compared
/// with (none for the teacher itself), the device and its training steps.
struct Run<'a> {
    plan: &'a Plan,
    data: &'a Data,
    teacher: Option<&'a Gpt>,
    device: &'a Device,
    steps: usize,
    /// The rows to run (`--only`); empty: all.
    only: &'a [String],
}

impl Run<'_> {
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|n| n == name)
    }
}

/// What [`distil`] returns for a row `--only` leaves out.
const SKIPPED: &str = "row skipped by --only";

#[allow(clippy::too_many_arguments)]
fn distil<T: LmTeacherSource, L: LmLoss>(
    run: &Run,
    name: &str,
    what: &str,
    student: Gpt,
    teacher_source: T,
    loss: L,
    completions: Completions,
    stream: &Sequences,
    prompt: Option<usize>,
) -> Result<(Gpt, Row), String> {
    distil_with_features(
        run,
        name,
        what,
        student,
        teacher_source,
        loss,
        NoFeatures,
        completions,
        stream,
        prompt,
    )
}

/// [`distil`] with feature terms beside the loss.
#[allow(clippy::too_many_arguments)]
fn distil_with_features<T: LmTeacherSource, L: LmLoss, F: FeatureTerms>(
    run: &Run,
    name: &str,
    what: &str,
    student: Gpt,
    teacher_source: T,
    loss: L,
    features: F,
    completions: Completions,
    stream: &Sequences,
    prompt: Option<usize>,
) -> Result<(Gpt, Row), String> {
    if !run.wants(name) {
        return Err(SKIPPED.into());
    }
    let Run {
        plan,
        data,
        teacher,
        device,
        steps,
        ..
    } = *run;
    let mut seconds = 0.0;
    let mut peak = 0usize;
    let distiller = LmDistiller::new(student, teacher_source, loss)
        .with_features(features)
        .with_micro_batch(plan.micro_batch)
        .with_completions(completions)
        .map_err(|e| e.to_string())?;
    let mut learner = Learner::new(distiller, AdamConfig::new().init(), plan.lr);
    let mut validation = Vec::new();
    let mut on_policy = 0;
    for step in 0..steps {
        let batch = stream.batch(step * plan.batch, plan.batch, prompt, device);
        // The time of the training step alone (sampling, teacher, student,
        // loss, backward, optimiser), without the evaluations; the memory of
        // its forward and backward (the optimiser's is the same in every row).
        let start = Instant::now();
        let base = reset_peak();
        let out = learner.train_step(batch);
        peak = peak.max(PEAK.load(Ordering::Relaxed).saturating_sub(base));
        on_policy += usize::from(out.item.on_policy);
        learner.lr_step();
        learner.optimizer_step(out.grads);
        seconds += start.elapsed().as_secs_f64();
        if (step + 1) % plan.eval_every == 0 || step + 1 == steps {
            let (perplexity, _) = evaluate(&learner.model().student, None, &data.valid, device);
            validation.push((step + 1, perplexity));
        }
    }
    let student = learner.model().student;
    let (test_perplexity, agreement) = evaluate(&student, teacher, &data.test, device);
    let (_, bits_per_byte) =
        cross::text_scores(&student, &data.cross.test, cross::Side::Words, device);
    let row = Row {
        name: name.into(),
        what: what.into(),
        test_perplexity,
        agreement,
        bits_per_byte: Some(bits_per_byte),
        seconds,
        peak_bytes: peak,
        on_policy_steps: on_policy,
        validation,
    };
    println!("{}", row.line());
    Ok((student, row))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The teacher: loaded from the cache, or trained on hard labels and saved,
/// under `key` ([`Plan::teacher_key`]).
fn teacher(
    cli: &Cli,
    key: &str,
    plan: &Plan,
    data: &Data,
    cache: &Path,
    device: &Device,
) -> Result<(Gpt, Row), String> {
    let config = plan.config(&plan.teacher, 0.1);
    let path = cache.join(format!("teacher-{:016x}.bpk", fnv1a(key.as_bytes())));
    device.seed(cli.seed ^ 0x7EAC);
    let mut model = config.init(device);
    if path.exists() && !cli.retrain_teacher {
        let mut store = BurnpackStore::from_file(&path);
        model
            .load_from(&mut store)
            .map_err(|e| format!("teacher {}: {e:?} (delete it to retrain)", path.display()))?;
        println!(
            "teacher: loaded {} (--retrain-teacher to train anew)",
            path.display()
        );
        let (test_perplexity, _) = evaluate(&model, None, &data.test, device);
        let (_, bits_per_byte) =
            cross::text_scores(&model, &data.cross.test, cross::Side::Words, device);
        let row = Row::teacher(test_perplexity, bits_per_byte, 0.0, 0, Vec::new());
        println!("{}", row.line());
        return Ok((model.valid(), row));
    }
    println!(
        "teacher: training {} parameters for {} steps",
        config.parameters(),
        plan.teacher_steps
    );
    let hard = KdLossConfig::new()
        .with_soft_weight(0.0)
        .with_hard_weight(1.0)
        .init();
    let (model, mut row) = distil(
        &Run {
            plan,
            data,
            teacher: None,
            device,
            steps: plan.teacher_steps,
            only: &[],
        },
        "teacher",
        "hard labels",
        model,
        NoTeacher { vocab: plan.vocab },
        hard,
        Completions::Data,
        &data.train,
        None,
    )?;
    row.what = "hard labels".into();
    let tmp = path.with_extension("bpk.partial");
    let mut store = BurnpackStore::from_file(&tmp)
        .auto_extension(false)
        .overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| format!("saving {}: {e:?}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("saving {}: {e}", path.display()))?;
    println!("teacher: saved {}", path.display());
    Ok((model.valid(), row))
}

/// A top-k store of the teacher over the first `sequences` of the training
/// stream, one example per sequence (all its positions), cached.
fn store(
    teacher: &Gpt,
    data: &Data,
    sequences: usize,
    k: usize,
    cache: &Path,
    key: &str,
    device: &Device,
) -> Result<TeacherStore, String> {
    let config = TeacherStoreConfig::new(data.vocab.len(), k, 1.0)
        .with_precision(StorePrecision::F16)
        .with_teacher(format!("lm_distill teacher {:016x}", fnv1a(key.as_bytes())))
        .with_dataset_fingerprint(format!("training stream, first {sequences} sequences"));
    let path = cache.join(format!(
        "store-k{k}-{:016x}.bds",
        fnv1a(format!("{key} {sequences}").as_bytes())
    ));
    if let Ok(store) = TeacherStore::open_matching(&path, &config) {
        return Ok(store);
    }
    let mut writer = config.create(&path).map_err(|e| e.to_string())?;
    let start = Instant::now();
    for first in (0..sequences).step_by(64) {
        let n = 64.min(sequences - first);
        let batch = data.train.batch(first, n, None, device);
        let logits = teacher.logits(batch.tokens, None);
        for s in 0..n {
            let rows = logits
                .clone()
                .slice(s..s + 1)
                .reshape([data.train.context, data.vocab.len()]);
            writer
                .append_sequence_logits(rows)
                .map_err(|e| e.to_string())?;
        }
    }
    let summary = writer.finish().map_err(|e| e.to_string())?;
    println!(
        "store k = {k}: {} sequences, {:.1} MB, written in {:.0} s",
        sequences,
        summary.file_bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    TeacherStore::open(&path).map_err(|e| e.to_string())
}

fn run(cli: &Cli) -> Result<Report, String> {
    let mut plan = Plan::new(cli.quick);
    plan.teacher_steps = cli.teacher_steps.unwrap_or(plan.teacher_steps);
    plan.student_steps = cli.student_steps.unwrap_or(plan.student_steps);
    plan.eval_every = plan.eval_every.min(plan.student_steps.max(1));
    let cache = cli.cache.clone().unwrap_or_else(data::default_cache);
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let plain = cli.backend.device()?;
    let device = plain.clone().autodiff();
    let data = prepare(&cache, &plan, cli.seed)?;
    // What the splits hold (the test split may be shorter than the cap).
    plan.valid_sequences = data.valid.rows.len();
    plan.test_sequences = data.test.rows.len();
    let key = plan.teacher_key(cli.seed);
    let (teacher, teacher_row) = teacher(cli, &key, &plan, &data, &cache, &device)?;
    let teacher = teacher.to_device(&plain);
    let mut rows = vec![teacher_row];
    let student_config = plan.config(&plan.student, 0.0);
    let student = |seed: u64| {
        device.seed(seed);
        student_config.init(&device)
    };
    let steps = plan.student_steps;
    let shared = Run {
        plan: &plan,
        data: &data,
        teacher: Some(&teacher),
        device: &device,
        steps,
        only: &cli.only,
    };
    let frozen = FrozenTeacher::new(teacher.clone());
    let kd = |divergence| {
        KdLossConfig::new()
            .with_divergence(divergence)
            .with_temperature(1.0)
            .with_soft_weight(0.5)
            .with_hard_weight(0.5)
    };
    let hard = KdLossConfig::new()
        .with_soft_weight(0.0)
        .with_hard_weight(1.0)
        .init();
    let none = NoTeacher { vocab: plan.vocab };
    println!(
        "student: {} parameters, {} steps of {} sequences",
        student_config.parameters(),
        steps,
        plan.batch
    );
    // Adds a row; returns its test perplexity.
    let mut row = |result: Result<(Gpt, Row), String>| -> Result<f64, String> {
        let row = match result {
            Err(e) if e == SKIPPED => return Ok(f64::INFINITY),
            other => other?.1,
        };
        let perplexity = row.test_perplexity;
        rows.push(row);
        Ok(perplexity)
    };
    for seed in [cli.seed, cli.seed + 1] {
        row(distil(
            &shared,
            &format!("hard (seed {seed})"),
            "hard labels only",
            student(seed),
            none.clone(),
            hard.clone(),
            Completions::Data,
            &data.train,
            None,
        ))?;
    }
    let divergences = [
        ("FKL", Divergence::ForwardKl),
        ("RKL", Divergence::ReverseKl),
        ("JSD", Divergence::Jsd { beta: 0.5 }),
    ];
    let mut best = (f64::INFINITY, "", Divergence::ForwardKl);
    for (short, divergence) in divergences {
        let perplexity = row(distil(
            &shared,
            &format!("dense {short}"),
            "KdLoss on the logits",
            student(cli.seed),
            frozen.clone(),
            kd(divergence).init(),
            Completions::Data,
            &data.train,
            None,
        ))?;
        if perplexity < best.0 {
            best = (perplexity, short, divergence);
        }
    }
    // The best dense row again from the second seed's initialisation (the
    // data order stays), beside the hard-label student's two seeds.
    let (_, short, divergence) = best;
    row(distil(
        &shared,
        &format!("dense {short} (seed {})", cli.seed + 1),
        "the best dense row, second seed",
        student(cli.seed + 1),
        frozen.clone(),
        kd(divergence).init(),
        Completions::Data,
        &data.train,
        None,
    ))?;
    // DistilBERT's cosine between the last hidden states beside the soft
    // targets, through a trained projection from the student's width to the
    // teacher's.
    let cosine = FeatureTerm::new("hidden", HiddenStateLossConfig::new().init()).with_projection(
        plan.student.d_model,
        plan.teacher.d_model,
        &device,
    );
    row(distil_with_features(
        &shared,
        "dense FKL + cosine",
        "KdLoss + hidden-state cosine",
        student(cli.seed),
        frozen.clone(),
        kd(Divergence::ForwardKl).init(),
        cosine,
        Completions::Data,
        &data.train,
        None,
    ))?;
    let fused = FusedLinearKdLossConfig::new(kd(Divergence::ForwardKl))
        // 64 tokens' logits at a time (1 MB at the full vocabulary): the auto
        // chunk (4M logits) would hold a whole micro-batch.
        .with_chunk_size(Some(64))
        .init();
    row(distil(
        &shared,
        "fused FKL",
        "FusedLinearKdLoss from hidden states",
        student(cli.seed),
        frozen.clone(),
        fused,
        Completions::Data,
        &data.train,
        None,
    ))?;
    for k in [8, 64] {
        if !shared.wants(&format!("top-{k} store FKL")) {
            continue;
        }
        let store = store(
            &teacher,
            &data,
            (steps * plan.batch).min(data.train.rows.len()),
            k,
            &cache,
            &key,
            &plain,
        )?;
        let loss = kd(Divergence::ForwardKl).init();
        let stored = StoredTeacher::new(store, &loss).map_err(|e| e.to_string())?;
        row(distil(
            &shared,
            &format!("top-{k} store FKL"),
            "KdLoss, teacher store (f16)",
            student(cli.seed),
            stored,
            loss,
            Completions::Data,
            &data.train,
            None,
        ))?;
    }
    let gkd_loss = KdLossConfig::new()
        .with_divergence(Divergence::Jsd { beta: 0.5 })
        .with_temperature(1.0)
        .with_soft_weight(1.0)
        .with_hard_weight(0.0)
        .init();
    let sampler = SamplerConfig::new()
        .with_temperature(1.0)
        .with_max_new_tokens(plan.context - plan.prompt)
        .with_eos_token(Some(EOS))
        .with_pad_token(PAD)
        .with_context(Some(plan.context))
        .with_seed(cli.seed);
    let gkd = Completions::Gkd {
        lambda: 0.5,
        sampler: sampler.clone(),
    };
    row(distil(
        &shared,
        "GKD λ=0.5 JSD",
        "on-policy: half the batches sampled by the student",
        student(cli.seed),
        frozen.clone(),
        gkd_loss,
        gkd,
        &data.train,
        Some(plan.prompt),
    ))?;
    // Sequence-level KD: the teacher completes training prompts once.
    if shared.wants("seq-KD") {
        let start = Instant::now();
        let mut sampled = Vec::new();
        for first in (0..plan.seq_kd_sequences).step_by(64) {
            let n = 64.min(plan.seq_kd_sequences - first);
            let prompts: Vec<Vec<usize>> = (first..first + n)
                .map(|i| {
                    let row = &data.train.rows[i % data.train.rows.len()];
                    row[..plan.prompt.min(row.len() - 1)].to_vec()
                })
                .collect();
            let batch = generate(
                &teacher,
                &prompts,
                &sampler.clone().with_seed(cli.seed + first as u64),
                &plain,
            )
            .map_err(|e| e.to_string())?;
            let tokens: Vec<i64> = batch.tokens.into_data().iter::<i64>().collect();
            let padding: Vec<bool> = batch
                .padding_mask
                .expect("generate pads")
                .into_data()
                .iter::<bool>()
                .collect();
            let length = tokens.len() / n;
            for s in 0..n {
                let row: Vec<usize> = (0..length)
                    .take_while(|&t| !padding[s * length + t])
                    .map(|t| tokens[s * length + t] as usize)
                    .collect();
                sampled.push(row);
            }
        }
        println!(
            "sequence-level KD: {} teacher completions in {:.0} s",
            sampled.len(),
            start.elapsed().as_secs_f64()
        );
        debug_assert!(sampled.iter().all(|r| r[0] == BOS));
        let words: Vec<&str> = sampled[0].iter().map(|&t| data.vocab.word(t)).collect();
        println!("  e.g. \"{}\"", words.join(" "));
        let teacher_data = Sequences {
            rows: sampled,
            context: plan.context,
        };
        row(distil(
            &shared,
            "seq-KD",
            "hard labels on the teacher's completions",
            student(cli.seed),
            none,
            hard,
            Completions::Data,
            &teacher_data,
            None,
        ))?;
    }
    // A student with another tokenizer: the same shape over byte-pair
    // pieces, from the same seed, over the same sentences.
    let pieces_config =
        Plan::config_over(data.cross.bpe.len(), plan.bpe_context, &plan.student, 0.0);
    println!(
        "byte-pair student: {} parameters, context {}",
        pieces_config.parameters(),
        plan.bpe_context
    );
    let cross_rows = [
        (
            "BPE hard",
            "byte pairs: hard labels only",
            cross::Soft::None,
        ),
        (
            "BPE ULD",
            "byte pairs: ULD, rows paired by position",
            cross::Soft::Uld,
        ),
        (
            "BPE GOLD",
            "byte pairs: GOLD, spans by byte offsets",
            cross::Soft::Gold,
        ),
        (
            "BPE GOLD hybrid",
            "byte pairs: GOLD hybrid (JSD on shared tokens)",
            cross::Soft::GoldHybrid,
        ),
    ];
    for (name, what, soft) in cross_rows {
        device.seed(cli.seed);
        let student = pieces_config.init(&device);
        row(cross::distil(
            &shared,
            name,
            what,
            student,
            &teacher,
            soft,
            &data.cross,
        ))?;
    }
    Ok(Report {
        quick: cli.quick,
        backend: format!("{:?}", cli.backend),
        plan,
        unknown_rate: data.unknown_rate,
        rows,
    })
}

/// The report of an earlier run, from its JSON.
fn read_report(path: &Path) -> Result<Report, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() {
    let cli = Cli::parse();
    let start = Instant::now();
    let report = match &cli.plot {
        Some(json) => read_report(json),
        None => run(&cli),
    };
    match report {
        Ok(report) => {
            println!("\n{}", report.table());
            if let Err(e) = std::fs::create_dir_all(&cli.out) {
                eprintln!("{}: {e}", cli.out.display());
                std::process::exit(1);
            }
            let json = cli.out.join("lm_distill.json");
            let png = cli.out.join("lm_distill.png");
            if cli.plot.as_deref() != Some(json.as_path()) {
                report.write_json(&json).expect("writing the JSON");
            }
            if let Err(e) = report.write_png(&png) {
                eprintln!("{}: {e}", png.display());
                std::process::exit(1);
            }
            println!(
                "wrote {} and {} in {:.0} s",
                json.display(),
                png.display(),
                start.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            eprintln!("lm_distill: {e}");
            std::process::exit(1);
        }
    }
}
