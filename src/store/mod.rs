//! Offline distillation: a file of the teacher's top-k log-probabilities per
//! example, written once and read in every epoch, so that the teacher does not
//! run (or even sit in memory) while the student trains.
//!
//! Per row it keeps the teacher's `k` most likely classes, their
//! log-probabilities at the distillation temperature (f32, f16 or bf16, chosen
//! at write time) and the mass of the other classes (the tail, f32: summed over
//! those classes when written from logits, `1 − Σ p` from a top-k teacher). A batch
//! read back is a [`SparseTeacher`](crate::SparseTeacher) on the caller's
//! device, i.e. [`TeacherOutput::TopK`](crate::TeacherOutput::TopK) for
//! [`KdLoss`](crate::KdLoss) with any divergence: the loss then sees the
//! teacher's `k` classes plus one tail bucket, exactly as with a live
//! `SparseTeacher::top_k`.
//!
//! - **Facts in the header**: vocabulary size, `k`, the temperature the
//!   teacher was read at, the precision, the teacher's name and a fingerprint of
//!   the dataset order (both given by the caller), the format version.
//!   [`TeacherStore::open_matching`] refuses a store written for another
//!   vocabulary, temperature, dataset order, teacher, `k` or precision, naming
//!   the field. A different temperature is an error, not a conversion: the
//!   classes outside the top `k` are not stored, so how the tail's mass would
//!   spread at another temperature is unknown.
//! - **Random access**: rows have a fixed size (indices bit-packed to
//!   `⌈log₂ vocab⌉` bits, e.g. 15 at 32,000 classes), so an example is found
//!   by arithmetic (plus a table of row starts when examples are sequences of
//!   several rows, one row per token). The file is memory-mapped: a shuffled
//!   batch touches only its own rows' pages, with no system call per row, and
//!   the operating system's page cache keeps what is read often. Any number of
//!   threads can read one `TeacherStore`. (A mapped file must not be changed
//!   while it is open; this crate never writes a finished store, it replaces it
//!   by renaming a new file over it.)
//! - **Integrity**: the file is written under a temporary name and renamed once
//!   complete, so a store is whole or absent. Every `shard_rows` rows carry a
//!   CRC-32, checked the first time a read touches that shard (or by
//!   [`TeacherStore::verify`]); the header, the tables and the footer have their
//!   own. A store cut short, a checksum that differs or a value no writer
//!   produces is a [`DistillError::StoreDamaged`],
//!   and nothing of that read is returned.
//! - **Precision**: f16 and bf16 round each log-probability; on reading, each
//!   row is shifted back by one constant so that its `k` probabilities again
//!   sum to `1 − tail` (the stored tail, exact to f32), which keeps the tail
//!   bucket's mass from picking up the rounding of `k` values. f32 rows come
//!   back exactly as written.
//!
//! Bytes per row: `⌈k·bits/8⌉ + k·(4 | 2) + 4` — 252 at k = 64, 32,000
//! classes, f16 (plus 8 per example for sequences).
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use burn_distill::store::{StorePrecision, TeacherStore, TeacherStoreConfig};
//! use burn_distill::{KdLossConfig, SparseTeacher};
//!
//! let device = Device::flex();
//! let path = std::env::temp_dir().join(format!("doc-store-{}.bdts", std::process::id()));
//! let config = TeacherStoreConfig::new(4, 2, 2.0)
//!     .with_precision(StorePrecision::F32)
//!     .with_teacher("my-teacher-v1".into())
//!     .with_dataset_fingerprint("train-order-seed-7".into());
//!
//! // Once: the teacher's logits for examples 0, 1, 2 (one row each), in order.
//! let teacher_logits = Tensor::<2>::from_floats(
//!     [[3.0, 1.0, 0.0, -1.0], [0.0, 0.5, 2.0, 0.1], [1.0, 1.0, 1.0, 4.0]],
//!     &device,
//! );
//! let mut writer = config.create(&path).unwrap();
//! writer.append_logits(teacher_logits.clone()).unwrap();
//! let summary = writer.finish().unwrap();
//! assert_eq!(summary.examples, 3);
//!
//! // Every epoch: the batch's examples, in the batch's order.
//! let store = TeacherStore::open_matching(&path, &config).unwrap();
//! let teacher: SparseTeacher = store.read(&[2, 0], &device).unwrap();
//! let live = SparseTeacher::top_k(teacher_logits.select(0, Tensor::from_ints([2, 0], &device)), 2, 2.0).unwrap();
//! let (a, b) = (teacher.log_probs().clone(), live.log_probs().clone());
//! // The same classes and log-probabilities (to f32 rounding).
//! assert!(a.sub(b).abs().max().into_scalar::<f32>() < 1e-6);
//!
//! let kd = KdLossConfig::new().with_temperature(2.0).init();
//! let student = Tensor::<2>::from_floats([[0.0, 0.0, 0.0, 1.0], [2.0, 0.0, 0.0, 0.0]], &device);
//! let labels = Tensor::from_ints([3, 0], &device);
//! let loss = kd.forward(student, teacher, labels);
//! assert!(loss.into_scalar::<f32>().is_finite());
//!
//! // A store for another temperature is refused, naming the field.
//! let hotter = TeacherStoreConfig { temperature: 4.0, ..config };
//! let error = TeacherStore::open_matching(&path, &hotter).unwrap_err();
//! assert!(error.to_string().contains("temperature = 2.0, but 4.0"));
//! # std::fs::remove_file(&path).unwrap();
//! ```

mod format;
mod reader;
mod writer;

use std::path::Path;

use burn::config::Config;

pub use reader::{StoredRows, TeacherStore};
pub use writer::{StoreSummary, TeacherStoreWriter};

use crate::error::DistillError;

/// How the log-probabilities are stored.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum StorePrecision {
    /// 4 bytes each, exact.
    F32,
    /// IEEE half precision, 2 bytes: about 3 significant digits, log-probabilities
    /// down to −65504 (smaller ones, and `−inf`, become `−inf`: probability 0).
    F16,
    /// bfloat16, 2 bytes: about 2 significant digits, f32's range.
    Bf16,
}

/// What a teacher store is written for; [`create`](Self::create) starts
/// writing one, and [`TeacherStore::open_matching`] checks a store against it.
///
/// ```
/// use burn_distill::store::{StorePrecision, TeacherStoreConfig};
///
/// let config = TeacherStoreConfig::new(32_000, 64, 1.0);
/// assert_eq!(config.precision, StorePrecision::F16);
/// assert_eq!(config.shard_rows, 4096);
/// ```
#[derive(Config, Debug)]
pub struct TeacherStoreConfig {
    /// Number of classes of the teacher (and the student), ≥ 1.
    pub vocab_size: usize,
    /// Classes kept per row, in `1..=vocab_size` (`vocab_size` keeps them all:
    /// the loss is then the dense one).
    pub k: usize,
    /// The temperature the log-probabilities are taken at: the loss's.
    pub temperature: f64,
    /// Storage of the log-probabilities. Default: [`StorePrecision::F16`].
    #[config(default = "StorePrecision::F16")]
    pub precision: StorePrecision,
    /// The teacher's name or hash, as the caller identifies it (checked on
    /// opening, at most 65,536 bytes). Default: empty.
    #[config(default = "String::new()")]
    pub teacher: String,
    /// A fingerprint of the dataset *in the order the examples are appended*
    /// (e.g. a hash of the example ids in that order), so that example `i` of
    /// the store is example `i` of the data set the student trains on (at most
    /// 65,536 bytes). Default: empty.
    #[config(default = "String::new()")]
    pub dataset_fingerprint: String,
    /// Rows per checksummed shard, ≥ 1: the unit a read verifies the first
    /// time it touches it. Default: 4096.
    #[config(default = 4096)]
    pub shard_rows: usize,
}

impl TeacherStoreConfig {
    /// Starts writing a store to `path` (through a temporary file beside it,
    /// renamed to `path` by [`TeacherStoreWriter::finish`], replacing any file
    /// there); fails on an invalid field or a file that cannot be created.
    pub fn create(&self, path: impl AsRef<Path>) -> Result<TeacherStoreWriter, DistillError> {
        TeacherStoreWriter::create(self, path.as_ref())
    }

    /// The header these settings write, or the invalid field.
    fn header(&self) -> Result<format::Header, DistillError> {
        crate::check::check_temperature("temperature", self.temperature)?;
        let positive = |argument: &'static str, value: usize, requirement: &'static str| {
            if value == 0 || value > u32::MAX as usize {
                Err(DistillError::InvalidParameter {
                    argument,
                    value,
                    requirement,
                })
            } else {
                Ok(value as u32)
            }
        };
        let vocab_size = positive("vocab_size", self.vocab_size, "between 1 and 2³² − 1")?;
        let shard_rows = positive("shard_rows", self.shard_rows, "between 1 and 2³² − 1")?;
        if self.k == 0 || self.k > self.vocab_size {
            return Err(DistillError::InvalidParameter {
                argument: "k",
                value: self.k,
                requirement: "between 1 and vocab_size",
            });
        }
        for (argument, text) in [
            ("teacher", &self.teacher),
            ("dataset_fingerprint", &self.dataset_fingerprint),
        ] {
            if text.len() > format::MAX_TEXT {
                return Err(DistillError::InvalidParameter {
                    argument,
                    value: text.len(),
                    requirement: "at most 65,536 bytes long",
                });
            }
        }
        Ok(format::Header {
            vocab_size,
            k: self.k as u32,
            temperature: self.temperature,
            precision: self.precision,
            shard_rows,
            teacher: self.teacher.clone(),
            dataset_fingerprint: self.dataset_fingerprint.clone(),
        })
    }
}
