//! The fused KD rows as CubeCL kernels, for burn's Cube backends (wgpu,
//! Vulkan, Metal, CUDA, ROCm): the same engine as the CPU kernel
//! ([`super::kernel`]) — the divergence a plug-in giving per class its value
//! term `t` and gradient factor `h`, the gradient `(f/T)(h − q Σh)` plus the
//! hard term's `softmax(z) − onehot` — with one cube of threads per row.
//!
//! Per row, the threads stride over the classes (any count: a thread past the
//! end does nothing) in up to three passes:
//! 1. online max and sum: the running maximum of the raw logits and
//!    `Σ e^{(x − max)/T}` rescaled whenever the maximum moves, for the
//!    student (at `T`, and at 1 for the hard term when `T ≠ 1`) and the
//!    teacher; merged across the cube in shared memory;
//! 2. `Σ t` and `Σ h` (skipped for forward KL, whose `Σ h = −Σ p = −1`);
//! 3. the gradient of each output column, and forward KL's value as
//!    `Σ e^a (a − b) / Σ e^a − ln Σ e^a + ln Σ e^b` from sums taken in this
//!    pass (`a`, `b` the shifted, scaled logits).
//!
//! So forward KL reads each logit twice and writes each gradient once; the
//! other divergences read each logit three times. The maximum starts at the
//! lowest finite f32, not `−inf` (WGSL has no infinity literal), so a `−inf`
//! logit adds `e^{−inf} = 0` and never meets `−inf − (−inf)`. The per-class
//! terms are the CPU kernel's text (`divergence_table!` of
//! [`super::pointwise`], compiled here with `#[cube]`), and `exp` and `ln` are
//! its polynomials ([`exp`], [`ln`] on `kernel_math!` of [`super::math`]), not
//! the GPU's own, and
//! sums are f32 (the CPU kernel's are f64): the tests hold values and
//! gradients to 1e-4 of the CPU kernel's and of f64 at T = 1 to 4; at T = 20
//! the `T²` factor magnifies the rounding of a near-uniform row's sums to
//! about 5e-5 of the value (measured on lavapipe).

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

/// `e^x` for `x ≤ 0` to a few ulp, `−inf` → 0: the CPU kernel's `exp`
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

    // Pass 2 (not forward KL): Σt and Σh.
    let mut sum_t = 0.0f32;
    let mut sum_h = f32::new(-1.0);
    if comptime!(config.divergence != Kind::ForwardKl) {
        let mut acc_t = 0.0f32;
        let mut acc_h = 0.0f32;
        let mut i = UNIT_POS_X as usize;
        while i < classes {
            let lq = (f32::cast_from(student[z_start + i]) - max_z) * inv_t - ln_sum_z;
            let lp = (f32::cast_from(teacher[z_start + i]) - max_v) * inv_t_teacher - ln_sum_v;
            let (t, h) = terms(
                exp(lp),
                lp,
                exp(lq),
                lq,
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

    // Last pass: the gradients; for forward KL also its value, from sums
    // taken in this pass: with `a`, `b` the shifted, scaled logits,
    // `KL = Σ e^a (a − b) / Σ e^a − ln Σ e^a + ln Σ e^b`, every sum over the
    // same `e^a`, `e^b` (as the CPU kernel's are).
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
        let mut acc_weighted = 0.0f32;
        let mut acc_z = 0.0f32;
        let mut acc_v = 0.0f32;
        let mut i = UNIT_POS_X as usize;
        while i < classes {
            let z = f32::cast_from(student[z_start + i]);
            let b = (z - max_z) * inv_t;
            let a = (f32::cast_from(teacher[z_start + i]) - max_v) * inv_t_teacher;
            let lq = b - ln_sum_z;
            let lp = a - ln_sum_v;
            let mut q = 0.0f32;
            let mut h = 0.0f32;
            if comptime!(forward_kl) {
                let exp_a = exp(a);
                let exp_b = exp(b);
                acc_weighted += xlog(exp_a, a - b);
                acc_v += exp_a;
                acc_z += exp_b;
                q = exp_b * inv_sum_z;
                h = 0.0f32 - exp_a * inv_sum_v;
            } else if comptime!(config.with_gradients) {
                q = exp(lq);
                let (_t, factor) =
                    terms(exp(lp), lp, q, lq, mix, scale, comptime!(config.divergence));
                h = factor;
            }
            if comptime!(config.with_gradients) {
                let soft = h - q * sum_h;
                let mut hard = 0.0f32;
                if comptime!(config.with_labels) {
                    let softmax_one = if comptime!(config.separate_hard) {
                        exp(z - max_z) * inv_sum_one
                    } else {
                        q
                    };
                    hard = softmax_one - select(i == label, 1.0f32, 0.0f32);
                }
                grad0[z_start + i] =
                    F::cast_from(part(soft_coef0, soft) + part(hard_weight0, hard));
                if comptime!(config.columns == 2) {
                    grad1[z_start + i] =
                        F::cast_from(part(soft_coef1, soft) + part(hard_weight1, hard));
                }
            }
            i += block;
        }
        if comptime!(forward_kl) {
            let (weighted, total_v) =
                block_sums(acc_weighted, acc_v, &mut shared_sum_z, &mut shared_sum_v);
            let (total_z, _unused) =
                block_sums(acc_z, 0.0f32, &mut shared_sum_z, &mut shared_sum_v);
            sum_t = weighted / total_v - ln(total_v) + ln(total_z);
        }
    }

    if tid == 0 {
        let soft_value = soft_factor * sum_t;
        let mut cross_entropy = 0.0f32;
        if comptime!(config.with_labels) {
            cross_entropy = ln(sum_one) - (f32::cast_from(student[z_start + label]) - max_z);
        }
        let columns = comptime!(config.columns) as usize;
        values[row * columns] = part(soft_weight0, soft_value) + part(hard_weight0, cross_entropy);
        if comptime!(config.columns == 2) {
            values[row * columns + 1] =
                part(soft_weight1, soft_value) + part(hard_weight1, cross_entropy);
        }
    }
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
