//! The crate's one top-k selection on the host: for each row of logits, the
//! `k` largest classes (largest first; among equal logits the smaller class),
//! their log-probabilities at a temperature and, when asked, the probability
//! of the other classes (the tail). `SparseTeacher::top_k` runs it on the CPU
//! backends, reading burn's buffer in place; the teacher store's writer runs
//! it on the logits it is given. On other devices `SparseTeacher::top_k`
//! takes burn's `topk` there (no read-back to the host).
//!
//! A row costs one pass that keeps the best `k` in a min-heap and skips each
//! block of logits whose largest does not beat the heap's smallest (after the
//! first few hundred classes of a typical row, almost every block), and one
//! pass of the vectorised `exp` for the normaliser; burn's `topk` sorts every
//! row. Rows run in parallel on rayon's pool (the one burn-flex and gemm use).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::fused::math::{exp, sum_exp_shifted, sum_f64};

/// Logits per block of the selection pass: a block is skipped when its
/// largest does not enter the heap.
const BLOCK: usize = 16;

/// Rows per rayon task: a 32,000-class row is some 30 µs of work.
const ROWS_PER_TASK: usize = 4;

/// The top `k` of each row, row-major `[rows × k]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TopKRows {
    /// The classes, largest logit first.
    pub indices: Vec<i64>,
    /// Their log-probabilities at the temperature, in f64 rounded to f32.
    pub log_probs: Vec<f32>,
    /// Per row, the probability of the classes not kept, summed over those
    /// classes (exact even where it is tiny, unlike `1 − Σ p_k`); empty
    /// unless asked for.
    pub tails: Vec<f32>,
}

/// What to select, and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Selection {
    /// Classes kept per row, `1..=classes`.
    pub k: usize,
    /// The temperature of the log-probabilities, positive.
    pub temperature: f64,
    /// Whether to sum each row's tail.
    pub with_tails: bool,
    /// Whether a NaN, a `+∞` or a row of `−∞` only is an error (the teacher
    /// store) rather than a row of NaN log-probabilities (a live teacher,
    /// whose loss reports it).
    pub refuse_bad_rows: bool,
}

/// A row that cannot be a teacher's, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BadRow {
    pub row: usize,
    pub reason: String,
}

/// The first row of `logits` (row-major, `classes` per row) holding a NaN
/// or `+∞`, or only `−∞`. Rows are checked in parallel.
pub(crate) fn check_rows(logits: &[f32], classes: usize) -> Result<(), BadRow> {
    let found = logits
        .par_chunks(classes)
        .enumerate()
        .with_min_len(ROWS_PER_TASK)
        .find_map_first(|(row, values)| row_problem(values).map(|reason| BadRow { row, reason }));
    found.map_or(Ok(()), Err)
}

/// Why one row cannot be a teacher's, if it cannot.
fn row_problem(values: &[f32]) -> Option<String> {
    // Branch-free over blocks (it vectorises); the value is looked up only
    // for a bad row.
    let (mut bad, mut max) = ([false; BLOCK], [f32::NEG_INFINITY; BLOCK]);
    let blocks = values.chunks_exact(BLOCK);
    let rest = blocks.remainder();
    for block in blocks {
        for ((bad, max), &v) in bad.iter_mut().zip(&mut max).zip(block) {
            *bad |= is_bad(v);
            *max = if v > *max { v } else { *max };
        }
    }
    for (i, &v) in rest.iter().enumerate() {
        bad[i] |= is_bad(v);
        max[i] = if v > max[i] { v } else { max[i] };
    }
    if bad.contains(&true) {
        let v = values.iter().find(|v| is_bad(**v)).expect("one");
        return Some(format!("it holds the logit {v}"));
    }
    max.iter()
        .all(|&m| m == f32::NEG_INFINITY)
        .then(|| "every logit is -inf".into())
}

/// A logit no teacher gives: NaN or `+∞`.
#[inline(always)]
fn is_bad(v: f32) -> bool {
    // `|`, not `||`: no branch.
    v.is_nan() | (v == f32::INFINITY)
}

/// The top `k` classes of each row of `logits` (row-major, `classes` per
/// row) and their log-probabilities `(v − max)/T − ln Σ exp((v − max)/T)`,
/// with each row's tail mass if asked for (`refuse_bad_rows` is
/// [`check_rows`]' business, before).
///
/// A row holding a NaN or `+∞`, or only `−∞`, gets NaN log-probabilities
/// (and tail), as a log-softmax of it does; its classes are still `k`
/// distinct ones. Requires `1 ≤ k ≤ classes` and whole rows.
pub(crate) fn top_k_rows(logits: &[f32], classes: usize, selection: &Selection) -> TopKRows {
    let Selection {
        k,
        temperature,
        with_tails,
        ..
    } = *selection;
    assert!(
        (1..=classes).contains(&k) && logits.len().is_multiple_of(classes),
        "top_k_rows: k = {k} of {classes} classes, {} logits",
        logits.len()
    );
    let rows = logits.len() / classes;
    let mut out = TopKRows {
        indices: vec![0; rows * k],
        log_probs: vec![0.0; rows * k],
        tails: vec![0.0; rows],
    };
    logits
        .par_chunks(classes)
        .zip(out.indices.par_chunks_mut(k))
        .zip(out.log_probs.par_chunks_mut(k))
        .zip(out.tails.par_iter_mut())
        .with_min_len(ROWS_PER_TASK)
        .for_each_init(
            || Scratch::new(k, with_tails.then_some(classes)),
            |scratch, (((row, indices), log_probs), tail)| {
                *tail = scratch.row(row, temperature, indices, log_probs);
            },
        );
    if !with_tails {
        out.tails.clear();
    }
    out
}

/// One task's buffers, reused from row to row.
struct Scratch {
    heap: BinaryHeap<Reverse<u64>>,
    /// The row's `k` best, as [`sort_key`]s, largest first.
    best: Vec<u64>,
    /// The row's exponentials, for the tail; `None`: no tail asked.
    exps: Option<Vec<f32>>,
}

impl Scratch {
    fn new(k: usize, tail_classes: Option<usize>) -> Self {
        Self {
            heap: BinaryHeap::with_capacity(k + 1),
            best: Vec::with_capacity(k),
            exps: tail_classes.map(Vec::with_capacity),
        }
    }

    /// Fills one row's `indices` and `log_probs`; returns its tail (0 when
    /// not asked for).
    fn row(
        &mut self,
        logits: &[f32],
        temperature: f64,
        indices: &mut [i64],
        log_probs: &mut [f32],
    ) -> f32 {
        self.select(logits, indices.len());
        let max = value_of(self.best[0]);
        // 1/T beyond f32 (T < 3e-39) would make the maximum's (v − max)·(1/T)
        // a NaN; f32::MAX keeps it 0 and every other term 0 after exp.
        let inv_t = ((1.0 / temperature) as f32).min(f32::MAX);
        let total = match &mut self.exps {
            None => sum_exp_shifted(logits, max, inv_t),
            Some(exps) => {
                exps.clear();
                exps.extend(logits.iter().map(|&v| exp((v - max) * inv_t)));
                sum_f64(exps)
            }
        };
        let log_sum = total.ln();
        for ((index, log_prob), &key) in indices.iter_mut().zip(log_probs).zip(&self.best) {
            *index = class_of(key) as i64;
            let v = value_of(key) as f64;
            *log_prob = ((v - max as f64) / temperature - log_sum) as f32;
        }
        match &mut self.exps {
            None => 0.0,
            Some(exps) => {
                for &key in &self.best {
                    exps[class_of(key)] = 0.0;
                }
                (sum_f64(exps) / total) as f32
            }
        }
    }

    /// Leaves in `best` the keys of the `k` largest logits, largest first.
    fn select(&mut self, logits: &[f32], k: usize) {
        let heap = &mut self.heap;
        heap.clear();
        // Min-heap of sortable keys: the first k classes, then whoever beats
        // its smallest. A class later in the row wins only with a strictly
        // larger logit (ties go to the smaller class), so `v > bar` decides.
        heap.extend((0..k).map(|class| Reverse(sort_key(logits[class], class))));
        let mut bar = smallest(heap);
        let mut start = k;
        let mut offer = |class: usize, v: f32, bar: &mut f32| {
            if v > *bar {
                heap.pop();
                heap.push(Reverse(sort_key(v, class)));
                *bar = smallest(heap);
            }
        };
        while start + BLOCK <= logits.len() {
            let block: &[f32; BLOCK] = logits[start..start + BLOCK].try_into().expect("a block");
            // `>` rather than `f32::max`: a NaN compares false and is skipped
            // (its row's log-probabilities are NaN anyway), and it vectorises.
            let largest = block
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            if largest > bar {
                for (i, &v) in block.iter().enumerate() {
                    offer(start + i, v, &mut bar);
                }
            }
            start += BLOCK;
        }
        for (i, &v) in logits[start..].iter().enumerate() {
            offer(start + i, v, &mut bar);
        }
        self.best.clear();
        self.best.extend(heap.drain().map(|Reverse(key)| key));
        // Descending keys: the largest logit first, then the smaller class.
        self.best.sort_unstable_by(|a, b| b.cmp(a));
    }
}

/// A key that orders logits as numbers (a NaN with its sign bit clear above
/// `+∞`, set below `−∞`), then classes in reverse: the larger key wins, and
/// among equal logits the smaller class.
fn sort_key(value: f32, class: usize) -> u64 {
    let bits = value.to_bits();
    let ordered = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    };
    ((ordered as u64) << 32) | (u32::MAX - class as u32) as u64
}

/// The logit a [`sort_key`] was made of.
fn value_of(key: u64) -> f32 {
    let ordered = (key >> 32) as u32;
    f32::from_bits(if ordered >> 31 == 1 {
        ordered & !(1 << 31)
    } else {
        !ordered
    })
}

/// The class a [`sort_key`] was made of.
fn class_of(key: u64) -> usize {
    (u32::MAX - key as u32) as usize
}

/// The heap's smallest logit: the bar a later class must beat.
fn smallest(heap: &BinaryHeap<Reverse<u64>>) -> f32 {
    value_of(heap.peek().expect("k ≥ 1").0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(
        logits: &[f32],
        classes: usize,
        k: usize,
        temperature: f64,
        with_tails: bool,
    ) -> TopKRows {
        let selection = Selection {
            k,
            temperature,
            with_tails,
            refuse_bad_rows: false,
        };
        top_k_rows(logits, classes, &selection)
    }

    /// The plain definition: sort every class by logit (then class), take k.
    fn sorted_top_k(row: &[f32], k: usize) -> Vec<i64> {
        let mut classes: Vec<usize> = (0..row.len()).collect();
        classes.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        classes[..k].iter().map(|&c| c as i64).collect()
    }

    /// A deterministic pseudo-random row (xorshift), with repeated values.
    fn row(seed: u64, classes: usize, levels: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..classes)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % levels) as f32 * 0.37 - 5.0
            })
            .collect()
    }

    #[test]
    fn keys_round_trip_and_order_as_numbers() {
        let values = [
            f32::NEG_INFINITY,
            -3.5,
            -0.0,
            0.0,
            1e-30,
            2.0,
            f32::INFINITY,
        ];
        for pair in values.windows(2) {
            assert!(sort_key(pair[1], 0) > sort_key(pair[0], 0), "{pair:?}");
        }
        for (class, &v) in values.iter().enumerate() {
            let key = sort_key(v, class);
            assert_eq!(value_of(key).to_bits(), v.to_bits());
            assert_eq!(class_of(key), class);
        }
        // Equal logits: the smaller class has the larger key.
        assert!(sort_key(1.0, 3) > sort_key(1.0, 4));
    }

    /// Against sorting every row, over sizes around the block length, ties,
    /// ascending rows (every class enters the heap) and k = classes.
    #[test]
    fn selects_what_sorting_selects() {
        for classes in [1, 2, 15, 16, 17, 33, 100, 1000] {
            for k in [1, 2, 5, 16, classes] {
                if k > classes {
                    continue;
                }
                for (seed, levels) in [(1, 1_000_000), (2, 7), (3, 2)] {
                    let logits = row(seed + classes as u64, classes, levels);
                    let got = select(&logits, classes, k, 1.0, false);
                    assert_eq!(
                        got.indices,
                        sorted_top_k(&logits, k),
                        "{classes} {k} {levels}"
                    );
                }
                let ascending: Vec<f32> = (0..classes).map(|c| c as f32).collect();
                let got = select(&ascending, classes, k, 1.0, false);
                assert_eq!(got.indices, sorted_top_k(&ascending, k));
            }
        }
    }

    /// Log-probabilities and tails against a float64 log-softmax written out.
    #[test]
    fn log_probs_and_tails_match_float64() {
        let (classes, k, t) = (300, 7, 2.5);
        let logits: Vec<f32> = (0..3).flat_map(|r| row(10 + r, classes, 1 << 20)).collect();
        let got = select(&logits, classes, k, t, true);
        for (r, logits) in logits.chunks(classes).enumerate() {
            let max = logits
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let total: f64 = logits.iter().map(|&v| ((v as f64 - max) / t).exp()).sum();
            let kept = &got.indices[r * k..(r + 1) * k];
            let mut tail = 0.0;
            for (c, &v) in logits.iter().enumerate() {
                let log_p = (v as f64 - max) / t - total.ln();
                match kept.iter().position(|&i| i as usize == c) {
                    Some(j) => {
                        let found = got.log_probs[r * k + j] as f64;
                        assert!(
                            (found - log_p).abs() <= 2e-6 * log_p.abs().max(1.0),
                            "{r} {c}"
                        );
                    }
                    None => tail += log_p.exp(),
                }
            }
            assert!((got.tails[r] as f64 - tail).abs() <= 2e-6 * tail, "{r}");
        }
    }

    /// Bad rows give NaN values and k distinct valid classes; the good rows
    /// beside them are untouched.
    #[test]
    fn rows_with_nan_or_infinity_are_nan() {
        let classes = 40;
        let good = row(5, classes, 1000);
        let mut rows = good.clone();
        for bad in [f32::NAN, f32::INFINITY] {
            for at in [0, 20, 39] {
                let mut r = good.clone();
                r[at] = bad;
                rows.extend(r);
            }
        }
        rows.extend(vec![f32::NEG_INFINITY; classes]);
        let k = 3;
        let got = select(&rows, classes, k, 1.0, true);
        let reference = select(&good, classes, k, 1.0, true);
        assert_eq!(got.log_probs[..k], reference.log_probs[..]);
        for r in 1..rows.len() / classes {
            let values = &got.log_probs[r * k..(r + 1) * k];
            assert!(values.iter().all(|v| v.is_nan()), "row {r}: {values:?}");
            assert!(got.tails[r].is_nan(), "row {r}");
            let mut kept = got.indices[r * k..(r + 1) * k].to_vec();
            kept.sort();
            kept.dedup();
            assert_eq!(kept.len(), k, "row {r}");
            assert!(kept.iter().all(|&c| (0..classes as i64).contains(&c)));
        }
    }

    /// `−∞` logits among finite ones are classes of probability 0.
    #[test]
    fn negative_infinity_is_probability_zero() {
        let logits = [0.0, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
        let got = select(&logits, 4, 3, 1.0, true);
        assert_eq!(got.indices, [0, 2, 1]);
        let half = 0.5f64.ln() as f32;
        assert_eq!(got.log_probs, [half, half, f32::NEG_INFINITY]);
        assert_eq!(got.tails, [0.0]);
    }

    /// The store's refusals: the first bad row, named with its value.
    #[test]
    fn check_rows_names_the_first_bad_row() {
        let good = [1.0, f32::NEG_INFINITY, 0.0];
        assert_eq!(check_rows(&good, 3), Ok(()));
        for (bad, reason) in [
            ([0.0, f32::NAN, 1.0], "it holds the logit NaN"),
            ([f32::INFINITY, 0.0, 1.0], "it holds the logit inf"),
            ([f32::NEG_INFINITY; 3], "every logit is -inf"),
        ] {
            let rows: Vec<f32> = good
                .iter()
                .chain(&good)
                .chain(&bad)
                .chain(&bad)
                .copied()
                .collect();
            let found = check_rows(&rows, 3).unwrap_err();
            assert_eq!((found.row, found.reason.as_str()), (2, reason));
        }
    }
}
