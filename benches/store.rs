//! The offline teacher store at a 32,000-class vocabulary, k = 8 and 64, f16:
//!
//! - `store_write/k*`: writing 8192 rows from top-k teachers already on the
//!   host side (`append_top_k` of 1024-row batches, then `finish`, which
//!   flushes the file to disk and renames it);
//! - `store_read/k*`: a shuffled batch of 256 examples from a 65,536-row store
//!   (every shard verified once beforehand, as after an epoch), as a
//!   `SparseTeacher` on flex (`read`) and on the host (`read_rows`);
//! - `store_verify/k*`: opening the store and checking every shard's checksum
//!   (what a first, cold pass over the file costs on top of the reads);
//! - baselines: `SparseTeacher::top_k` of 256 × 32,000 teacher logits (what a
//!   live teacher costs even after its forward pass, which the store saves
//!   too), selected on the host by the crate's top-k selection; the same
//!   through burn's `log_softmax` and `topk` (`burn_topk`, what
//!   `SparseTeacher::top_k` did before); and `append_logits` of them
//!   (writing straight from logits).
//!
//! Throughputs are examples (rows) per second; bytes per row are printed
//! first, so MB/s = rows/s × bytes per row.
//!
//! ```text
//! cargo bench --bench store
//! ```

use std::time::Duration;

use burn::tensor::{Device, Distribution, Tensor};
use burn_distill::SparseTeacher;
use burn_distill::store::{StorePrecision, TeacherStore, TeacherStoreConfig};
use burn_distill::temperature::log_softmax;
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};

const VOCAB: usize = 32_000;
const T: f64 = 1.0;
const BATCH: usize = 256;
const STORE_ROWS: usize = 65_536;
const WRITE_ROWS: usize = 8192;

fn logits(rows: usize, device: &Device) -> Tensor<2> {
    Tensor::random([rows, VOCAB], Distribution::Normal(0.0, 3.0), device)
}

/// A seeded permutation's batches (SplitMix64 steps, Fisher–Yates).
fn batches(count: usize) -> Vec<Vec<usize>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..STORE_ROWS).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    order
        .chunks(BATCH)
        .take(count)
        .map(<[usize]>::to_vec)
        .collect()
}

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let dir = tempfile::tempdir().expect("temporary directory");
    println!(
        "threads available: {}; store files in {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        dir.path().display()
    );
    let teacher_logits = logits(1024, &device);
    for k in [8usize, 64] {
        let config = TeacherStoreConfig::new(VOCAB, k, T).with_precision(StorePrecision::F16);
        let teacher = SparseTeacher::top_k(teacher_logits.clone(), k, T).unwrap();

        // A 65,536-row store to read from.
        let path = dir.path().join(format!("read-k{k}.bdts"));
        let mut writer = config.create(&path).unwrap();
        for _ in 0..STORE_ROWS / 1024 {
            writer.append_top_k(&teacher).unwrap();
        }
        let summary = writer.finish().unwrap();
        println!(
            "k = {k}: {} bytes per row, {} rows, {} bytes",
            summary.row_bytes, summary.rows, summary.file_bytes
        );

        let mut group = c.benchmark_group("store_write");
        group.throughput(Throughput::Elements(WRITE_ROWS as u64));
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(8));
        let out = dir.path().join(format!("write-k{k}.bdts"));
        group.bench_function(BenchmarkId::new("append_top_k", format!("k{k}")), |b| {
            b.iter(|| {
                let mut writer = config.create(&out).unwrap();
                for _ in 0..WRITE_ROWS / 1024 {
                    writer.append_top_k(&teacher).unwrap();
                }
                black_box(writer.finish().unwrap())
            })
        });
        group.finish();

        let store = TeacherStore::open_matching(&path, &config).unwrap();
        store.verify().unwrap();
        let batches = batches(64);
        let mut group = c.benchmark_group("store_read");
        group.throughput(Throughput::Elements(BATCH as u64));
        let mut i = 0;
        group.bench_function(BenchmarkId::new("read_to_flex", format!("k{k}")), |b| {
            b.iter(|| {
                i = (i + 1) % batches.len();
                black_box(store.read(&batches[i], &device).unwrap())
            })
        });
        group.bench_function(BenchmarkId::new("read_rows_host", format!("k{k}")), |b| {
            b.iter(|| {
                i = (i + 1) % batches.len();
                black_box(store.read_rows(&batches[i]).unwrap())
            })
        });
        group.finish();

        let mut group = c.benchmark_group("store_verify");
        group.throughput(Throughput::Elements(STORE_ROWS as u64));
        group.sample_size(20);
        group.bench_function(BenchmarkId::new("open_and_verify", format!("k{k}")), |b| {
            b.iter(|| {
                let store = TeacherStore::open(&path).unwrap();
                store.verify().unwrap();
                black_box(store)
            })
        });
        group.finish();

        let mut group = c.benchmark_group("baseline");
        group.throughput(Throughput::Elements(BATCH as u64));
        group.sample_size(20);
        let batch_logits = logits(BATCH, &device);
        group.bench_function(BenchmarkId::new("live_top_k", format!("k{k}")), |b| {
            b.iter(|| {
                let teacher = SparseTeacher::top_k(batch_logits.clone(), k, T).unwrap();
                // Wait for the values, as a read from the store does.
                black_box(teacher.log_probs().clone().into_data())
            })
        });
        // What `SparseTeacher::top_k` did before it selected on the host:
        // burn's log-softmax and `topk`, which sorts every row.
        group.bench_function(BenchmarkId::new("burn_topk", format!("k{k}")), |b| {
            b.iter(|| {
                let log_p = log_softmax(batch_logits.clone(), T, 1).unwrap();
                let (log_probs, indices) = log_p.topk_with_indices(k, 1);
                black_box((log_probs.into_data(), indices))
            })
        });
        let out = dir.path().join(format!("logits-k{k}.bdts"));
        group.bench_function(BenchmarkId::new("append_logits", format!("k{k}")), |b| {
            b.iter(|| {
                let mut writer = config.create(&out).unwrap();
                writer.append_logits(batch_logits.clone()).unwrap();
                black_box(writer.finish().unwrap())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
