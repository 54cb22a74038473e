//! Branch-free `exp` and `ln` for the fused kernels' row loops, written once
//! for both engines: polynomial approximations (Cephes' `expf` and `logf`)
//! built from arithmetic, bit operations and selects only. [`kernel_math`]
//! defines their cores; this module compiles them for the CPU kernel (inlined,
//! so that the compiler vectorises the loops they are inlined into — the
//! standard library's are calls, one element at a time) and the Cube kernel
//! compiles the same text as CubeCL functions. Only the range reduction's
//! rounding and the special values differ, by what each target can express.
//!
//! Accuracy, as tested: `exp` within 4 f32 ulp (relative) of f64 on
//! `[−87, 88]`; `ln` within 2 ulp of f64 (relative to `max(|ln x|, 1)`)
//! over every binade of normal f32 — on the CPU here, and on lavapipe by the
//! cube tests (`tests/suite/cube_kernel.rs`), which hold the Cube kernel to
//! 1e-4 of f64.

/// Defines, with the attributes given (`#[inline(always)]` on the CPU,
/// `#[cube]` for CubeCL), the two polynomial cores both engines share:
/// `exp_remainder(x, n) = e^(x − n·ln 2)` for `|x − n·ln 2| ≤ ln 2 / 2`
/// (Cephes `expf`'s degree-5 polynomial, `ln 2` in two parts) and
/// `ln_normal(x)` for normal positive `x` (Cephes `logf`: `x = 2^e·m`, `m` in
/// `[√½, √2)`, a degree-9 polynomial for `ln m`, `e·ln 2` in two parts).
/// The invoking module provides `select(bool, f32, f32)`, `to_bits`,
/// `from_bits` and `float_of(u32) -> f32` for its target.
macro_rules! kernel_math {
    ($(#[$attr:meta])*) => {
        /// `e^(x − n·ln 2)`, for `x − n·ln 2` within `±ln 2 / 2`.
        $(#[$attr])*
        fn exp_remainder(x: f32, n: f32) -> f32 {
            let r = x - n * 0.693_359_4f32 - n * -2.121_944_4e-4f32;
            let r2 = r * r;
            let p = ((((1.987_569_1e-4f32 * r + 1.398_199_9e-3f32) * r + 8.333_452e-3f32) * r
                + 4.166_579_6e-2f32)
                * r
                + 1.666_666_5e-1f32)
                * r
                + 0.5f32;
            p * r2 + r + 1.0f32
        }

        /// `ln x` for a normal positive `x` (anything else: a finite number).
        $(#[$attr])*
        fn ln_normal(x: f32) -> f32 {
            let bits = to_bits(x);
            // Mantissa in [0.5, 1), exponent to match (frexp).
            let mantissa = from_bits((bits & 8_388_607u32) | 1_056_964_608u32);
            let small = mantissa < 0.707_106_77f32;
            let e = float_of((bits >> 23u32) & 255u32) - 126.0f32 - select(small, 1.0f32, 0.0f32);
            let m = select(small, mantissa + mantissa - 1.0f32, mantissa - 1.0f32);
            let z = m * m;
            let poly = ((((((((7.037_683_6e-2f32 * m - 1.151_461e-1f32) * m + 1.167_699_9e-1f32)
                * m
                - 1.242_014_1e-1f32)
                * m
                + 1.424_932_3e-1f32)
                * m
                - 1.666_805_8e-1f32)
                * m
                + 2.000_071_5e-1f32)
                * m
                - 2.499_999_4e-1f32)
                * m
                + 3.333_333e-1f32)
                * m
                * z;
            let y = poly + -2.121_944_4e-4f32 * e - 0.5f32 * z;
            m + y + 0.693_359_4f32 * e
        }
    };
}
#[cfg(feature = "cube-kernel")]
pub(crate) use kernel_math;

kernel_math!(#[inline(always)]);

/// `if condition { a } else { b }`, both evaluated: the CPU's form of CubeCL's
/// `select`, so that the shared cores read the same on both targets.
#[inline(always)]
pub(crate) fn select(condition: bool, a: f32, b: f32) -> f32 {
    if condition { a } else { b }
}

#[inline(always)]
fn to_bits(x: f32) -> u32 {
    x.to_bits()
}

#[inline(always)]
fn from_bits(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// A small `u32` (an exponent field) as `f32`, through `i32`, whose
/// conversion vectorises (the unsigned one does not on baseline x86-64).
#[inline(always)]
fn float_of(small: u32) -> f32 {
    small as i32 as f32
}

/// `e^x` for `x ≤ 88` (the kernel exponentiates shifted logits, which are at
/// most 0, and the mixtures' log-ratios of up to 8; the teacher store
/// log-probabilities of up to 0.01), `−inf` → 0.
///
/// `x = n·ln 2 + r` and [`exp_remainder`]`(x, n) · 2^n`, `2^n` built in the
/// exponent bits. Rounding uses the 1.5·2²³ trick instead of `floor`, which
/// baseline x86-64 cannot vectorise. Below `−87.3` (where f32 goes subnormal)
/// it returns 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    const LOWEST: f32 = -87.336_55;
    let clamped = if x < LOWEST { LOWEST } else { x };
    let shifted = clamped * LOG2E + ROUND;
    let n = shifted - ROUND;
    let e_r = exp_remainder(clamped, n);
    // `shifted` holds n in its low mantissa bits (offset by 2^22): reading n from
    // the bits avoids a float-to-int conversion, which does not vectorise.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    // NaN compares false and stays NaN through the polynomial.
    if x < LOWEST { 0.0 } else { e_r * scale }
}

/// `Σ exp((v − shift)·scale)` in f64: the exponentials a block at a time
/// with the vectorised [`exp`] (so `(v − shift)·scale` must be at most
/// about 0.01), each block summed by [`sum_f64`].
pub(crate) fn sum_exp_shifted(values: &[f32], shift: f32, scale: f32) -> f64 {
    let mut block = [0.0f32; 64];
    let mut sum = 0.0f64;
    for part in values.chunks(64) {
        for (e, &v) in block.iter_mut().zip(part) {
            *e = exp((v - shift) * scale);
        }
        sum += sum_f64(&block[..part.len()]);
    }
    sum
}

/// A sum of f32 values in f64, in blocks the compiler vectorises.
pub(crate) fn sum_f64(values: &[f32]) -> f64 {
    values
        .chunks(64)
        .map(|block| block.iter().map(|&e| e as f64).sum::<f64>())
        .sum()
}

/// `ln x` for `x ≥ 0`: `0` → `−inf`, `+inf` → `+inf`, NaN → NaN. Subnormal
/// inputs (below 1.18e−38) are read as the smallest normal number, `−87.34`:
/// the kernel only takes logs of probabilities, where such a value only ever
/// multiplies a weight of the same size. [`ln_normal`] otherwise.
// The teacher store alone (without a CPU backend's kernel) uses `exp` only.
#[cfg_attr(not(any(feature = "flex", feature = "ndarray")), allow(dead_code))]
#[inline(always)]
pub(crate) fn ln(x: f32) -> f32 {
    let normal = if x < f32::MIN_POSITIVE {
        f32::MIN_POSITIVE
    } else {
        x
    };
    let result = ln_normal(normal);
    if x == 0.0 {
        f32::NEG_INFINITY
    } else if x == f32::INFINITY || x.is_nan() {
        x
    } else {
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial exp against the standard library over the range it serves.
    #[test]
    fn exp_is_accurate_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        // Up to 88, below f32's overflow: the mixtures' log-ratios take e^x for
        // x up to 8, the teacher store of log-probabilities that round above 0.
        while x <= 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "relative error {worst:e}"
        );
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
    }

    /// The polynomial ln against the standard library, in f64, over every
    /// binade of normal f32 and the special values.
    #[test]
    fn ln_is_accurate_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = f32::MIN_POSITIVE;
        while x < f32::MAX / 2.0 {
            for step in 0..64 {
                let y = x * (1.0 + step as f32 / 64.0);
                let got = ln(y) as f64;
                let want = (y as f64).ln();
                // Relative to |ln y|, but near ln 1 = 0 in absolute terms.
                worst = worst.max((got - want).abs() / want.abs().max(1.0));
            }
            x *= 2.0;
        }
        assert!(worst < 2.0 * f32::EPSILON as f64, "error {worst:e}");
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f32::NEG_INFINITY);
        assert_eq!(ln(f32::INFINITY), f32::INFINITY);
        assert!(ln(f32::NAN).is_nan());
        assert_eq!(ln(1e-45), ln(f32::MIN_POSITIVE));
    }
}
