//! The eq. 5 combiner on the host, for flex: rows are independent, so each is
//! solved on its own (in f64, on rayon's pool) and stops when its own `q`
//! settles. Same start, accelerated update, objective, `TINY` and stopping
//! rule as the tensor version in `combine.rs`.

use rayon::prelude::*;

use super::combine::TINY;

/// One specialist's data, flattened for the host.
pub(crate) struct HostSpecialist<'a> {
    /// Its classes, increasing.
    pub classes: &'a [usize],
    /// Membership per class of the full problem.
    pub member: Vec<bool>,
    /// Its probabilities `[B × (|S| + 1)]`, dustbin last.
    pub probs: Vec<f64>,
}

/// The host combiner's results.
pub(crate) struct HostCombined {
    pub q: Vec<f64>,
    pub objective: Vec<f64>,
    pub active: Vec<f64>,
    pub iterations: usize,
    pub trace: Vec<f64>,
}

pub(crate) fn combine_rows(
    generalist: &[f64],
    classes: usize,
    specialists: &[HostSpecialist],
    top_n: usize,
    max_iterations: usize,
    tolerance: f64,
) -> HostCombined {
    let batch = generalist.len() / classes;
    let m_count = specialists.len();
    if m_count == 0 {
        // Nothing to combine: q = p^g, whose objective KL(p^g ‖ p^g) is 0.
        return HostCombined {
            q: generalist.to_vec(),
            objective: vec![0.0; batch],
            active: Vec::new(),
            iterations: 0,
            trace: vec![0.0],
        };
    }
    // Blocks for rayon's global pool (burn-flex's and gemm's threads).
    let threads = if batch * classes >= 1 << 15 {
        rayon::current_num_threads().min(batch.max(1))
    } else {
        1
    };
    let per_thread = batch.div_ceil(threads.max(1)).max(1);
    let mut q = vec![0.0; batch * classes];
    let mut objective = vec![0.0; batch];
    let mut active = vec![0.0; batch * m_count];
    // Collected in block order, so that the summed trace is the same however
    // the blocks are scheduled.
    let traces: Vec<Vec<f64>> = q
        .par_chunks_mut(per_thread * classes)
        .zip(objective.par_chunks_mut(per_thread))
        .zip(active.par_chunks_mut(per_thread * m_count))
        .enumerate()
        .map(|(block, ((q, objective), active))| {
            let first = block * per_thread;
            let mut trace: Vec<f64> = Vec::new();
            for (local, row) in (first..first + objective.len()).enumerate() {
                let row_trace = solve_row(
                    &generalist[row * classes..(row + 1) * classes],
                    row,
                    specialists,
                    top_n,
                    max_iterations,
                    tolerance,
                    &mut q[local * classes..(local + 1) * classes],
                    &mut active[local * m_count..(local + 1) * m_count],
                );
                objective[local] = *row_trace.last().expect("initial objective");
                add_padded(&mut trace, &row_trace);
            }
            trace
        })
        .collect();
    let mut trace = Vec::new();
    for t in &traces {
        add_padded(&mut trace, t);
    }
    HostCombined {
        iterations: trace.len().saturating_sub(1),
        q,
        objective,
        active,
        trace,
    }
}

/// `total += row`, element by element; the shorter of the two is extended with
/// its last value (a row that converged keeps its final objective).
fn add_padded(total: &mut Vec<f64>, row: &[f64]) {
    let row_last = row.last().copied().unwrap_or(0.0);
    let len = total.len().max(row.len());
    let total_last = total.last().copied().unwrap_or(0.0);
    total.resize(len, total_last);
    for (i, t) in total.iter_mut().enumerate() {
        *t += row.get(i).copied().unwrap_or(row_last);
    }
}

/// Solves one row; writes `q` and the active flags, returns the row's
/// objective before the first and after each iteration.
#[allow(clippy::too_many_arguments)]
fn solve_row(
    pg: &[f64],
    row: usize,
    specialists: &[HostSpecialist],
    top_n: usize,
    max_iterations: usize,
    tolerance: f64,
    q: &mut [f64],
    active_out: &mut [f64],
) -> Vec<f64> {
    let classes = pg.len();
    // The generalist's top-n classes, in linear time.
    let mut order: Vec<usize> = (0..classes).collect();
    if top_n < classes {
        order.select_nth_unstable_by(top_n - 1, |&a, &b| pg[b].total_cmp(&pg[a]).then(a.cmp(&b)));
    }
    let top = &order[..top_n];
    let active: Vec<usize> = (0..specialists.len())
        .filter(|&m| top.iter().any(|&c| specialists[m].member[c]))
        .collect();
    for &m in &active {
        active_out[m] = 1.0;
    }
    let denominator = 1.0 + active.len() as f64;
    let probs = |m: usize| {
        let k = specialists[m].classes.len() + 1;
        &specialists[m].probs[row * k..(row + 1) * k]
    };

    // Start: the average of p^g and each active specialist spread over the
    // classes, its dustbin mass split in p^g's proportions (see `combine.rs`).
    q.copy_from_slice(pg);
    for &m in &active {
        let s = &specialists[m];
        let p = probs(m);
        let outside = classes - s.classes.len();
        if outside > 0 {
            let dustbin = p[s.classes.len()];
            let generalist_outside: f64 =
                (0..classes).filter(|&c| !s.member[c]).map(|c| pg[c]).sum();
            for (c, qc) in q.iter_mut().enumerate() {
                if !s.member[c] {
                    *qc += if generalist_outside > 0.0 {
                        dustbin * pg[c] / generalist_outside
                    } else {
                        dustbin / outside as f64
                    };
                }
            }
        }
        for (k, &c) in s.classes.iter().enumerate() {
            q[c] += p[k];
        }
    }
    q.iter_mut().for_each(|x| *x /= denominator);

    let objective = |q: &[f64]| row_objective(pg, q, &active, specialists, &probs);
    // The EM map: q_i ← [p^g_i + q_i·Σ_m r_d,m + Σ_{m ∋ i} (p^m_i − q_i·r_d,m)] / (1 + |A|),
    // where classes in S_m get p^m_i/q_i instead of the dustbin ratio r_d,m.
    let em = |q: &[f64], next: &mut [f64]| {
        let total: f64 = q.iter().sum();
        let mut dustbin_ratio_sum = 0.0;
        let mut dustbin_ratios = Vec::with_capacity(active.len());
        for &m in &active {
            let s = &specialists[m];
            let p = probs(m);
            let in_subset: f64 = s.classes.iter().map(|&c| q[c]).sum();
            let r = p[s.classes.len()] / (total - in_subset).max(TINY);
            dustbin_ratios.push(r);
            dustbin_ratio_sum += r;
        }
        for ((n, &g), &qc) in next.iter_mut().zip(pg).zip(q) {
            *n = g + qc * dustbin_ratio_sum;
        }
        for (&m, &r) in active.iter().zip(&dustbin_ratios) {
            let s = &specialists[m];
            let p = probs(m);
            for (k, &c) in s.classes.iter().enumerate() {
                next[c] += p[k] - q[c] * r;
            }
        }
        next.iter_mut().for_each(|n| *n /= denominator);
    };
    let largest_move = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
    };

    let mut trace = vec![objective(q)];
    let (mut q1, mut q2) = (vec![0.0; classes], vec![0.0; classes]);
    let (mut start, mut stepped) = (vec![0.0; classes], vec![0.0; classes]);
    for _ in 0..max_iterations {
        // One SQUAREM step (see `combine.rs`): two EM updates, an extrapolation
        // along them, one more EM update from there; q2 where that is worse.
        em(q, &mut q1);
        em(&q1, &mut q2);
        let (mut r_norm, mut v_norm) = (0.0f64, 0.0f64);
        for ((&q0, &a), &b) in q.iter().zip(&q1).zip(&q2) {
            r_norm += (a - q0) * (a - q0);
            let v = b - 2.0 * a + q0;
            v_norm += v * v;
        }
        let alpha = -(r_norm.sqrt() / v_norm.sqrt().max(TINY)).max(1.0);
        for (((x, &q0), &a), &b) in start.iter_mut().zip(q.iter()).zip(&q1).zip(&q2) {
            *x = q0 - 2.0 * alpha * (a - q0) + alpha * alpha * (b - 2.0 * a + q0);
        }
        // J at q2 once: the step's objective whichever point it keeps.
        let j_two_steps = objective(&q2);
        let extrapolated = start.iter().all(|&x| x >= 0.0) && {
            em(&start, &mut stepped);
            let j_stepped = objective(&stepped);
            j_stepped <= j_two_steps && {
                trace.push(j_stepped);
                true
            }
        };
        let change = if extrapolated {
            q.copy_from_slice(&stepped);
            largest_move(&stepped, &start)
        } else {
            q.copy_from_slice(&q2);
            trace.push(j_two_steps);
            largest_move(&q2, &q1)
        };
        if change < tolerance {
            break;
        }
    }
    trace
}

/// `KL(p^g ‖ q) + Σ_active KL(p^m ‖ A_m q)` for one row (0·log 0 = 0).
fn row_objective<'a>(
    pg: &[f64],
    q: &[f64],
    active: &[usize],
    specialists: &[HostSpecialist],
    probs: &impl Fn(usize) -> &'a [f64],
) -> f64 {
    let kl_term = |p: f64, q: f64| {
        if p > 0.0 {
            p * (p.ln() - q.max(TINY).ln())
        } else {
            0.0
        }
    };
    let mut j: f64 = pg.iter().zip(q).map(|(&p, &qc)| kl_term(p, qc)).sum();
    let total: f64 = q.iter().sum();
    for &m in active {
        let s = &specialists[m];
        let p = probs(m);
        let mut in_subset = 0.0;
        for (k, &c) in s.classes.iter().enumerate() {
            j += kl_term(p[k], q[c]);
            in_subset += q[c];
        }
        j += kl_term(p[s.classes.len()], total - in_subset);
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch large enough for several blocks on rayon's pool gives every
    /// row exactly what it gets solved alone (one block on the calling
    /// thread): the rows are independent, and the split must not mix them.
    #[test]
    fn blocks_on_the_pool_solve_each_row_as_alone() {
        let (batch, classes) = (4000, 10); // 40,000 elements: over the threshold
        let mut state = 7u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) + 0.01
        };
        let normalised = |row: Vec<f64>| {
            let sum: f64 = row.iter().sum();
            row.into_iter().map(|p| p / sum).collect::<Vec<f64>>()
        };
        let generalist: Vec<f64> = (0..batch)
            .flat_map(|_| normalised((0..classes).map(|_| uniform()).collect()))
            .collect();
        let subset = [1usize, 4, 7];
        let probs: Vec<f64> = (0..batch)
            .flat_map(|_| normalised((0..subset.len() + 1).map(|_| uniform()).collect()))
            .collect();
        let member: Vec<bool> = (0..classes).map(|c| subset.contains(&c)).collect();
        let specialist = |rows: std::ops::Range<usize>| HostSpecialist {
            classes: &subset,
            member: member.clone(),
            probs: probs[rows.start * 4..rows.end * 4].to_vec(),
        };
        let whole = combine_rows(&generalist, classes, &[specialist(0..batch)], 3, 50, 1e-9);
        for row in [0, 1, 1999, 2000, 3999] {
            let alone = combine_rows(
                &generalist[row * classes..(row + 1) * classes],
                classes,
                &[specialist(row..row + 1)],
                3,
                50,
                1e-9,
            );
            assert_eq!(
                &whole.q[row * classes..(row + 1) * classes],
                &alone.q[..],
                "row {row}"
            );
            assert_eq!(whole.objective[row], alone.objective[0], "row {row}");
            assert_eq!(whole.active[row], alone.active[0], "row {row}");
        }
        assert!(whole.iterations > 0);
    }
}
