//! Branch-free `exp` and `ln` for the fused kernel's row loops: polynomial
//! approximations (Cephes' `expf` and `logf`, about 1 ulp on the ranges used)
//! built from arithmetic, bit operations and selects only, so that the
//! compiler vectorises the loops they are inlined into (the standard
//! library's are calls, one element at a time).

/// `e^x` for `x ≤ 0` (the kernel only exponentiates shifted logits; the
/// teacher store also log-probabilities of up to 0.01), `−inf` → 0.
///
/// Cephes `expf`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-5 polynomial
/// for `e^r`, and `2^n` built in the exponent bits. Rounding uses the 1.5·2²³
/// trick instead of `floor`, which baseline x86-64 cannot vectorise. Below
/// `−87.3` (where f32 goes subnormal) it returns 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    const LOWEST: f32 = -87.336_55;
    let clamped = if x < LOWEST { LOWEST } else { x };
    let shifted = clamped * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r2 + r + 1.0;
    // `shifted` holds n in its low mantissa bits (offset by 2^22): reading n from
    // the bits avoids a float-to-int conversion, which does not vectorise.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    // NaN compares false and stays NaN through the polynomial.
    if x < LOWEST { 0.0 } else { e_r * scale }
}

/// `ln x` for `x ≥ 0`: `0` → `−inf`, `+inf` → `+inf`, NaN → NaN. Subnormal
/// inputs (below 1.18e−38) are read as the smallest normal number, `−87.34`:
/// the kernel only takes logs of probabilities, where such a value only ever
/// multiplies a weight of the same size.
///
/// Cephes `logf`: `x = 2^e · m` with `m` in [√½, √2), a degree-9 polynomial
/// for `ln m`, and `e·ln 2` added in two parts for accuracy.
// The teacher store alone (without a CPU backend's kernel) uses `exp` only.
#[cfg_attr(not(any(feature = "flex", feature = "ndarray")), allow(dead_code))]
#[inline(always)]
pub(crate) fn ln(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let normal = if x < f32::MIN_POSITIVE {
        f32::MIN_POSITIVE
    } else {
        x
    };
    let bits = normal.to_bits();
    // Mantissa in [0.5, 1), exponent to match (frexp).
    let mantissa = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let exponent = ((bits >> 23) & 0xff) as i32 - 126;
    let small = mantissa < SQRT_HALF;
    let e = exponent as f32 - if small { 1.0 } else { 0.0 };
    let m = if small {
        mantissa + mantissa - 1.0
    } else {
        mantissa - 1.0
    };
    let z = m * m;
    let poly = ((((((((7.037_683_6e-2 * m - 1.151_461e-1) * m + 1.167_699_9e-1) * m
        - 1.242_014_1e-1)
        * m
        + 1.424_932_3e-1)
        * m
        - 1.666_805_8e-1)
        * m
        + 2.000_071_5e-1)
        * m
        - 2.499_999_4e-1)
        * m
        + 3.333_333e-1)
        * m
        * z;
    let y = poly + LN2_LO * e - 0.5 * z;
    let result = m + y + LN2_HI * e;
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
        // Up to 0.01: the teacher store's log-probabilities may round above 0.
        while x <= 0.01 {
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
