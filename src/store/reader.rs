//! Reading a teacher store: the header, footer and tables at opening, then
//! rows by offset, each shard's checksum verified the first time it is read.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::format::{
    FLAG_EXAMPLE_OFFSETS, FOOTER, Footer, Header, MAGIC, PREAMBLE, VERSION, sum_exp, unpack_indices,
};
use super::{StorePrecision, StoreSummary, TeacherStoreConfig};
use crate::error::{DistillError, store_io};
use crate::kd::KdLoss;
use crate::sparse::SparseTeacher;

/// An open teacher store (see the [module docs](super)): random access to the
/// stored teacher by example index, from any number of threads.
#[derive(Debug)]
pub struct TeacherStore {
    /// The whole file, memory-mapped: a row is read by slicing, with no
    /// system call, and the operating system's page cache holds what is hot.
    map: memmap2::Mmap,
    path: PathBuf,
    header: Header,
    row_bytes: usize,
    data_start: u64,
    rows: u64,
    examples: usize,
    file_bytes: u64,
    /// The first row of every example, and the row count at the end; `None`
    /// when every example is one row.
    example_starts: Option<Vec<u64>>,
    shard_crcs: Vec<u32>,
    verified: Vec<AtomicBool>,
}

/// Rows read from a store, on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRows {
    /// Number of rows (the requested examples' rows, in request order).
    pub rows: usize,
    /// Classes per row.
    pub k: usize,
    /// Class indices, `rows × k`.
    pub indices: Vec<i64>,
    /// Their log-probabilities at the store's temperature, `rows × k`.
    pub log_probs: Vec<f32>,
    /// The mass of the classes outside each row's `k`, `rows`.
    pub tail_mass: Vec<f32>,
}

impl TeacherStore {
    /// Opens a store and checks its header, footer, tables and length (the
    /// rows' checksums are checked as they are read, or by [`verify`](Self::verify)).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DistillError> {
        let path = path.as_ref();
        let damaged = |what: String| DistillError::StoreDamaged {
            path: path.display().to_string(),
            what,
        };
        let file = File::open(path).map_err(|e| store_io(path, "open", e))?;
        let file_bytes = file
            .metadata()
            .map_err(|e| store_io(path, "read the size of", e))?
            .len();
        if file_bytes < (PREAMBLE + 4 + FOOTER) as u64 {
            return Err(damaged(format!(
                "{file_bytes} bytes, fewer than an empty store's {}",
                PREAMBLE + 4 + FOOTER
            )));
        }
        // SAFETY: a mapped file must not change while mapped. A finished store
        // is never written again by this crate (writers write a temporary file
        // and rename it into place, which leaves an open mapping on the old
        // file); another program truncating it under a running reader would
        // fault, the contract of every memory-mapped format (safetensors,
        // `torch.load(mmap=True)`).
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| store_io(path, "memory-map", e))?;
        if map.len() as u64 != file_bytes {
            return Err(damaged(format!(
                "its size changed from {file_bytes} to {} bytes while opening",
                map.len()
            )));
        }
        // The header, footer and tables are parsed in place, from the map.
        let bytes: &[u8] = &map;
        let preamble = &bytes[..PREAMBLE];
        if &preamble[0..8] != MAGIC {
            return Err(damaged(
                "it does not start with a teacher store's marker".into(),
            ));
        }
        let version = u32::from_le_bytes(preamble[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(damaged(format!(
                "format version {version}, but this burn-distill reads version {VERSION}"
            )));
        }
        let header_len = u32::from_le_bytes(preamble[12..16].try_into().expect("4 bytes")) as u64;
        let data_start = PREAMBLE as u64 + header_len + 4;
        if data_start + FOOTER as u64 > file_bytes {
            return Err(damaged(format!(
                "a header of {header_len} bytes in a file of {file_bytes}"
            )));
        }
        let (covered, stored) =
            bytes[..data_start as usize].split_at(PREAMBLE + header_len as usize);
        let stored = u32::from_le_bytes(stored.try_into().expect("4 bytes"));
        let found = crc32fast::hash(covered);
        if stored != found {
            return Err(damaged(format!(
                "header checksum {found:08x} differs from the stored {stored:08x}"
            )));
        }
        let header =
            Header::decode(&covered[PREAMBLE..]).map_err(|e| damaged(format!("header: {e}")))?;
        let row_bytes = header.row_bytes();

        let footer_start = bytes.len() - FOOTER;
        let footer_bytes = bytes[footer_start..].try_into().expect("FOOTER bytes");
        let footer = Footer::decode(footer_bytes).map_err(damaged)?;
        let has_starts = footer.flags & FLAG_EXAMPLE_OFFSETS != 0;
        if footer.flags & !FLAG_EXAMPLE_OFFSETS != 0
            || (!has_starts && footer.rows != footer.examples)
        {
            return Err(damaged(format!(
                "footer flags {:#x} for {} rows in {} examples",
                footer.flags, footer.rows, footer.examples
            )));
        }
        let shards = footer.rows.div_ceil(header.shard_rows as u64);
        // Checked arithmetic: a damaged count must not wrap into a plausible size.
        let expected = (|| {
            let data = footer.rows.checked_mul(row_bytes as u64)?;
            let starts = if has_starts {
                footer.examples.checked_add(1)?.checked_mul(8)?
            } else {
                0
            };
            data_start
                .checked_add(data)?
                .checked_add(starts)?
                .checked_add(shards.checked_mul(4)?)?
                .checked_add(FOOTER as u64)
        })();
        if expected != Some(file_bytes) {
            return Err(damaged(format!(
                "{file_bytes} bytes, but its header and footer describe {} ({} rows of {row_bytes} \
                 bytes, {} examples)",
                expected.map_or("more than 2⁶⁴".to_string(), |e| e.to_string()),
                footer.rows,
                footer.examples
            )));
        }
        let tables_start = data_start + footer.rows * row_bytes as u64;
        let tables = &bytes[tables_start as usize..footer_start];
        let found = crc32fast::hash(tables);
        if found != footer.tables_crc {
            return Err(damaged(format!(
                "table checksum {found:08x} differs from the stored {:08x}",
                footer.tables_crc
            )));
        }
        let (starts_bytes, crc_bytes) = tables.split_at(tables.len() - shards as usize * 4);
        let example_starts = if has_starts {
            let starts: Vec<u64> = starts_bytes
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            let ordered = starts.windows(2).all(|w| w[0] < w[1]);
            if starts.first() != Some(&0) || starts.last() != Some(&footer.rows) || !ordered {
                return Err(damaged(
                    "the examples' row starts are not increasing from 0 to the row count".into(),
                ));
            }
            Some(starts)
        } else {
            None
        };
        let shard_crcs: Vec<u32> = crc_bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        let examples = usize::try_from(footer.examples)
            .map_err(|_| damaged(format!("{} examples", footer.examples)))?;
        Ok(Self {
            verified: (0..shard_crcs.len())
                .map(|_| AtomicBool::new(false))
                .collect(),
            map,
            path: path.to_path_buf(),
            header,
            row_bytes,
            data_start,
            rows: footer.rows,
            examples,
            file_bytes,
            example_starts,
            shard_crcs,
        })
    }

    /// [`open`](Self::open), then [`check`](Self::check) against `expected`.
    pub fn open_matching(
        path: impl AsRef<Path>,
        expected: &TeacherStoreConfig,
    ) -> Result<Self, DistillError> {
        let store = Self::open(path)?;
        store.check(expected)?;
        Ok(store)
    }

    /// Checks that the store was written for `expected`'s vocabulary size,
    /// dataset fingerprint, temperature, teacher, `k` and precision (its
    /// `shard_rows` may differ), naming the first field that differs.
    pub fn check(&self, expected: &TeacherStoreConfig) -> Result<(), DistillError> {
        let (h, e) = (&self.header, expected);
        let shown = |field, stored: &dyn std::fmt::Debug, wanted: &dyn std::fmt::Debug| {
            (field, format!("{stored:?}"), format!("{wanted:?}"))
        };
        let fields = [
            shown("vocab_size", &(h.vocab_size as usize), &e.vocab_size),
            shown(
                "dataset_fingerprint",
                &h.dataset_fingerprint,
                &e.dataset_fingerprint,
            ),
            shown("temperature", &h.temperature, &e.temperature),
            shown("teacher", &h.teacher, &e.teacher),
            shown("k", &(h.k as usize), &e.k),
            shown("precision", &h.precision, &e.precision),
        ];
        for (field, stored, wanted) in fields {
            if stored != wanted {
                return Err(DistillError::StoreMismatch {
                    path: self.path.display().to_string(),
                    field,
                    stored,
                    expected: wanted,
                });
            }
        }
        Ok(())
    }

    /// Checks that the store was written at `loss`'s temperature: a top-k
    /// teacher read at another one cannot be converted (its other classes are
    /// not stored), so a difference is an error.
    ///
    /// ```
    /// # use burn::tensor::{Device, Tensor};
    /// # use burn_distill::KdLossConfig;
    /// # use burn_distill::store::{TeacherStore, TeacherStoreConfig};
    /// # let path = std::env::temp_dir().join(format!("doc-check-loss-{}.bdts", std::process::id()));
    /// let config = TeacherStoreConfig::new(3, 2, 4.0);
    /// let mut writer = config.create(&path).unwrap();
    /// writer.append_logits(Tensor::<2>::from_floats([[1.0, 0.0, 2.0]], &Device::flex())).unwrap();
    /// writer.finish().unwrap();
    /// let store = TeacherStore::open(&path).unwrap();
    /// assert!(store.check_loss(&KdLossConfig::new().with_temperature(4.0).init()).is_ok());
    /// let error = store.check_loss(&KdLossConfig::new().with_temperature(1.0).init()).unwrap_err();
    /// assert!(error.to_string().contains("temperature = 4.0, but 1.0"));
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    pub fn check_loss(&self, loss: &KdLoss) -> Result<(), DistillError> {
        if self.header.temperature == loss.config.temperature {
            return Ok(());
        }
        Err(DistillError::StoreMismatch {
            path: self.path.display().to_string(),
            field: "temperature",
            stored: format!("{:?}", self.header.temperature),
            expected: format!("{:?}", loss.config.temperature),
        })
    }

    /// Reads the rows of `examples` (in that order, repeats allowed) as a
    /// top-k teacher on `device`: `[rows, k]` indices and log-probabilities.
    pub fn read(&self, examples: &[usize], device: &Device) -> Result<SparseTeacher, DistillError> {
        let rows = self.read_rows(examples)?;
        let shape = [rows.rows, rows.k];
        SparseTeacher::new(
            Tensor::<2, Int>::from_data(TensorData::new(rows.indices, shape), device),
            Tensor::<2>::from_data(TensorData::new(rows.log_probs, shape), device),
        )
    }

    /// Reads the rows of `examples` (in that order) on the host. Every shard
    /// they touch is verified first (once per opened store); a damaged one
    /// fails the whole read.
    pub fn read_rows(&self, examples: &[usize]) -> Result<StoredRows, DistillError> {
        let ranges = examples
            .iter()
            .map(|&example| self.row_range(example))
            .collect::<Result<Vec<_>, _>>()?;
        let shard_rows = self.header.shard_rows as u64;
        for &(start, end) in &ranges {
            for shard in start / shard_rows..end.div_ceil(shard_rows) {
                self.verify_shard(shard as usize)?;
            }
        }
        let k = self.header.k as usize;
        let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        let mut out = StoredRows {
            rows: total as usize,
            k,
            indices: Vec::with_capacity(total as usize * k),
            log_probs: Vec::with_capacity(total as usize * k),
            tail_mass: Vec::with_capacity(total as usize),
        };
        for (start, end) in ranges {
            let bytes = self.rows_bytes(start, end);
            for (i, row) in bytes.chunks_exact(self.row_bytes).enumerate() {
                self.decode_row(start + i as u64, row, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Verifies every shard's checksum (reads the whole file once).
    pub fn verify(&self) -> Result<(), DistillError> {
        (0..self.shard_crcs.len()).try_for_each(|shard| self.verify_shard(shard))
    }

    fn verify_shard(&self, shard: usize) -> Result<(), DistillError> {
        if self.verified[shard].load(Ordering::Acquire) {
            return Ok(());
        }
        let shard_rows = self.header.shard_rows as u64;
        let first = shard as u64 * shard_rows;
        let last = (first + shard_rows).min(self.rows);
        let found = crc32fast::hash(self.rows_bytes(first, last));
        let stored = self.shard_crcs[shard];
        if found != stored {
            return Err(self.damaged(format!(
                "shard {shard} (rows {first}..{last}): checksum {found:08x} differs from the \
                 stored {stored:08x}"
            )));
        }
        // Two threads may both verify a shard the first time: harmless.
        self.verified[shard].store(true, Ordering::Release);
        Ok(())
    }

    /// Decodes one row into `out`: indices checked against the vocabulary,
    /// log-probabilities checked for NaN, and (f16, bf16) shifted so that the
    /// row's probabilities sum to `1 − tail` again.
    fn decode_row(&self, row: u64, bytes: &[u8], out: &mut StoredRows) -> Result<(), DistillError> {
        let h = &self.header;
        let k = h.k as usize;
        let (packed, rest) = bytes.split_at(h.index_bytes());
        let (values, tail) = rest.split_at(k * h.precision.bytes());
        let first = out.indices.len();
        unpack_indices(packed, h.index_bits(), k, &mut out.indices);
        if let Some(&class) = out.indices[first..]
            .iter()
            .find(|&&c| c >= h.vocab_size as i64)
        {
            return Err(self.damaged(format!(
                "row {row} holds class {class}, outside the vocabulary of {}",
                h.vocab_size
            )));
        }
        let tail = f32::from_le_bytes(tail.try_into().expect("4 bytes"));
        if !(0.0..=1.0).contains(&tail) {
            return Err(self.damaged(format!("row {row} has a tail mass of {tail}")));
        }
        let first = out.log_probs.len();
        h.precision.decode_into(values, &mut out.log_probs);
        let row_values = &mut out.log_probs[first..];
        if let Some(value) = row_values.iter().find(|v| v.is_nan() || **v > 0.01) {
            // The writer refuses anything above ln(1.001): this is damage.
            return Err(self.damaged(format!("row {row} holds the log-probability {value}")));
        }
        if h.precision != StorePrecision::F32 {
            let mass = sum_exp(row_values);
            if mass > 0.0 && tail < 1.0 {
                let shift = ((1.0 - tail as f64).ln() - mass.ln()) as f32;
                row_values.iter_mut().for_each(|v| *v += shift);
            }
        }
        out.tail_mass.push(tail);
        Ok(())
    }

    /// The bytes of rows `first..last` (in range: checked at opening).
    fn rows_bytes(&self, first: u64, last: u64) -> &[u8] {
        let start = self.data_start as usize + first as usize * self.row_bytes;
        &self.map[start..start + (last - first) as usize * self.row_bytes]
    }

    fn damaged(&self, what: String) -> DistillError {
        DistillError::StoreDamaged {
            path: self.path.display().to_string(),
            what,
        }
    }

    /// What the store was written for (its header): vocabulary size, `k`,
    /// temperature, precision, teacher, dataset fingerprint and shard rows.
    pub fn config(&self) -> TeacherStoreConfig {
        let header = &self.header;
        TeacherStoreConfig {
            vocab_size: header.vocab_size as usize,
            k: header.k as usize,
            temperature: header.temperature,
            precision: header.precision,
            teacher: header.teacher.clone(),
            dataset_fingerprint: header.dataset_fingerprint.clone(),
            shard_rows: header.shard_rows as usize,
        }
    }

    /// What the store holds: its path, examples, rows (more than the examples
    /// when they are sequences), bytes per row and file size — the summary
    /// its writer's [`finish`](super::TeacherStoreWriter::finish) returned.
    pub fn summary(&self) -> StoreSummary {
        StoreSummary {
            path: self.path.clone(),
            examples: self.examples,
            rows: self.rows,
            row_bytes: self.row_bytes,
            file_bytes: self.file_bytes,
        }
    }

    /// Rows of one example.
    pub fn rows_of(&self, example: usize) -> Result<usize, DistillError> {
        let (first, end) = self.row_range(example)?;
        Ok((end - first) as usize)
    }

    /// The rows `first..end` of one example.
    fn row_range(&self, example: usize) -> Result<(u64, u64), DistillError> {
        if example >= self.examples {
            return Err(DistillError::ExampleOutOfRange {
                example,
                examples: self.examples,
            });
        }
        Ok(match &self.example_starts {
            Some(starts) => (starts[example], starts[example + 1]),
            None => (example as u64, example as u64 + 1),
        })
    }
}
