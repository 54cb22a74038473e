//! The fused KD rows as CubeCL kernels, for burn's Cube backends (wgpu,
//! Vulkan, Metal, CUDA, ROCm): the same engine as the CPU kernel
//! ([`super::kernel`]) — the divergence a plug-in giving per class its value
//! term `t` and gradient factor `h`, the gradient `(f/T)(h − q Σh)` plus the
//! hard term's `softmax(z) − onehot` — with one cube of threads per row:
//! [`kd_rows_kernel`] for a dense teacher, [`kd_top_k_rows_kernel`] for a
//! top-k one, [`dkd_rows_kernel`] for DKD.
//!
//! Per row, the threads stride over the classes (any count: a thread past the
//! end does nothing) in up to three passes:
//! 1. online max and sum: the running maximum of the raw logits and
//!    `Σ e^{(x − max)/T}` rescaled whenever the maximum moves, for the
//!    student (at `T`, and at 1 for the hard term when `T ≠ 1`) and the
//!    teacher; merged across the cube in shared memory;
//! 2. `Σ t` and `Σ h` (skipped for forward KL, whose `Σ h = −Σ p = −1`);
//! 3. the gradient of each output column, and forward KL's value as the sum
//!    of its `kl_term`s.
//!
//! (These for the dense teacher; the other two kernels list their own.) So
//! forward KL reads each logit twice and writes each gradient once; the other
//! divergences read each logit three times, DKD twice. The maximum starts at the
//! lowest finite f32, not `−inf` (WGSL has no infinity literal), so a `−inf`
//! logit adds `e^{−inf} = 0` and never meets `−inf − (−inf)`. The per-class
//! terms are the CPU kernel's text (`divergence_table!` of
//! [`super::pointwise`], compiled here with `#[cube]`), and `exp` and `ln` are
//! its polynomials ([`exp`], [`ln`] on `kernel_math!` of [`super::math`]), not
//! the GPU's own, and
//! sums are f32 (the CPU kernel's are f64): the tests hold values and
//! gradients to 1e-4 of the CPU kernel's and of f64 at T = 1 to 4. The KLs
//! (forward, reverse, DKD's two) sum `kl_term`s of the log-ratio taken from
//! the logits' difference, each term of its share's size, so that a row of
//! two nearly agreeing models stays within 1e-5 of f64 at T = 1 to 100
//! (tested), where the plain terms `p (ln p − ln q)` cancel to 10⁻⁶ of their
//! size; the other divergences' terms still cancel there.

// The polynomial constants are Cephes' (as the CPU kernel's `fused::math`);
// kernel code has no `contains` or `std` constant paths.
#![allow(
    clippy::approx_constant,
    clippy::excessive_precision,
    clippy::manual_range_contains
)]

use cubecl::prelude::*;

use super::math::kernel_math;
pub(crate) use super::pointwise::Kind;
use super::pointwise::divergence_table;

/// What one compiled rows kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RowsConfig {
    pub divergence: Kind,
    /// Threads per row: a power of two.
    pub block: u32,
    /// Output columns: 1 or 2.
    pub columns: u32,
    /// Whether there are labels (a hard term).
    pub with_labels: bool,
    /// Labels and `T ≠ 1`: the hard term's softmax needs its own sum.
    pub separate_hard: bool,
    /// Whether to write the gradients.
    pub with_gradients: bool,
}

// The shared polynomial cores (`exp_remainder`, `ln_normal`) and the
// divergence table (`terms`, `xlog`), compiled as CubeCL functions.
kernel_math!(#[cube]);
divergence_table!(#[cube]; [#[comptime]]);

#[cube]
fn to_bits(x: f32) -> u32 {
    u32::reinterpret(x)
}

#[cube]
fn from_bits(bits: u32) -> f32 {
    f32::reinterpret(bits)
}

#[cube]
fn float_of(small: u32) -> f32 {
    f32::cast_from(small)
}

/// `e^x` for `x ≤ 88` to a few ulp, `−inf` → 0: the CPU kernel's `exp`
/// (`fused::math`, the same `exp_remainder`) with `n` rounded by `floor`, not
/// the CPU's 1.5·2²³ trick, which a GPU compiler may fold away as
/// `(a + c) − c = a`. A GPU's own `exp` may be off by `3 + 2|x|` ulp
/// (Vulkan's precision rules; lavapipe's is off by a few), and at a high
/// temperature the soft term's `T²` turns one ulp of a near-uniform row's sums
/// into 10⁻⁴ of its value.
#[cube]
fn exp(x: f32) -> f32 {
    let lowest = -87.33655f32;
    let clamped = f32::max(x, lowest);
    let n = f32::floor(clamped * 1.442695f32 + 0.5f32);
    let e_r = exp_remainder(clamped, n);
    // 2ⁿ from its exponent bits (n ≥ −126 after the clamp).
    let biased = u32::cast_from(i32::cast_from(n) + 127i32);
    let scale = f32::reinterpret(biased << 23u32);
    select(x < lowest, 0.0f32, e_r * scale)
}

/// `ln x` to a few ulp for normal `x > 0`: the CPU kernel's `ln_normal`
/// (`fused::math`). A GPU's own `log` may be off by 2⁻²¹ in absolute terms
/// (Vulkan's precision rules; Mesa's lavapipe is), an error the soft term's
/// `T²` multiplies by hundreds at high temperatures. Zero, subnormal, infinite
/// and NaN arguments take the built-in `ln` (WGSL has no infinity literal to
/// select).
#[cube]
fn ln(x: f32) -> f32 {
    let normal = x >= 1.1754944e-38f32 && x <= 3.4028235e38f32;
    select(normal, ln_normal(x), f32::ln(x))
}

/// `w · term`, exactly 0 when the weight is 0 (even for an infinite term).
#[cube]
fn part(w: f32, term: f32) -> f32 {
    select(w == 0.0f32, 0.0f32, w * term)
}

/// The two output columns' coefficients of the soft and the hard term.
#[derive(CubeType, Clone, Copy)]
struct Weights {
    soft0: f32,
    hard0: f32,
    soft1: f32,
    hard1: f32,
}

/// The hard term's gradient factor `softmax(z)_i − [i = label]` for one
/// class (`shifted = z_i − max z`), 0 without labels: the softmax at T = 1 is
/// `q` unless the temperature differs (then from its own sum's inverse).
#[cube]
fn hard_gradient(
    shifted: f32,
    q: f32,
    inv_sum_one: f32,
    is_label: bool,
    #[comptime] config: RowsConfig,
) -> f32 {
    let mut hard = 0.0f32;
    if comptime!(config.with_labels) {
        let softmax_one = if comptime!(config.separate_hard) {
            exp(shifted) * inv_sum_one
        } else {
            q
        };
        hard = softmax_one - select(is_label, 1.0f32, 0.0f32);
    }
    hard
}

/// Writes one class's gradient of each output column: `c_s,k · soft + w_h,k ·
/// hard` for the `coefficients` `c_s,k` (soft) and `w_h,k` (hard); 0 where the row
/// is not `kept`.
#[allow(clippy::too_many_arguments)]
#[cube]
fn write_gradient<F: Float>(
    grad0: &mut Tensor<F>,
    grad1: &mut Tensor<F>,
    index: usize,
    soft: f32,
    hard: f32,
    coefficients: Weights,
    kept: bool,
    #[comptime] columns: u32,
) {
    let g0 = part(coefficients.soft0, soft) + part(coefficients.hard0, hard);
    grad0[index] = F::cast_from(select(kept, g0, 0.0f32));
    if comptime!(columns == 2) {
        let g1 = part(coefficients.soft1, soft) + part(coefficients.hard1, hard);
        grad1[index] = F::cast_from(select(kept, g1, 0.0f32));
    }
}

/// Writes one row's value columns `w_s,k · soft + w_h,k · CE + poison` for
/// the `weights` (`poison`: 0, or NaN for a bad row).
#[cube]
fn write_values(
    values: &mut Tensor<f32>,
    row: usize,
    soft_value: f32,
    cross_entropy: f32,
    weights: Weights,
    poison: f32,
    #[comptime] columns: u32,
) {
    let width = comptime!(columns) as usize;
    values[row * width] =
        part(weights.soft0, soft_value) + part(weights.hard0, cross_entropy) + poison;
    if comptime!(columns == 2) {
        values[row * width + 1] =
            part(weights.soft1, soft_value) + part(weights.hard1, cross_entropy) + poison;
    }
}

/// Sorts `keys` (`padded` entries, a power of two) ascending in shared
/// memory, moving `values` with them: a bitonic network, every thread taking
/// pairs, a barrier after each step (all threads take part in every one).
#[cube]
fn sort_stored(keys: &mut Shared<[u32]>, values: &mut Shared<[u32]>, padded: usize) {
    sync_cube();
    let block = CUBE_DIM_X as usize;
    let mut size = 2usize;
    while size <= padded {
        let mut stride = size / 2;
        while stride > 0 {
            let mut t = UNIT_POS_X as usize;
            while t < padded / 2 {
                // The pair (i, i + stride), i with its `stride` bit clear.
                let i = 2 * stride * (t / stride) + t % stride;
                let partner = i + stride;
                let a = keys[i];
                let b = keys[partner];
                let ascending = (i & size) == 0;
                let out_of_order = (ascending && a > b) || (!ascending && a < b);
                if out_of_order {
                    keys[i] = b;
                    keys[partner] = a;
                    let v = values[i];
                    values[i] = values[partner];
                    values[partner] = v;
                }
                t += block;
            }
            sync_cube();
            stride /= 2;
        }
        size *= 2;
    }
}

/// The position of `class` among the sorted `keys` (`padded` entries), or a
/// position holding a larger key (`≥` the stored count when it is not stored):
/// the lower bound by binary search.
#[cube]
fn find_stored(keys: &Shared<[u32]>, class: u32, padded: usize) -> usize {
    let mut low = 0usize;
    let mut high = padded;
    while low < high {
        let middle = (low + high) / 2;
        if keys[middle] < class {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    // `low` is the first key ≥ class: the class itself, or past it.
    let mut found = padded;
    // Nested: kernel code's `&&` evaluates both sides, and `keys[padded]`
    // is past the end.
    #[allow(clippy::collapsible_if)]
    if low < padded {
        if keys[low] == class {
            found = low;
        }
    }
    found
}

/// Sums `a` and `b` over the cube's threads (a power of two) in shared memory; every
/// thread gets the totals.
#[cube]
fn block_sums(
    a: f32,
    b: f32,
    shared_a: &mut Shared<[f32]>,
    shared_b: &mut Shared<[f32]>,
) -> (f32, f32) {
    let tid = UNIT_POS_X as usize;
    shared_a[tid] = a;
    shared_b[tid] = b;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if tid < stride {
            shared_a[tid] += shared_a[tid + stride];
            shared_b[tid] += shared_b[tid + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let total_a = shared_a[0];
    let total_b = shared_b[0];
    // Every thread has read the totals before the memory is written again.
    sync_cube();
    (total_a, total_b)
}

/// One row per cube: the output columns `values[row, k] = w_s,k · f · Σt +
/// w_h,k · CE` (f32) and, when asked, each column's gradient with respect to
/// the student, in the student's dtype. `student`, `teacher`: `[rows,
/// classes]`, contiguous, f32, f16 or bf16 each (read into f32: every sum and
/// product is f32);
/// `labels` `[rows]` (unread without labels); `grad0`, `grad1` `[rows,
/// classes]` (1-element placeholders where not written).
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
pub(crate) fn kd_rows_kernel<F: Float, G: Float, I: Int>(
    student: &Tensor<F>,
    teacher: &Tensor<G>,
    labels: &Tensor<I>,
    values: &mut Tensor<f32>,
    grad0: &mut Tensor<F>,
    grad1: &mut Tensor<F>,
    inv_t: f32,
    inv_t_teacher: f32,
    soft_factor: f32,
    mix: f32,
    scale: f32,
    soft_weight0: f32,
    hard_weight0: f32,
    soft_weight1: f32,
    hard_weight1: f32,
    #[comptime] config: RowsConfig,
    #[define(F, G, I)] _dtypes: [ElemType; 3],
) {
    let rows = student.shape(0);
    let classes = student.shape(1);
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let tid = UNIT_POS_X as usize;
    let block = comptime!(config.block) as usize;
    let z_start = row * classes;
    let lowest = f32::min_value();

    // Pass 1: online maxima and sums.
    let mut max_z = lowest;
    let mut sum_z = 0.0f32;
    let mut sum_one = 0.0f32;
    let mut max_v = lowest;
    let mut sum_v = 0.0f32;
    let mut i = UNIT_POS_X as usize;
    while i < classes {
        let z = f32::cast_from(student[z_start + i]);
        let v = f32::cast_from(teacher[z_start + i]);
        if z > max_z {
            sum_z = sum_z * exp((max_z - z) * inv_t) + 1.0f32;
            if comptime!(config.separate_hard) {
                sum_one = sum_one * exp(max_z - z) + 1.0f32;
            }
            max_z = z;
        } else {
            sum_z += exp((z - max_z) * inv_t);
            if comptime!(config.separate_hard) {
                sum_one += exp(z - max_z);
            }
        }
        if v > max_v {
            sum_v = sum_v * exp((max_v - v) * inv_t_teacher) + 1.0f32;
            max_v = v;
        } else {
            sum_v += exp((v - max_v) * inv_t_teacher);
        }
        i += block;
    }
    let mut shared_max_z = Shared::<[f32]>::new_slice(comptime!(config.block as usize));
    let mut shared_sum_z = Shared::<[f32]>::new_slice(comptime!(config.block as usize));
    let mut shared_sum_one = Shared::<[f32]>::new_slice(comptime!(config.block as usize));
    let mut shared_max_v = Shared::<[f32]>::new_slice(comptime!(config.block as usize));
    let mut shared_sum_v = Shared::<[f32]>::new_slice(comptime!(config.block as usize));
    shared_max_z[tid] = max_z;
    shared_sum_z[tid] = sum_z;
    shared_sum_one[tid] = sum_one;
    shared_max_v[tid] = max_v;
    shared_sum_v[tid] = sum_v;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if tid < stride {
            let other = tid + stride;
            let a = shared_max_z[tid];
            let b = shared_max_z[other];
            let m = f32::max(a, b);
            shared_sum_z[tid] = shared_sum_z[tid] * exp((a - m) * inv_t)
                + shared_sum_z[other] * exp((b - m) * inv_t);
            if comptime!(config.separate_hard) {
                shared_sum_one[tid] =
                    shared_sum_one[tid] * exp(a - m) + shared_sum_one[other] * exp(b - m);
            }
            shared_max_z[tid] = m;
            let a = shared_max_v[tid];
            let b = shared_max_v[other];
            let m = f32::max(a, b);
            shared_sum_v[tid] = shared_sum_v[tid] * exp((a - m) * inv_t_teacher)
                + shared_sum_v[other] * exp((b - m) * inv_t_teacher);
            shared_max_v[tid] = m;
        }
        sync_cube();
        stride /= 2;
    }
    let max_z = shared_max_z[0];
    let sum_z_total = shared_sum_z[0];
    let sum_v_total = shared_sum_v[0];
    let ln_sum_z = ln(sum_z_total);
    let max_v = shared_max_v[0];
    let ln_sum_v = ln(sum_v_total);
    let mut sum_one = shared_sum_z[0];
    if comptime!(config.separate_hard) {
        sum_one = shared_sum_one[0];
    }
    sync_cube();

    // `ln p − ln q` from the logits' difference where both share the
    // temperature (see `log_ratio`).
    let same_temperature = inv_t == inv_t_teacher;
    let shift = (max_v - max_z) * inv_t + (ln_sum_v - ln_sum_z);

    // Pass 2 (not forward KL): Σt and Σh.
    let mut sum_t = 0.0f32;
    let mut sum_h = f32::new(-1.0);
    if comptime!(config.divergence != Kind::ForwardKl) {
        let mut acc_t = 0.0f32;
        let mut acc_h = 0.0f32;
        let mut i = UNIT_POS_X as usize;
        while i < classes {
            let z = f32::cast_from(student[z_start + i]);
            let v = f32::cast_from(teacher[z_start + i]);
            let lq = (z - max_z) * inv_t - ln_sum_z;
            let lp = (v - max_v) * inv_t_teacher - ln_sum_v;
            let g = log_ratio(v - z, lp, lq, inv_t, shift, same_temperature);
            let (t, h) = terms(
                exp(lp),
                exp(lq),
                g,
                mix,
                scale,
                comptime!(config.divergence),
            );
            acc_t += t;
            acc_h += h;
            i += block;
        }
        let (total_t, total_h) = block_sums(acc_t, acc_h, &mut shared_sum_z, &mut shared_sum_v);
        sum_t = total_t;
        sum_h = total_h;
    }

    // Last pass: the gradients; for forward KL also its value, the sum of
    // its `kl_term`s.
    // Without labels no class is the label.
    let mut label = classes;
    if comptime!(config.with_labels) {
        label = u32::cast_from(labels[row]) as usize;
    }
    let soft_coef0 = soft_weight0 * soft_factor * inv_t;
    let soft_coef1 = soft_weight1 * soft_factor * inv_t;
    let inv_sum_one = 1.0f32 / sum_one;
    let inv_sum_z = 1.0f32 / sum_z_total;
    let inv_sum_v = 1.0f32 / sum_v_total;
    let forward_kl = comptime!(config.divergence == Kind::ForwardKl);
    if comptime!(config.with_gradients || forward_kl) {
        let mut acc_t = 0.0f32;
        let mut i = UNIT_POS_X as usize;
        while i < classes {
            let z = f32::cast_from(student[z_start + i]);
            let v = f32::cast_from(teacher[z_start + i]);
            let b = (z - max_z) * inv_t;
            let a = (v - max_v) * inv_t_teacher;
            let lq = b - ln_sum_z;
            let lp = a - ln_sum_v;
            let g = log_ratio(v - z, lp, lq, inv_t, shift, same_temperature);
            let mut q = 0.0f32;
            let mut h = 0.0f32;
            if comptime!(forward_kl) {
                let p = exp(a) * inv_sum_v;
                q = exp(b) * inv_sum_z;
                acc_t += kl_term(p, q, g);
                h = 0.0f32 - p;
            } else if comptime!(config.with_gradients) {
                q = exp(lq);
                let (_t, factor) = terms(exp(lp), q, g, mix, scale, comptime!(config.divergence));
                h = factor;
            }
            if comptime!(config.with_gradients) {
                let hard = hard_gradient(z - max_z, q, inv_sum_one, i == label, config);
                write_gradient(
                    grad0,
                    grad1,
                    z_start + i,
                    h - q * sum_h,
                    hard,
                    Weights {
                        soft0: soft_coef0,
                        hard0: hard_weight0,
                        soft1: soft_coef1,
                        hard1: hard_weight1,
                    },
                    true,
                    config.columns,
                );
            }
            i += block;
        }
        if comptime!(forward_kl) {
            let (total_t, _unused) =
                block_sums(acc_t, 0.0f32, &mut shared_sum_z, &mut shared_sum_v);
            sum_t = total_t;
        }
    }

    if tid == 0 {
        let soft_value = soft_factor * sum_t;
        let mut cross_entropy = 0.0f32;
        if comptime!(config.with_labels) {
            cross_entropy = ln(sum_one) - (f32::cast_from(student[z_start + label]) - max_z);
        }
        write_values(
            values,
            row,
            soft_value,
            cross_entropy,
            Weights {
                soft0: soft_weight0,
                hard0: hard_weight0,
                soft1: soft_weight1,
                hard1: hard_weight1,
            },
            0.0f32,
            config.columns,
        );
    }
}

/// Online maximum and sum: `(max, sum)` with `x` added, where `sum` is
/// `Σ e^{(x_i − max)·inv_t}` over what was added so far.
#[cube]
fn online_add(x: f32, max: f32, sum: f32, inv_t: f32) -> (f32, f32) {
    let mut new_max = max;
    let mut new_sum = sum;
    if x > max {
        new_sum = sum * exp((max - x) * inv_t) + 1.0f32;
        new_max = x;
    } else {
        new_sum += exp((x - max) * inv_t);
    }
    (new_max, new_sum)
}

/// Merges every thread's online `(max, sum)` across the cube (a power of
/// two) in shared memory; every thread gets the totals.
#[cube]
fn merge_online(
    max: f32,
    sum: f32,
    inv_t: f32,
    shared_max: &mut Shared<[f32]>,
    shared_sum: &mut Shared<[f32]>,
) -> (f32, f32) {
    let tid = UNIT_POS_X as usize;
    shared_max[tid] = max;
    shared_sum[tid] = sum;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if tid < stride {
            let other = tid + stride;
            let a = shared_max[tid];
            let b = shared_max[other];
            let m = f32::max(a, b);
            shared_sum[tid] =
                shared_sum[tid] * exp((a - m) * inv_t) + shared_sum[other] * exp((b - m) * inv_t);
            shared_max[tid] = m;
        }
        sync_cube();
        stride /= 2;
    }
    let total_max = shared_max[0];
    let total_sum = shared_sum[0];
    sync_cube();
    (total_max, total_sum)
}

/// One row per cube with a top-k teacher: the divergence over `k + 1`
/// buckets — the teacher's `k` stored classes and the tail ("everything
/// else") — as the CPU kernel's `top_k_terms` computes it, with the same
/// outputs as [`kd_rows_kernel`]. `log_probs`, `indices`: `[rows, k]`, the
/// teacher's log-probabilities at the temperature and their classes (in
/// range). Per row:
/// 1. the student's online maximum and sums (as the dense kernel's pass 1);
/// 2. the same over the classes outside the teacher's (each class looked up
///    by binary search among the `k`, sorted in shared memory), so that the student's tail mass
///    `Q_tail` is summed, not `1 − Σ q` (no cancellation), relative to its
///    own maximum (no underflow however far below the top classes it is);
/// 3. the buckets' `(t, h)` (threads over the `k` classes), the teacher's
///    tail `max(1 − Σ p, 0)`, the tail bucket's terms;
/// 4. the gradient: a stored class gets its bucket's `h`, a tail class
///    `q_i · h_tail / Q_tail`, then `(f/T)(h − q Σh)`
///    plus the hard term, as the dense kernel.
///
/// With `k = classes` the tail is empty (`p = q = 0`), as on the CPU. A row
/// with a class stored twice has NaN values and a zero gradient (`check`
/// refuses it; a forward does not read the classes to).
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
pub(crate) fn kd_top_k_rows_kernel<F: Float, G: Float, I: Int, J: Int>(
    student: &Tensor<F>,
    log_probs: &Tensor<G>,
    indices: &Tensor<J>,
    labels: &Tensor<I>,
    values: &mut Tensor<f32>,
    grad0: &mut Tensor<F>,
    grad1: &mut Tensor<F>,
    inv_t: f32,
    soft_factor: f32,
    mix: f32,
    scale: f32,
    soft_weight0: f32,
    hard_weight0: f32,
    soft_weight1: f32,
    hard_weight1: f32,
    #[comptime] config: RowsConfig,
    #[comptime] k: u32,
    #[define(F, G, I, J)] _dtypes: [ElemType; 4],
) {
    let rows = student.shape(0);
    let classes = student.shape(1);
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let tid = UNIT_POS_X as usize;
    let block = comptime!(config.block) as usize;
    let width = comptime!(k) as usize;
    let z_start = row * classes;
    let k_start = row * width;
    let lowest = f32::min_value();

    // The teacher's classes sorted (padded with u32::MAX to a power of two),
    // with each one's entry, for every thread's look-ups by binary search.
    let padded = comptime!(k.next_power_of_two()) as usize;
    let mut stored = Shared::<[u32]>::new_slice(comptime!(k.next_power_of_two() as usize));
    let mut entry = Shared::<[u32]>::new_slice(comptime!(k.next_power_of_two() as usize));
    let mut j = UNIT_POS_X as usize;
    while j < padded {
        let mut class = 0xffff_ffffu32;
        if j < width {
            class = u32::cast_from(indices[k_start + j]);
        }
        stored[j] = class;
        entry[j] = j as u32;
        j += block;
    }
    sort_stored(&mut stored, &mut entry, padded);
    // A class stored twice makes the row's values NaN: the forward does not
    // read the classes back to refuse it (`check` does).
    let mut twice = 0.0f32;
    let mut j = UNIT_POS_X as usize + 1;
    while j < width {
        twice += select(stored[j - 1] == stored[j], 1.0f32, 0.0f32);
        j += block;
    }

    // Pass 1: the student's online maximum and sums.
    let mut max_z = lowest;
    let mut sum_z = 0.0f32;
    let mut max_one = lowest;
    let mut sum_one = 0.0f32;
    let mut i = UNIT_POS_X as usize;
    while i < classes {
        let z = f32::cast_from(student[z_start + i]);
        let (m, s) = online_add(z, max_z, sum_z, inv_t);
        max_z = m;
        sum_z = s;
        if comptime!(config.separate_hard) {
            let (m1, s1) = online_add(z, max_one, sum_one, 1.0f32);
            max_one = m1;
            sum_one = s1;
        }
        i += block;
    }
    let mut shared_max = Shared::<[f32]>::new_slice(comptime!(config.block as usize));
    let mut shared_sum = Shared::<[f32]>::new_slice(comptime!(config.block as usize));
    let (max_z, sum_z_total) = merge_online(max_z, sum_z, inv_t, &mut shared_max, &mut shared_sum);
    let mut sum_one_total = sum_z_total;
    if comptime!(config.separate_hard) {
        // The same maximum as `max_z` (the raw logits'), summed at T = 1.
        let (_m, s) = merge_online(max_one, sum_one, 1.0f32, &mut shared_max, &mut shared_sum);
        sum_one_total = s;
    }
    let ln_sum_z = ln(sum_z_total);

    // Pass 2: the classes outside the teacher's (sorted before the sort's
    // last barrier).
    let mut max_out = lowest;
    let mut sum_out = 0.0f32;
    let mut i = UNIT_POS_X as usize;
    while i < classes {
        if find_stored(&stored, i as u32, padded) >= width {
            let (m, s) = online_add(
                f32::cast_from(student[z_start + i]),
                max_out,
                sum_out,
                inv_t,
            );
            max_out = m;
            sum_out = s;
        }
        i += block;
    }
    let (max_out, sum_out) =
        merge_online(max_out, sum_out, inv_t, &mut shared_max, &mut shared_sum);

    // Pass 3: the stored buckets, then the tail bucket.
    let mut acc_t = 0.0f32;
    let mut acc_h = 0.0f32;
    let mut acc_p = 0.0f32;
    let mut j = UNIT_POS_X as usize;
    while j < width {
        let lp = f32::cast_from(log_probs[k_start + entry[j] as usize]);
        let p = exp(lp);
        let class = stored[j] as usize;
        let lq = (f32::cast_from(student[z_start + class]) - max_z) * inv_t - ln_sum_z;
        let (t, h) = terms(
            p,
            exp(lq),
            lp - lq,
            mix,
            scale,
            comptime!(config.divergence),
        );
        acc_t += t;
        acc_h += h;
        acc_p += p;
        j += block;
    }
    let (stored_t, stored_h) = block_sums(acc_t, acc_h, &mut shared_max, &mut shared_sum);
    let (teacher_mass, repeats) = block_sums(acc_p, twice, &mut shared_max, &mut shared_sum);
    // A quiet NaN from its bits (WGSL has no NaN literal), added to the bad
    // row's values; its gradient is 0, as the other bad rows' (the crate's
    // "Checks").
    let bad_row = repeats > 0.0f32;
    let poison = select(bad_row, from_bits(0x7fc0_0000u32), 0.0f32);
    let empty_tail = width >= classes;
    let p_tail = select(empty_tail, 0.0f32, f32::max(1.0f32 - teacher_mass, 0.0f32));
    // `ln 0 = −inf`, taken of a run-time zero (WGSL has no infinity literal,
    // and CubeCL folds `ln` of a constant into one).
    let lp_tail = ln(p_tail);
    let lq_open = ln(sum_out) + (max_out - max_z) * inv_t - ln_sum_z;
    let q_tail = select(empty_tail, 0.0f32, exp(lq_open));
    let lq_tail = select(empty_tail, ln(q_tail), lq_open);
    let (t_tail, h_tail) = terms(
        p_tail,
        q_tail,
        lp_tail - lq_tail,
        mix,
        scale,
        comptime!(config.divergence),
    );
    let sum_t = stored_t + t_tail;
    let sum_h = stored_h + h_tail;
    // A tail class's factor `q_i h_tail / Q_tail = e^{(z_i − max_out)/T} h_tail / sum_out`.
    let tail_scale = select(sum_out > 0.0f32, h_tail / sum_out, 0.0f32);

    let mut label = classes;
    if comptime!(config.with_labels) {
        label = u32::cast_from(labels[row]) as usize;
    }
    if comptime!(config.with_gradients) {
        let soft_coef0 = soft_weight0 * soft_factor * inv_t;
        let soft_coef1 = soft_weight1 * soft_factor * inv_t;
        let inv_sum_one = 1.0f32 / sum_one_total;
        let mut i = UNIT_POS_X as usize;
        while i < classes {
            let z = f32::cast_from(student[z_start + i]);
            let lq = (z - max_z) * inv_t - ln_sum_z;
            let q = exp(lq);
            let position = find_stored(&stored, i as u32, padded);
            let mut factor = exp((z - max_out) * inv_t) * tail_scale;
            if position < width {
                let lp = f32::cast_from(log_probs[k_start + entry[position] as usize]);
                let (_t, h) = terms(
                    exp(lp),
                    q,
                    lp - lq,
                    mix,
                    scale,
                    comptime!(config.divergence),
                );
                factor = h;
            }
            let hard = hard_gradient(z - max_z, q, inv_sum_one, i == label, config);
            write_gradient(
                grad0,
                grad1,
                z_start + i,
                factor - q * sum_h,
                hard,
                Weights {
                    soft0: soft_coef0,
                    hard0: hard_weight0,
                    soft1: soft_coef1,
                    hard1: hard_weight1,
                },
                !bad_row,
                config.columns,
            );
            i += block;
        }
    }

    if tid == 0 {
        let soft_value = soft_factor * sum_t;
        let mut cross_entropy = 0.0f32;
        if comptime!(config.with_labels) {
            cross_entropy = ln(sum_one_total) - (f32::cast_from(student[z_start + label]) - max_z);
        }
        write_values(
            values,
            row,
            soft_value,
            cross_entropy,
            Weights {
                soft0: soft_weight0,
                hard0: hard_weight0,
                soft1: soft_weight1,
                hard1: hard_weight1,
            },
            poison,
            config.columns,
        );
    }
}

/// One row per cube for DKD (Zhao et al. 2022), as the CPU kernel's `dkd_row`
/// computes it, with label `y = labels[row]` (in range): `values[row, k] =
/// w_t,k · f · TCKD + w_n,k · f · NCKD` for the weights `(w_t, w_n)` of each
/// column (in the `soft`/`hard` weight slots) and, when asked, each column's
/// gradient. Per row:
/// 1. online maxima and sums of the non-target classes (`i ≠ y`) of student
///    and teacher, so that the binary logits `u_y = (x_y − max)/T` and
///    `u_rest = ln Σ_{i≠y} e^{(x_i − max)/T}` are exact however confident
///    either model is (no `1 − q_y` cancellation), and TCKD from them;
/// 2. NCKD, the forward KL of the renormalised non-target distributions
///    `p̂`, `q̂`, and the gradient, per unit of `f/T`:
///    `w_t (q_y − p_y)(δ_iy − q̂_i) + w_n (q̂_i − p̂_i)` (`q̂_y = p̂_y = 0`).
///
/// Both KLs are sums of [`kl_term`]s, each `≥ 0` and of the size of its
/// share of the result, so that the f32 sums keep their precision where the
/// two models nearly agree (high `T`: the plain `Σ p (ln p − ln q)` there
/// cancels terms `1/ε` times larger than the result). `f` (`soft_factor`) is
/// `T²`; the hard weights `w_n` multiply NCKD, not a cross-entropy (DKD has
/// none).
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
pub(crate) fn dkd_rows_kernel<F: Float, G: Float, I: Int>(
    student: &Tensor<F>,
    teacher: &Tensor<G>,
    labels: &Tensor<I>,
    values: &mut Tensor<f32>,
    grad0: &mut Tensor<F>,
    grad1: &mut Tensor<F>,
    inv_t: f32,
    inv_t_teacher: f32,
    soft_factor: f32,
    tckd_weight0: f32,
    nckd_weight0: f32,
    tckd_weight1: f32,
    nckd_weight1: f32,
    #[comptime] config: RowsConfig,
    #[define(F, G, I)] _dtypes: [ElemType; 3],
) {
    let rows = student.shape(0);
    let classes = student.shape(1);
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let tid = UNIT_POS_X as usize;
    let block = comptime!(config.block) as usize;
    let z_start = row * classes;
    let lowest = f32::min_value();
    let label = u32::cast_from(labels[row]) as usize;

    // Pass 1: the non-target classes' online maxima and sums.
    let mut max_z = lowest;
    let mut sum_z = 0.0f32;
    let mut max_v = lowest;
    let mut sum_v = 0.0f32;
    let mut i = UNIT_POS_X as usize;
    while i < classes {
        if i != label {
            let (m, s) = online_add(f32::cast_from(student[z_start + i]), max_z, sum_z, inv_t);
            max_z = m;
            sum_z = s;
            let (m, s) = online_add(
                f32::cast_from(teacher[z_start + i]),
                max_v,
                sum_v,
                inv_t_teacher,
            );
            max_v = m;
            sum_v = s;
        }
        i += block;
    }
    let mut shared_max = Shared::<[f32]>::new_slice(comptime!(config.block as usize));
    let mut shared_sum = Shared::<[f32]>::new_slice(comptime!(config.block as usize));
    let (max_z, sum_z) = merge_online(max_z, sum_z, inv_t, &mut shared_max, &mut shared_sum);
    let (max_v, sum_v) = merge_online(
        max_v,
        sum_v,
        inv_t_teacher,
        &mut shared_max,
        &mut shared_sum,
    );

    // ln Σ e^b and ln Σ e^a over the non-target classes: u_rest of each
    // model. (A shared rounding of both shifts every log ratio below alike,
    // which moves the sum of `kl_term`s only by its square.)
    let ln_sum_z = ln(sum_z);
    let ln_sum_v = ln(sum_v);

    // TCKD from the binary logits [u_y, u_rest] of each model.
    let (lq_y, lq_rest) = binary_log_probs(
        (f32::cast_from(student[z_start + label]) - max_z) * inv_t,
        ln_sum_z,
    );
    let (lp_y, lp_rest) = binary_log_probs(
        (f32::cast_from(teacher[z_start + label]) - max_v) * inv_t_teacher,
        ln_sum_v,
    );
    let p_y = exp(lp_y);
    let q_y = exp(lq_y);
    let tckd =
        kl_term(p_y, q_y, lp_y - lq_y) + kl_term(exp(lp_rest), exp(lq_rest), lp_rest - lq_rest);
    let target_gap = q_y - p_y;

    // Pass 2: NCKD's sums and the gradient.
    // Without non-target mass (every other class ruled out) q̂ or p̂ is 0.
    let inv_sum_z = select(sum_z > 0.0f32, 1.0f32 / sum_z, 0.0f32);
    let inv_sum_v = select(sum_v > 0.0f32, 1.0f32 / sum_v, 0.0f32);
    let coef = soft_factor * inv_t;
    let same_temperature = inv_t == inv_t_teacher;
    let shift = (max_v - max_z) * inv_t + (ln_sum_v - ln_sum_z);
    let mut acc_kl = 0.0f32;
    let mut i = UNIT_POS_X as usize;
    while i < classes {
        let mut tckd_gradient = target_gap;
        let mut nckd_gradient = 0.0f32;
        if i != label {
            let z = f32::cast_from(student[z_start + i]);
            let v = f32::cast_from(teacher[z_start + i]);
            let b = (z - max_z) * inv_t;
            let a = (v - max_v) * inv_t_teacher;
            let q_hat = exp(b) * inv_sum_z;
            let p_hat = exp(a) * inv_sum_v;
            let g = log_ratio(
                v - z,
                a - ln_sum_v,
                b - ln_sum_z,
                inv_t,
                shift,
                same_temperature,
            );
            acc_kl += kl_term(p_hat, q_hat, g);
            tckd_gradient = 0.0f32 - target_gap * q_hat;
            // NCKD is 0 without non-target mass in the teacher, and so is its gradient.
            nckd_gradient = select(sum_v > 0.0f32, q_hat - p_hat, 0.0f32);
        }
        if comptime!(config.with_gradients) {
            write_gradient(
                grad0,
                grad1,
                z_start + i,
                tckd_gradient,
                nckd_gradient,
                Weights {
                    soft0: tckd_weight0 * coef,
                    hard0: nckd_weight0 * coef,
                    soft1: tckd_weight1 * coef,
                    hard1: nckd_weight1 * coef,
                },
                true,
                config.columns,
            );
        }
        i += block;
    }
    let (terms_sum, _unused) = block_sums(acc_kl, 0.0f32, &mut shared_max, &mut shared_sum);
    // A teacher that rules out every non-target class has no p̂: NCKD 0 (its
    // terms would sum q̂ to 1).
    let nckd = select(sum_v > 0.0f32, terms_sum, 0.0f32);

    if tid == 0 {
        write_values(
            values,
            row,
            soft_factor * tckd,
            soft_factor * nckd,
            Weights {
                soft0: tckd_weight0,
                hard0: nckd_weight0,
                soft1: tckd_weight1,
                hard1: nckd_weight1,
            },
            0.0f32,
            config.columns,
        );
    }
}

/// `ln p − ln q` of one class: from the logits' difference `v − z` where
/// teacher and student share the temperature, `(v − z)/T − shift` with the
/// row's `shift = (max v − max z)/T + ln Σ_p − ln Σ_q` (rounded relative to
/// `v − z`, not to each log-probability: the KLs' terms are of its size where
/// p ≈ q, and a rounding of `shift` moves every class alike, which moves
/// their sum only by its square); `lp − lq` otherwise.
#[cube]
fn log_ratio(difference: f32, lp: f32, lq: f32, inv_t: f32, shift: f32, same: bool) -> f32 {
    select(same, difference * inv_t - shift, lp - lq)
}

/// The binary log-probabilities `[log b_y, log b_rest] = u − logaddexp(u_y,
/// u_rest)` of the logits `u_y`, `u_rest` (`u_rest` may be `−inf`).
#[cube]
fn binary_log_probs(u_y: f32, u_rest: f32) -> (f32, f32) {
    let top = f32::max(u_y, u_rest);
    let all = top + ln(exp(u_y - top) + exp(u_rest - top));
    (u_y - all, u_rest - all)
}

/// The backward pass in place: `grad0[b, :] ← u[b, 0]·grad0[b, :] (+
/// u[b, 1]·grad1[b, :])` for the upstream gradient `u` `[rows, columns]`,
/// a zero weight contributing exactly 0 (a masked row's own gradient may
/// not be finite).
#[cube(launch)]
pub(crate) fn weighted_gradient_kernel<F: Float>(
    grad0: &mut Tensor<F>,
    grad1: &Tensor<F>,
    upstream: &Tensor<f32>,
    #[comptime] columns: u32,
    #[define(F)] _dtype: ElemType,
) {
    let index = ABSOLUTE_POS;
    if index >= grad0.len() {
        terminate!();
    }
    let row = index / grad0.shape(1);
    let width = comptime!(columns) as usize;
    let mut g = part(upstream[row * width], f32::cast_from(grad0[index]));
    if comptime!(columns == 2) {
        g += part(upstream[row * width + 1], f32::cast_from(grad1[index]));
    }
    grad0[index] = F::cast_from(g);
}
