//! The offline teacher store: round trips for each precision against
//! `SparseTeacher::top_k` of the same logits, the loss on a stored teacher
//! against the live one, sequences, concurrent readers, and every kind of bad
//! input and damage giving its error.

use crate::common;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use burn_distill::store::{StorePrecision, TeacherStore, TeacherStoreConfig};
use burn_distill::{DistillError, Divergence, KdLossConfig, SparseTeacher, Targets, TeacherOutput};
use common::{Normals, Rng, labels, reference_softmax, tensor2, values};

const VOCAB: usize = 37;
const K: usize = 5;
const T: f64 = 2.0;

/// A fresh directory under the target's temporary space, removed on drop.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

fn logits(rows: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    rng.normals(rows * VOCAB, 3.0)
}

fn config(precision: StorePrecision) -> TeacherStoreConfig {
    TeacherStoreConfig::new(VOCAB, K, T)
        .with_precision(precision)
        .with_teacher("teacher-a".into())
        .with_dataset_fingerprint("order-1".into())
        // Several shards, the last one partly filled.
        .with_shard_rows(7)
}

/// How a test hands the teacher to the writer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    /// `append_logits`: the writer selects the top k on the host.
    Logits,
    /// `append_top_k(&SparseTeacher::top_k(..))`: burn selects them.
    TopK,
}

/// Writes `rows` rows of `values` as one example each, in batches of 9.
fn write_store(
    path: &Path,
    config: &TeacherStoreConfig,
    values: &[f64],
    rows: usize,
    source: Source,
) {
    let device = Device::flex();
    let mut writer = config.create(path).unwrap();
    for start in (0..rows).step_by(9) {
        let end = (start + 9).min(rows);
        let batch = tensor2(
            &values[start * VOCAB..end * VOCAB],
            [end - start, VOCAB],
            &device,
        );
        match source {
            Source::Logits => writer.append_logits(batch).unwrap(),
            Source::TopK => writer
                .append_top_k(&SparseTeacher::top_k(batch, config.k, config.temperature).unwrap())
                .unwrap(),
        }
    }
    let summary = writer.finish().unwrap();
    assert_eq!(summary.examples, rows);
    assert_eq!(summary.file_bytes, std::fs::metadata(path).unwrap().len());
}

/// Log-probabilities the writer selected on the host (f64, rounded once)
/// against burn's f32 log-softmax: equal to a few f32 ulps.
#[track_caller]
fn assert_f32_rounding(actual: &Tensor<2>, expected: &Tensor<2>) {
    let (a, e) = (values(actual.clone()), values(expected.clone()));
    assert_eq!(a.len(), e.len());
    for (a, e) in a.iter().zip(&e) {
        let bound = 4.0 * f32::EPSILON as f64 * e.abs().max(1.0);
        assert!((a - e).abs() <= bound, "{a} vs {e}");
    }
}

/// f32 machine epsilon of each precision's significand.
fn epsilon(precision: StorePrecision) -> f64 {
    match precision {
        StorePrecision::F32 => f32::EPSILON as f64,
        StorePrecision::F16 => 2f64.powi(-10),
        StorePrecision::Bf16 => 2f64.powi(-7),
    }
}

const PRECISIONS: [StorePrecision; 3] = [
    StorePrecision::F32,
    StorePrecision::F16,
    StorePrecision::Bf16,
];

#[test]
fn round_trip_equals_the_live_top_k_for_each_precision() {
    let dir = scratch();
    let rows = 40;
    let x = logits(rows, 1);
    let device = Device::flex();
    let live = SparseTeacher::top_k(tensor2(&x, [rows, VOCAB], &device), K, T).unwrap();
    let live_indices: Vec<i64> = live.indices().clone().into_data().iter::<i64>().collect();
    let live_log_probs = values(live.log_probs().clone());
    // A shuffled batch with a repeat, across shards.
    let batch = [33usize, 0, 7, 6, 39, 7, 20];
    for (precision, source) in PRECISIONS
        .into_iter()
        .flat_map(|p| [(p, Source::Logits), (p, Source::TopK)])
    {
        let path = dir.path().join(format!("{precision:?}-{source:?}.bdts"));
        write_store(&path, &config(precision), &x, rows, source);
        let store = TeacherStore::open_matching(&path, &config(precision)).unwrap();
        assert_eq!(
            (
                store.summary().examples,
                store.summary().rows,
                store.config().k
            ),
            (rows, rows as u64, K)
        );
        let read = store.read(&batch, &device).unwrap();
        let indices: Vec<i64> = read.indices().clone().into_data().iter::<i64>().collect();
        let log_probs = values(read.log_probs().clone());
        let host = store.read_rows(&batch).unwrap();
        let eps = epsilon(precision);
        for (b, &row) in batch.iter().enumerate() {
            let span = b * K..(b + 1) * K;
            let live_span = row * K..(row + 1) * K;
            assert_eq!(
                indices[span.clone()],
                live_indices[live_span.clone()],
                "{precision:?} row {row}"
            );
            let expected = &live_log_probs[live_span];
            let largest = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            // The log-probabilities in f64, independently of the crate.
            let p = reference_softmax(&x[row * VOCAB..(row + 1) * VOCAB], VOCAB, T);
            for (j, (&a, &e)) in log_probs[span.clone()].iter().zip(expected).enumerate() {
                if precision == StorePrecision::F32 && source == Source::TopK {
                    assert_eq!(a, e, "f32 is stored exactly (row {row})");
                } else if precision == StorePrecision::F32 {
                    // Selected on the host in f64, rounded once to f32.
                    let exact = p[indices[b * K + j] as usize].ln();
                    assert!(
                        (a - exact).abs() <= f32::EPSILON as f64 * exact.abs().max(1.0),
                        "row {row}: {a} vs {exact}"
                    );
                    assert!(
                        (a - e).abs() <= 4.0 * f32::EPSILON as f64 * e.abs().max(1.0),
                        "row {row}: {a} vs burn's {e}"
                    );
                } else {
                    // Rounding of the value (half an ulp) plus the row's common
                    // shift, which is bounded by the largest rounding in the row.
                    let bound = 0.5 * eps * e.abs() + 0.5 * eps * largest + 1e-6;
                    assert!(
                        (a - e).abs() <= bound,
                        "{precision:?} row {row}: {a} vs {e} (bound {bound})"
                    );
                }
            }
            // The tail: the mass outside the top k, from the f64 softmax.
            let mut sorted = p.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let tail: f64 = sorted[K..].iter().sum();
            let stored_tail = host.tail_mass[b] as f64;
            assert!((stored_tail - tail).abs() < 1e-6, "tail of row {row}");
            if source == Source::Logits {
                // Summed over the tail's own classes: relative accuracy too.
                assert!(
                    (stored_tail - tail).abs() <= 1e-5 * tail,
                    "tail of row {row}: {stored_tail} vs {tail}"
                );
            }
            // Read-back rows carry the stored tail: Σ p_k = 1 − tail.
            let mass: f64 = log_probs[span].iter().map(|v| v.exp()).sum();
            assert!(
                (mass + host.tail_mass[b] as f64 - 1.0).abs() < 1e-6,
                "{precision:?} row {row} mass {mass}"
            );
        }
    }
}

#[test]
fn loss_on_the_stored_teacher_equals_the_live_one_to_the_rounding() {
    let dir = scratch();
    let rows = 24;
    let x = logits(rows, 2);
    let device = Device::flex().autodiff();
    let mut rng = Rng::new(3);
    let student_values = rng.normals(rows * VOCAB, 2.0);
    let y: Vec<i64> = (0..rows as i64).map(|i| i % VOCAB as i64).collect();
    let batch: Vec<usize> = (0..rows).rev().collect();
    let live_rows: Vec<f64> = batch
        .iter()
        .flat_map(|&r| x[r * VOCAB..(r + 1) * VOCAB].to_vec())
        .collect();
    for divergence in [
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::Jsd { beta: 0.5 },
    ] {
        let kd = KdLossConfig::new()
            .with_temperature(T)
            .with_divergence(divergence)
            .init();
        let loss_and_grad = |teacher: SparseTeacher| {
            let student = tensor2(&student_values, [rows, VOCAB], &device).require_grad();
            let parts = kd.forward_parts(
                student.clone(),
                TeacherOutput::TopK(teacher),
                Targets::new(labels(&y, &device)),
            );
            let soft = common::scalar(parts.soft.clone());
            let grads = parts.total.backward();
            (soft, values(student.grad(&grads).unwrap()))
        };
        let live = SparseTeacher::top_k(tensor2(&live_rows, [rows, VOCAB], &device), K, T).unwrap();
        let (live_soft, live_grad) = loss_and_grad(live);
        for precision in PRECISIONS {
            let path = dir
                .path()
                .join(format!("{precision:?}-{divergence:?}.bdts"));
            write_store(&path, &config(precision), &x, rows, Source::TopK);
            let store = TeacherStore::open_matching(&path, &config(precision)).unwrap();
            let (soft, grad) = loss_and_grad(store.read(&batch, &device).unwrap());
            if precision == StorePrecision::F32 {
                assert_eq!(soft, live_soft, "{divergence:?}: f32 store");
                assert_eq!(grad, live_grad, "{divergence:?}: f32 store gradient");
                continue;
            }
            // The store moves each teacher log-probability by at most about
            // ε·|log p| (its rounding plus the row's shift). Measured, the soft
            // term then moved by 0.02–0.04 ε of its size and the gradient by
            // under 0.2 ε of its largest entry; the bounds leave 5–10× room.
            let eps = epsilon(precision);
            assert!(
                (soft - live_soft).abs() <= 0.25 * eps * live_soft.abs(),
                "{divergence:?} {precision:?}: {soft} vs {live_soft}"
            );
            let scale = live_grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            for (a, e) in grad.iter().zip(&live_grad) {
                assert!(
                    (a - e).abs() <= 20.0 * epsilon(precision) * scale,
                    "{divergence:?} {precision:?} gradient {a} vs {e}"
                );
            }
        }
    }
}

#[test]
fn sequences_come_back_whole_and_in_order() {
    let dir = scratch();
    let path = dir.path().join("sequences.bdts");
    let device = Device::flex();
    let lengths = [4usize, 1, 6, 3];
    let total: usize = lengths.iter().sum();
    let x = logits(total, 4);
    let config = config(StorePrecision::F32);
    let mut writer = config.create(&path).unwrap();
    let mut starts = Vec::new();
    let mut at = 0;
    for &n in &lengths {
        starts.push(at);
        writer
            .append_sequence_logits(tensor2(
                &x[at * VOCAB..(at + n) * VOCAB],
                [n, VOCAB],
                &device,
            ))
            .unwrap();
        at += n;
    }
    assert_eq!(writer.examples(), lengths.len());
    writer.finish().unwrap();
    let store = TeacherStore::open(&path).unwrap();
    let summary = store.summary();
    assert_eq!(
        (summary.examples, summary.rows),
        (lengths.len(), total as u64)
    );
    for (example, &n) in lengths.iter().enumerate() {
        assert_eq!(store.rows_of(example).unwrap(), n);
    }
    let read = store.read(&[2, 0], &device).unwrap();
    let rows: Vec<usize> = (starts[2]..starts[2] + 6).chain(0..4).collect();
    let live_logits: Vec<f64> = rows
        .iter()
        .flat_map(|&r| x[r * VOCAB..(r + 1) * VOCAB].to_vec())
        .collect();
    let live =
        SparseTeacher::top_k(tensor2(&live_logits, [rows.len(), VOCAB], &device), K, T).unwrap();
    assert_f32_rounding(read.log_probs(), live.log_probs());
    let as_ints = |t: &SparseTeacher| {
        t.indices()
            .clone()
            .into_data()
            .iter::<i64>()
            .collect::<Vec<_>>()
    };
    assert_eq!(as_ints(&read), as_ints(&live));
}

#[test]
fn concurrent_readers_read_the_same_values() {
    let dir = scratch();
    let path = dir.path().join("shared.bdts");
    let rows = 200;
    let x = logits(rows, 5);
    write_store(
        &path,
        &config(StorePrecision::F16),
        &x,
        rows,
        Source::Logits,
    );
    let store = TeacherStore::open(&path).unwrap();
    let batches: Vec<Vec<usize>> = (0..8)
        .map(|t| (0..50).map(|i| (i * 37 + t * 11) % rows).collect())
        .collect();
    // Each thread reads every batch, starting at a different one, while the
    // shards are being verified for the first time.
    let from_threads: Vec<Vec<_>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (store, batches) = (&store, &batches);
                scope.spawn(move || {
                    (0..batches.len())
                        .map(|i| store.read_rows(&batches[(i + t) % batches.len()]).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let fresh = TeacherStore::open(&path).unwrap();
    for (t, results) in from_threads.iter().enumerate() {
        for (i, rows) in results.iter().enumerate() {
            let expected = fresh.read_rows(&batches[(i + t) % batches.len()]).unwrap();
            assert_eq!(rows, &expected, "thread {t}, batch {i}");
        }
    }
}

/// A finished store of 30 rows (shards of 7) and its bytes.
fn finished_store(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("intact.bdts");
    write_store(
        &path,
        &config(StorePrecision::F16),
        &logits(30, 6),
        30,
        Source::Logits,
    );
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn damaged(error: DistillError) -> String {
    match error {
        DistillError::StoreDamaged { what, .. } => what,
        other => panic!("expected StoreDamaged, got {other:?}"),
    }
}

/// Byte offset of the first row: the preamble, the header and its checksum.
fn data_start(bytes: &[u8]) -> usize {
    16 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize + 4
}

#[test]
fn a_store_cut_short_is_refused_at_opening() {
    let dir = scratch();
    let (_, bytes) = finished_store(dir.path());
    let path = dir.path().join("cut.bdts");
    for keep in [
        0,
        10,
        data_start(&bytes) + 5,
        bytes.len() / 2,
        bytes.len() - 40,
        bytes.len() - 1,
    ] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let what = damaged(TeacherStore::open(&path).unwrap_err());
        assert!(
            what.contains("bytes") || what.contains("end marker"),
            "cut at {keep}: {what}"
        );
    }
    // Bytes appended after a finished store are damage too.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 8]);
    std::fs::write(&path, &longer).unwrap();
    damaged(TeacherStore::open(&path).unwrap_err());
}

#[test]
fn a_corrupted_shard_fails_every_read_that_touches_it_and_no_other() {
    let dir = scratch();
    let (path, mut bytes) = finished_store(dir.path());
    let row_bytes = TeacherStore::open(&path).unwrap().summary().row_bytes;
    // One bit of a log-probability in row 15 (shard 2: rows 14..21).
    let at = data_start(&bytes) + 15 * row_bytes + row_bytes - 6;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let store = TeacherStore::open(&path).unwrap();
    assert!(store.read_rows(&[0, 13, 21, 29]).is_ok());
    // Row 14 itself is intact, but its shard is not: nothing of it is used.
    let what = damaged(store.read_rows(&[3, 14]).unwrap_err());
    assert!(
        what.contains("shard 2 (rows 14..21)") && what.contains("checksum"),
        "{what}"
    );
    damaged(store.read(&[15], &Device::flex()).unwrap_err());
    damaged(store.verify().unwrap_err());
}

#[test]
fn damaged_header_footer_tables_and_foreign_files_are_named() {
    let dir = scratch();
    let (path, bytes) = finished_store(dir.path());
    let n = bytes.len();
    let cases: [(usize, &str); 5] = [
        (3, "marker"),               // the magic
        (9, "version"),              // the format version
        (20, "header checksum"),     // a header field
        (n - 20, "footer checksum"), // the footer's counts
        (n - 40, "table checksum"),  // a shard checksum
    ];
    for (at, expected) in cases {
        let mut copy = bytes.clone();
        copy[at] ^= 0x01;
        std::fs::write(&path, &copy).unwrap();
        let what = damaged(TeacherStore::open(&path).unwrap_err());
        assert!(what.contains(expected), "byte {at}: {what}");
    }
    let missing = TeacherStore::open(dir.path().join("absent.bdts")).unwrap_err();
    assert!(
        matches!(
            missing,
            DistillError::StoreIo {
                operation: "open",
                ..
            }
        ),
        "{missing:?}"
    );
    // The I/O error itself is the error's source, not only its message.
    let source = std::error::Error::source(&missing).expect("an I/O error has a source");
    let io = source
        .downcast_ref::<std::io::Error>()
        .expect("the source is the std::io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert!(missing.to_string().contains(&io.to_string()), "{missing}");
    assert_eq!(missing.clone(), missing);
}

#[test]
fn a_class_outside_the_vocabulary_is_refused_even_with_a_valid_checksum() {
    // 37 classes take 6 bits, which can hold up to 63: a stored 40 is damage
    // that a checksum recomputed over it does not hide.
    let dir = scratch();
    let (path, mut bytes) = finished_store(dir.path());
    let row_bytes = TeacherStore::open(&path).unwrap().summary().row_bytes;
    let row = data_start(&bytes); // row 0, shard 0: its first index is bits 0..6
    bytes[row] = (bytes[row] & !0x3f) | 40;
    let shard = &bytes[row..row + 7 * row_bytes];
    let mut crc = flate2::Crc::new();
    crc.update(shard);
    // The shard checksums sit before the 36-byte footer, one u32 each (5 shards).
    let crc_at = bytes.len() - 36 - 5 * 4;
    bytes[crc_at..crc_at + 4].copy_from_slice(&crc.sum().to_le_bytes());
    let tables_crc = {
        let mut c = flate2::Crc::new();
        c.update(&bytes[crc_at..crc_at + 20]);
        c.sum()
    };
    let footer = bytes.len() - 36;
    bytes[footer + 20..footer + 24].copy_from_slice(&tables_crc.to_le_bytes());
    let mut c = flate2::Crc::new();
    c.update(&bytes[footer..footer + 24]);
    let footer_crc = c.sum();
    bytes[footer + 24..footer + 28].copy_from_slice(&footer_crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let store = TeacherStore::open(&path).unwrap();
    store.verify().unwrap();
    let what = damaged(store.read_rows(&[1, 0]).unwrap_err());
    assert!(what.contains("row 0 holds class 40"), "{what}");
}

#[test]
fn a_store_for_other_settings_names_the_field_that_differs() {
    let dir = scratch();
    let (path, _) = finished_store(dir.path());
    let base = config(StorePrecision::F16);
    let cases = [
        (
            "vocab_size",
            TeacherStoreConfig {
                vocab_size: VOCAB + 1,
                ..base.clone()
            },
        ),
        (
            "dataset_fingerprint",
            base.clone().with_dataset_fingerprint("order-2".into()),
        ),
        (
            "temperature",
            TeacherStoreConfig {
                temperature: 4.0,
                ..base.clone()
            },
        ),
        ("teacher", base.clone().with_teacher("teacher-b".into())),
        (
            "k",
            TeacherStoreConfig {
                k: K + 1,
                ..base.clone()
            },
        ),
        (
            "precision",
            base.clone().with_precision(StorePrecision::Bf16),
        ),
    ];
    for (name, expected) in cases {
        match TeacherStore::open_matching(&path, &expected).unwrap_err() {
            DistillError::StoreMismatch { field, .. } => assert_eq!(field, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    // Rows per shard are a layout choice, not a fact to match.
    TeacherStore::open_matching(&path, &base.clone().with_shard_rows(64)).unwrap();
    let message = TeacherStore::open_matching(
        &path,
        &TeacherStoreConfig {
            temperature: 4.0,
            ..base
        },
    )
    .unwrap_err()
    .to_string();
    assert!(message.contains("temperature = 2.0, but 4.0"), "{message}");
}

#[test]
fn bad_settings_and_bad_rows_are_refused_and_write_nothing() {
    let dir = scratch();
    let device = Device::flex();
    let path = dir.path().join("refusals.bdts");
    let invalid = |config: TeacherStoreConfig| config.create(&path).unwrap_err();
    assert!(matches!(
        invalid(TeacherStoreConfig::new(10, 11, 1.0)),
        DistillError::InvalidParameter {
            argument: "k",
            value: 11,
            ..
        }
    ));
    assert!(matches!(
        invalid(TeacherStoreConfig::new(10, 0, 1.0)),
        DistillError::InvalidParameter {
            argument: "k",
            value: 0,
            ..
        }
    ));
    assert!(matches!(
        invalid(TeacherStoreConfig::new(10, 3, 0.0)),
        DistillError::InvalidTemperature {
            argument: "temperature",
            ..
        }
    ));
    assert!(matches!(
        invalid(TeacherStoreConfig::new(10, 3, 1.0).with_shard_rows(0)),
        DistillError::InvalidParameter {
            argument: "shard_rows",
            ..
        }
    ));

    let config = TeacherStoreConfig::new(10, 3, 1.0).with_precision(StorePrecision::F32);
    let mut writer = config.create(&path).unwrap();
    let good = tensor2(&logits(2, 7)[..20], [2, 10], &device);
    writer.append_logits(good.clone()).unwrap();
    let top_k = |indices: [[i64; 3]; 1], log_probs: [f32; 3]| {
        SparseTeacher::new(
            Tensor::from_ints(indices, &device),
            Tensor::from_floats([log_probs], &device),
        )
        .unwrap()
    };
    let reason = |error: DistillError| match error {
        DistillError::InvalidTopK {
            argument,
            row,
            reason,
        } => format!("{argument} {row}: {reason}"),
        other => panic!("expected InvalidTopK, got {other:?}"),
    };
    let probable = [-1.5f32, -2.0, -2.5];
    let refusals = [
        (
            top_k([[0, 1, 10]], probable),
            "teacher.indices 0: class 10 is outside 0..10",
        ),
        (
            top_k([[0, -1, 2]], probable),
            "teacher.indices 0: class -1 is outside",
        ),
        (
            top_k([[4, 2, 4]], probable),
            "teacher.indices 0: class 4 appears twice",
        ),
        (
            top_k([[0, 1, 2]], [-1.0, f32::NAN, -2.0]),
            "teacher.log_probs 0: log-probability NaN",
        ),
        (
            top_k([[0, 1, 2]], [0.5, -3.0, -4.0]),
            "teacher.log_probs 0: log-probability 0.5 > 0, a probability above 1",
        ),
        (
            top_k([[0, 1, 2]], [0.0, 0.0, -1.0]),
            "teacher.log_probs 0: its probabilities sum to",
        ),
    ];
    for (teacher, expected) in refusals {
        let message = reason(writer.append_top_k(&teacher).unwrap_err());
        assert!(message.starts_with(expected), "{message}");
    }
    assert!(matches!(
        writer
            .append_logits(tensor2(&[0.0; 9], [1, 9], &device))
            .unwrap_err(),
        DistillError::ShapeMismatch { left_argument: "teacher_logits columns", left_shape, right_shape, .. } if left_shape == vec![9] && right_shape == vec![10]
    ));
    let four = SparseTeacher::top_k(good.clone(), 4, 1.0).unwrap();
    assert!(matches!(
        writer.append_top_k(&four).unwrap_err(),
        DistillError::ShapeMismatch { left_argument: "teacher.indices columns", left_shape, right_shape, .. } if left_shape == vec![4] && right_shape == vec![3]
    ));
    // The refused calls appended nothing: the store holds the 2 good rows.
    writer.finish().unwrap();
    let store = TeacherStore::open_matching(&path, &config).unwrap();
    assert_eq!(store.summary().examples, 2);
    let expected = SparseTeacher::top_k(good, 3, 1.0).unwrap();
    assert_f32_rounding(
        store.read(&[0, 1], &device).unwrap().log_probs(),
        expected.log_probs(),
    );
    assert!(matches!(
        store.read_rows(&[1, 2]).unwrap_err(),
        DistillError::ExampleOutOfRange {
            example: 2,
            examples: 2
        }
    ));
}

#[test]
fn an_unfinished_writer_leaves_no_file_behind() {
    let dir = scratch();
    let path = dir.path().join("never.bdts");
    let device = Device::flex();
    let mut writer = config(StorePrecision::F16).create(&path).unwrap();
    writer
        .append_logits(tensor2(&logits(3, 8), [3, VOCAB], &device))
        .unwrap();
    // While writing, only the temporary file exists.
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    drop(writer);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // And an empty store is a valid one.
    config(StorePrecision::F16)
        .create(&path)
        .unwrap()
        .finish()
        .unwrap();
    let store = TeacherStore::open(&path).unwrap();
    assert_eq!(store.summary().examples, 0);
    assert_eq!(store.read_rows(&[]).unwrap().rows, 0);
}

#[test]
fn every_class_kept_gives_the_dense_loss() {
    // k = vocab: an empty tail; the stored teacher's loss is the dense loss
    // on the logits, to the precision's rounding.
    let dir = scratch();
    let device = Device::flex();
    let rows = 6;
    let x = logits(rows, 9);
    let y: Vec<i64> = vec![1; rows];
    let kd = KdLossConfig::new().with_temperature(T).init();
    let dense = common::scalar(kd.forward(
        tensor2(&logits(rows, 10), [rows, VOCAB], &device),
        tensor2(&x, [rows, VOCAB], &device),
        labels(&y, &device),
    ));
    for precision in PRECISIONS {
        let config = TeacherStoreConfig::new(VOCAB, VOCAB, T).with_precision(precision);
        let path = dir.path().join(format!("all-{precision:?}.bdts"));
        write_store(&path, &config, &x, rows, Source::Logits);
        let store = TeacherStore::open_matching(&path, &config).unwrap();
        let host = store.read_rows(&(0..rows).collect::<Vec<_>>()).unwrap();
        assert!(host.tail_mass.iter().all(|&t| t == 0.0));
        let stored = common::scalar(kd.forward(
            tensor2(&logits(rows, 10), [rows, VOCAB], &device),
            store.read(&(0..rows).collect::<Vec<_>>(), &device).unwrap(),
            labels(&y, &device),
        ));
        // As above: a fraction of ε relative (measured 0.002–0.05 ε).
        let tolerance = 1e-5 + 0.25 * epsilon(precision) * dense.abs();
        assert!(
            (stored - dense).abs() <= tolerance,
            "{precision:?}: {stored} vs {dense}"
        );
    }
}

#[test]
fn logits_with_ties_masked_classes_and_bad_values() {
    let dir = scratch();
    let device = Device::flex();
    let path = dir.path().join("ties.bdts");
    let config = TeacherStoreConfig::new(5, 3, 1.0).with_precision(StorePrecision::F32);
    let mut writer = config.create(&path).unwrap();
    let inf = f64::INFINITY;
    // Ties go to the smaller class; a masked class (−inf) is kept with
    // probability 0 when fewer than k classes are possible.
    let rows = [[1.0, 3.0, 3.0, 0.0, -inf], [-inf, 2.0, -inf, -inf, 0.0]];
    writer
        .append_logits(tensor2(&rows.concat(), [2, 5], &device))
        .unwrap();
    for (bad, reason) in [
        ([0.0, f64::NAN, 1.0, 2.0, 3.0], "it holds the logit NaN"),
        ([0.0, inf, 1.0, 2.0, 3.0], "it holds the logit inf"),
        ([-inf; 5], "every logit is -inf"),
    ] {
        match writer.append_logits(tensor2(&bad, [1, 5], &device)) {
            Err(DistillError::InvalidTopK {
                argument: "teacher_logits",
                row: 0,
                reason: found,
            }) => assert_eq!(found, reason),
            other => panic!("{reason}: {other:?}"),
        }
    }
    writer.finish().unwrap();
    let stored = TeacherStore::open(&path)
        .unwrap()
        .read_rows(&[0, 1])
        .unwrap();
    assert_eq!(stored.indices, [1, 2, 0, 1, 4, 0]);
    let p = reference_softmax(&rows.concat(), 5, 1.0);
    let expected = [p[1], p[2], p[0], p[6], p[9], p[5]].map(f64::ln);
    for (a, e) in stored.log_probs.iter().zip(expected) {
        assert!(
            *a as f64 == e || (*a as f64 - e).abs() <= 2.0 * f32::EPSILON as f64 * e.abs().max(1.0),
            "{a} vs {e}"
        );
    }
    // Summed over its own classes, the tail is exactly 0 here (not 1 − Σ p).
    assert_eq!(stored.tail_mass[1], 0.0);
    let tail = p[3] + p[4];
    assert!((stored.tail_mass[0] as f64 - tail).abs() <= 1e-6 * tail);
}

#[test]
fn a_temperature_below_f32_range_still_gives_finite_rows() {
    // 1/T overflows f32 at T = 1e-40: the teacher is then one-hot on its
    // largest logit (ties shared), exactly as the f64 softmax says.
    let dir = scratch();
    let path = dir.path().join("cold.bdts");
    let config = TeacherStoreConfig::new(4, 2, 1e-40).with_precision(StorePrecision::F32);
    let mut writer = config.create(&path).unwrap();
    writer
        .append_logits(tensor2(&[0.5, 2.0, 1.0, 2.0], [1, 4], &Device::flex()))
        .unwrap();
    writer.finish().unwrap();
    let rows = TeacherStore::open(&path).unwrap().read_rows(&[0]).unwrap();
    assert_eq!(rows.indices, [1, 3]);
    let half = 0.5f64.ln() as f32;
    assert_eq!(rows.log_probs, [half, half]);
    assert_eq!(rows.tail_mass, [0.0]);
}
