//! Writing a teacher store: rows appended in dataset order, shards
//! checksummed as they fill, the file renamed into place when finished.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{DType, Tensor};

use super::TeacherStoreConfig;
use super::format::{FLAG_EXAMPLE_OFFSETS, Footer, Header, pack_indices, sum_exp};
use crate::check::{check_non_empty, shape_mismatch};
use crate::error::{DistillError, store_io};
use crate::fused;
use crate::sparse::SparseTeacher;
use crate::top_k::{BadRow, Selection, TopKRows, check_rows, top_k_rows};

/// How far the `k` probabilities of a row may sum above 1 (rounding of an f32
/// log-softmax, or of a teacher stored in half precision) before the row is
/// refused.
const SUM_TOLERANCE: f64 = 1e-3;

/// A teacher store being written; made by [`TeacherStoreConfig::create`].
///
/// Examples are numbered in the order they are appended. Nothing appears at
/// the store's path until [`finish`](Self::finish); dropping the writer
/// unfinished deletes its temporary file. A call that returns an error
/// appends nothing, and the writer can go on.
///
/// For sequences, one example per sequence with one row per token:
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use burn_distill::store::{TeacherStore, TeacherStoreConfig};
///
/// let device = Device::flex();
/// let path = std::env::temp_dir().join(format!("doc-sequences-{}.bdts", std::process::id()));
/// let config = TeacherStoreConfig::new(100, 8, 1.0);
/// let mut writer = config.create(&path).unwrap();
/// for tokens in [5, 3, 7] {
///     let logits = Tensor::<2>::random([tokens, 100], Distribution::Normal(0.0, 1.0), &device);
///     writer.append_sequence_logits(logits).unwrap();
/// }
/// assert_eq!(writer.examples(), 3);
/// let summary = writer.finish().unwrap();
/// assert_eq!((summary.examples, summary.rows), (3, 15));
///
/// let store = TeacherStore::open_matching(&path, &config).unwrap();
/// assert_eq!(store.rows_of(1).unwrap(), 3);
/// // Sequences 2 and 0: their 7 + 5 rows, in that order.
/// let teacher = store.read(&[2, 0], &device).unwrap();
/// assert_eq!(teacher.log_probs().dims(), [12, 8]);
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Debug)]
pub struct TeacherStoreWriter {
    header: Header,
    path: PathBuf,
    partial: PathBuf,
    file: Option<BufWriter<File>>,
    row_bytes: usize,
    /// Rows written so far.
    rows: u64,
    /// The first row of every example.
    example_starts: Vec<u64>,
    shard: crc32fast::Hasher,
    shard_crcs: Vec<u32>,
    bytes: u64,
    /// A write that failed half-way: the file can no longer be finished.
    broken: Option<DistillError>,
    /// Scratch for one call's encoded rows.
    encoded: Vec<u8>,
    /// Renamed into place: the temporary file is gone.
    finished: bool,
}

/// What [`TeacherStoreWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSummary {
    /// The store's path.
    pub path: PathBuf,
    /// Examples stored.
    pub examples: usize,
    /// Rows stored (= examples, unless sequences were appended).
    pub rows: u64,
    /// Bytes of one row.
    pub row_bytes: usize,
    /// Size of the file.
    pub file_bytes: u64,
}

/// Top-k rows on the host, ready to be checked and encoded.
struct HostRows {
    rows: usize,
    indices: Vec<i64>,
    log_probs: Vec<f32>,
    /// Each row's tail mass when known exactly (from the logits); otherwise
    /// `1 − Σ p` of the row's log-probabilities.
    tails: Option<Vec<f32>>,
}

impl TeacherStoreWriter {
    pub(super) fn create(config: &TeacherStoreConfig, path: &Path) -> Result<Self, DistillError> {
        let header = config.header()?;
        // A unique name beside the destination: renaming is then atomic (one
        // file system), and two writers never share a temporary file.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(
            ".partial-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let partial = path.with_file_name(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| store_io(&partial, "create the temporary file", e))?;
        let mut writer = Self {
            row_bytes: header.row_bytes(),
            header,
            path: path.to_path_buf(),
            partial,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            rows: 0,
            example_starts: Vec::new(),
            shard: crc32fast::Hasher::new(),
            shard_crcs: Vec::new(),
            bytes: 0,
            broken: None,
            encoded: Vec::new(),
            finished: false,
        };
        let header_bytes = writer.header.encode();
        writer.write(&header_bytes)?;
        Ok(writer)
    }

    /// Appends one example per row: the top `k` classes of `teacher_logits`
    /// (`[rows, vocab_size]`) and their log-probabilities at the store's
    /// temperature, as [`SparseTeacher::top_k`] takes them (to f32 rounding).
    ///
    /// The logits are read back to the host and each row's top `k` selected
    /// there in one pass (`O(vocab · log k)`); on a GPU, selecting on the device
    /// with `append_top_k(&SparseTeacher::top_k(..))` moves `k` values per row
    /// instead of `vocab_size`.
    pub fn append_logits(&mut self, teacher_logits: Tensor<2>) -> Result<(), DistillError> {
        let rows = self.select_top_k(teacher_logits)?;
        self.append_rows(rows, false)
    }

    /// Appends one example per row of a top-k teacher (`[rows, k]`), whose
    /// log-probabilities must be at the store's temperature.
    pub fn append_top_k(&mut self, teacher: &SparseTeacher) -> Result<(), DistillError> {
        let rows = self.read_top_k(teacher)?;
        self.append_rows(rows, false)
    }

    /// Appends one example made of all the rows of `teacher_logits`
    /// (`[tokens, vocab_size]`, one row per token of a sequence), selected as
    /// [`append_logits`](Self::append_logits) does.
    pub fn append_sequence_logits(
        &mut self,
        teacher_logits: Tensor<2>,
    ) -> Result<(), DistillError> {
        let rows = self.select_top_k(teacher_logits)?;
        self.append_rows(rows, true)
    }

    /// Appends one example made of all the rows of a top-k teacher
    /// (`[tokens, k]`, one row per token of a sequence).
    pub fn append_sequence_top_k(&mut self, teacher: &SparseTeacher) -> Result<(), DistillError> {
        let rows = self.read_top_k(teacher)?;
        self.append_rows(rows, true)
    }

    /// Examples appended so far.
    pub fn examples(&self) -> usize {
        self.example_starts.len()
    }

    /// Each row's top `k` classes of `teacher_logits` and their
    /// log-probabilities at the store's temperature, on the host.
    fn select_top_k(&self, teacher_logits: Tensor<2>) -> Result<HostRows, DistillError> {
        let [rows, classes] = teacher_logits.dims();
        let vocab = self.header.vocab_size as usize;
        if classes != vocab {
            return Err(shape_mismatch(
                "teacher_logits columns",
                &[classes],
                "the store's vocabulary",
                &[vocab],
                "the store holds teachers of its own vocabulary",
            ));
        }
        let selection = Selection {
            k: self.header.k as usize,
            temperature: self.header.temperature,
            with_tails: true,
            refuse_bad_rows: true,
        };
        // In place on the CPU backends; elsewhere the logits are read back.
        let selected = fused::host_top_k(&teacher_logits, selection).unwrap_or_else(|| {
            let values = teacher_logits
                .detach()
                .cast(DType::F32)
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 after cast");
            check_rows(&values, vocab)?;
            Ok(top_k_rows(&values, vocab, &selection))
        });
        let TopKRows {
            indices,
            log_probs,
            tails,
        } = selected.map_err(|BadRow { row, reason }| DistillError::InvalidTopK {
            argument: "teacher_logits",
            row,
            reason,
        })?;
        Ok(HostRows {
            rows,
            indices,
            log_probs,
            tails: Some(tails),
        })
    }

    /// A top-k teacher's indices and log-probabilities, on the host.
    fn read_top_k(&self, teacher: &SparseTeacher) -> Result<HostRows, DistillError> {
        let [rows, k] = teacher.indices().dims();
        if k != self.header.k as usize {
            return Err(shape_mismatch(
                "teacher.indices columns",
                &[k],
                "the store's k",
                &[self.header.k as usize],
                "the store holds exactly k classes per row",
            ));
        }
        let indices = teacher
            .indices()
            .clone()
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("i64 after convert");
        let log_probs = teacher
            .log_probs()
            .clone()
            .cast(DType::F32)
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 after cast");
        Ok(HostRows {
            rows,
            indices,
            log_probs,
            tails: None,
        })
    }

    /// Checks every row, then writes them all (or nothing).
    fn append_rows(&mut self, host: HostRows, one_example: bool) -> Result<(), DistillError> {
        let HostRows {
            rows,
            indices,
            log_probs,
            tails,
        } = host;
        if let Some(error) = &self.broken {
            return Err(error.clone());
        }
        let k = self.header.k as usize;
        if one_example {
            check_non_empty("teacher.indices", &[rows, k])?;
        }
        self.encoded.clear();
        self.encoded.reserve(rows * self.row_bytes);
        let mut sorted = Vec::with_capacity(k);
        let bits = self.header.index_bits();
        for row in 0..rows {
            let classes = &indices[row * k..(row + 1) * k];
            let values = &log_probs[row * k..(row + 1) * k];
            let mass_tail = self.check_row(row, classes, values, &mut sorted)?;
            let tail = tails.as_ref().map_or(mass_tail, |t| t[row]);
            pack_indices(classes.iter().map(|&c| c as u32), bits, &mut self.encoded);
            self.header.precision.encode_into(values, &mut self.encoded);
            self.encoded.extend_from_slice(&tail.to_le_bytes());
        }
        // Checked: now write, shard by shard for the checksums.
        let encoded = std::mem::take(&mut self.encoded);
        let shard_rows = self.header.shard_rows as u64;
        let first_row = self.rows;
        let mut at = 0;
        while at < encoded.len() {
            let in_shard = (shard_rows - self.rows % shard_rows) as usize;
            let take = (in_shard * self.row_bytes).min(encoded.len() - at);
            let piece = &encoded[at..at + take];
            self.shard.update(piece);
            self.write(piece)?;
            self.rows += (take / self.row_bytes) as u64;
            if self.rows.is_multiple_of(shard_rows) {
                let done = std::mem::replace(&mut self.shard, crc32fast::Hasher::new());
                self.shard_crcs.push(done.finalize());
            }
            at += take;
        }
        self.encoded = encoded;
        if one_example {
            self.example_starts.push(first_row);
        } else {
            self.example_starts
                .extend(first_row..first_row + rows as u64);
        }
        Ok(())
    }

    /// Checks one row (indices in range and distinct, log-probabilities not
    /// NaN, probabilities summing to at most 1) and returns its tail mass.
    fn check_row(
        &self,
        row: usize,
        classes: &[i64],
        values: &[f32],
        sorted: &mut Vec<i64>,
    ) -> Result<f32, DistillError> {
        let vocab = self.header.vocab_size as i64;
        let refuse = |argument, reason| {
            Err(DistillError::InvalidTopK {
                argument,
                row,
                reason,
            })
        };
        if let Some(&class) = classes.iter().find(|&&c| !(0..vocab).contains(&c)) {
            return refuse(
                "teacher.indices",
                format!("class {class} is outside 0..{vocab} (vocab_size)"),
            );
        }
        sorted.clear();
        sorted.extend_from_slice(classes);
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return refuse(
                "teacher.indices",
                format!("class {} appears twice", pair[0]),
            );
        }
        // One value above ln(1 + tolerance) is already too much mass (and
        // keeps the vectorised `exp` below in its range).
        let too_large = (1.0 + SUM_TOLERANCE).ln() as f32;
        if let Some(value) = values.iter().find(|v| v.is_nan() || **v > too_large) {
            let reason = match value.is_nan() {
                true => "log-probability NaN".to_string(),
                false => format!("log-probability {value} > 0, a probability above 1"),
            };
            return refuse("teacher.log_probs", reason);
        }
        let mass = sum_exp(values);
        if mass > 1.0 + SUM_TOLERANCE || mass.is_nan() {
            return refuse(
                "teacher.log_probs",
                format!(
                    "its probabilities sum to {mass}, more than 1 (are they log-probabilities \
                     at the store's temperature?)"
                ),
            );
        }
        // With every class kept, nothing is left for the tail (1 − Σp would
        // only be rounding).
        Ok(if classes.len() == vocab as usize {
            0.0
        } else {
            (1.0 - mass).max(0.0) as f32
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), DistillError> {
        let file = self.file.as_mut().expect("open until finished");
        if let Err(e) = file.write_all(bytes) {
            let error = store_io(&self.partial, "write", e);
            self.broken = Some(error.clone());
            return Err(error);
        }
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes the tables and the footer, flushes the file to disk and renames
    /// it to the store's path.
    pub fn finish(mut self) -> Result<StoreSummary, DistillError> {
        if let Some(error) = &self.broken {
            return Err(error.clone());
        }
        if !self.rows.is_multiple_of(self.header.shard_rows as u64) {
            let done = std::mem::replace(&mut self.shard, crc32fast::Hasher::new());
            self.shard_crcs.push(done.finalize());
        }
        let examples = self.example_starts.len() as u64;
        // The row-start table is only needed when some example has several rows.
        let one_row_each = self.rows == examples;
        let mut tables = Vec::new();
        if !one_row_each {
            for &start in self.example_starts.iter().chain([&self.rows]) {
                tables.extend_from_slice(&start.to_le_bytes());
            }
        }
        for crc in &self.shard_crcs {
            tables.extend_from_slice(&crc.to_le_bytes());
        }
        let footer = Footer {
            rows: self.rows,
            examples,
            flags: if one_row_each {
                0
            } else {
                FLAG_EXAMPLE_OFFSETS
            },
            tables_crc: crc32fast::hash(&tables),
        };
        self.write(&tables)?;
        self.write(&footer.encode())?;
        let file = self.file.take().expect("open until finished");
        let file = file
            .into_inner()
            .map_err(|e| store_io(&self.partial, "write", e.into_error()))?;
        file.sync_all()
            .map_err(|e| store_io(&self.partial, "flush to disk", e))?;
        drop(file);
        fs::rename(&self.partial, &self.path)
            .map_err(|e| store_io(&self.path, "rename into place", e))?;
        self.finished = true;
        // The rename itself reaches the disk with the directory (best effort:
        // not every platform can open a directory).
        if let Some(dir) = self.path.parent()
            && let Ok(dir) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            let _ = dir.sync_all();
        }
        Ok(StoreSummary {
            path: self.path.clone(),
            examples: examples as usize,
            rows: self.rows,
            row_bytes: self.row_bytes,
            file_bytes: self.bytes,
        })
    }
}

impl Drop for TeacherStoreWriter {
    fn drop(&mut self) {
        // Unfinished (dropped, or `finish` failed): the temporary file is not a store.
        if !self.finished {
            drop(self.file.take());
            let _ = fs::remove_file(&self.partial);
        }
    }
}
