//! The divergences as the fused kernel sees them: per class, the value's term
//! and the student's gradient factor, plugged into one row loop.
//!
//! # The one engine
//! With `q = softmax(z/T)` (student), `p = softmax(v/T_v)` (teacher, fixed) and
//! a per-row loss `D(p, q)`, the chain rule through the softmax gives, for every
//! divergence,
//!
//! ```text
//! ∂D/∂z_i = (1/T) · (h_i − q_i · Σ_j h_j),      h_j = q_j · ∂D/∂q_j
//! ```
//!
//! (`∂q_j/∂z_i = (1/T) q_j (δ_ij − q_i)`). So a divergence only has to give, per
//! class, its value term `t_j` (with `D = Σ_j t_j`) and `h_j`; the kernel does
//! the max-shift, the exponentials, the sums, this Jacobian product, the `T²`
//! and weights, the hard term and the masks once for all of them. Any part of
//! `∂D/∂q_j` that is the same constant for every class drops out (`c·q_i −
//! q_i·Σ_j c·q_j = 0`), so the `+1` of the KL derivatives is left out below.
//!
//! # The plug-ins (derived with `m` the mixture where there is one)
//! | divergence | `t_j` | `∂D/∂q_j` | `h_j` (constants dropped) |
//! |---|---|---|---|
//! | forward KL | `p_j (log p_j − log q_j) − p_j + q_j` ² | `1 − p_j / q_j` | `−p_j` |
//! | reverse KL | `q_j (log q_j − log p_j) − q_j + p_j` ² | `log(q_j/p_j)` | `q_j (log q_j − log p_j)` |
//! | JSD(β), `m = βp + (1−β)q` | `β KL_j(p‖m) + (1−β) KL_j(q‖m)` ²³ | `(1−β) log(q_j/m_j)` ¹ | `(1−β) q_j log(q_j/m_j)` |
//! | skew forward KL, `m = αp + (1−α)q` | `KL_j(p‖m)` ²³ | `−(1−α) p_j/m_j` | `−(1−α) p_j q_j/m_j` |
//! | skew reverse KL, `m = αq + (1−α)p` | `KL_j(q‖m)` ²³ | `log(q_j/m_j) + 1 − α q_j/m_j` | `q_j log(q_j/m_j) − α q_j²/m_j` |
//! | TVD | `½ |q_j − p_j|`, `q_j − p_j = −q_j (e^g − 1)` where `|g| < 1/4` | `½ sign(q_j − p_j)` | `½ q_j sign(q_j − p_j)` |
//!
//! ² The `± p_j ∓ q_j` sum to 0 over the classes; with them each term is `≥ 0` and
//! of its share's size ([`kl_term`]; `KL_j(a‖b) = a_j log(a_j/b_j) − a_j + b_j`),
//! so that the sum keeps f32's precision where `p ≈ q` (high temperatures, a
//! student close to its teacher), where the plain terms cancel. The plug-ins
//! take `g = log p_j − log q_j` from the caller, which computes it from the
//! logits' difference where both share the temperature.
//!
//! ³ `log(p_j/m_j)` and `log(q_j/m_j)` from `g` alone ([`mixture_log_ratios`]):
//! `log(m/p) = log(1 + (1−β)(e^(−g) − 1))` by series where `g` is small,
//! instead of the difference of two rounded logarithms, which is all
//! rounding where `p ≈ q`.
//!
//! A term whose weight (`p_j` or `q_j`) is 0 is 0, never `0 · log 0` or
//! `0 · (−inf)`: each plug-in selects 0 there, which also keeps classes that
//! are `−inf` in both models out of the value and the gradient. Every plug-in
//! is branch-free (selects, no `if` around work), so the compiler vectorises
//! the row loop it is inlined into.

use crate::divergence::Divergence;

/// Which divergence a kernel computes; its parameters (`mix`, `scale` of
/// [`Plugin`]) are run-time values. The Cube kernel is compiled per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// `KL(p ‖ q)`.
    ForwardKl,
    /// `KL(q ‖ p)`.
    ReverseKl,
    /// `scale · (β KL(p‖m) + (1−β) KL(q‖m))`, `mix = β`, `1/2 ≤ β < 1`.
    Jsd,
    /// [`Kind::Jsd`] for `0 < β < 1/2`: the mixture's log-ratios are taken
    /// with the larger weight's model as the reference (precision), a choice
    /// made per call, not per class (a select on it in the row loop would
    /// stop the CPU loop's vectorisation).
    JsdSmallBeta,
    /// `KL(p ‖ αp + (1−α)q)`, `mix = α`, `0 < α < 1`.
    SkewForwardKl,
    /// `KL(q ‖ αq + (1−α)p)`, `mix = α`, `0 < α < 1`.
    SkewReverseKl,
    /// `½ Σ |q − p|`.
    Tvd,
}

/// Defines the divergence table — every divergence's `(t_j, h_j)` per class
/// (see the module docs for the derivations) — with the attributes given:
/// `#[inline(always)]` for the CPU kernel (here, [`terms`]), `#[cube]` for
/// the Cube kernel (`kind` then `#[comptime]`, the second argument). This is
/// the only text of the per-class terms the kernels compute. The invoking
/// module provides `ln` and `exp` (the target's, both built on
/// [`super::math::kernel_math`]), `select(bool, f32, f32)` and [`Kind`]
/// (names, not macro arguments: CubeCL's expansion of a call needs the
/// callee's name to come from the macro's own text).
///
/// A term whose weight (`p_j` or `q_j`) is 0 is 0, never `0 · log 0` or
/// `0 · (−inf)`; every branch is a select, so the CPU loop vectorises.
macro_rules! divergence_table {
    ($(#[$attr:meta])*; [$($comptime:tt)*]) => {
        /// `w · log_ratio`, 0 where the weight `w` is 0 (whatever the log-ratio).
        $(#[$attr])*
        fn xlog(w: f32, log_ratio: f32) -> f32 {
            select(w > 0.0f32, w * log_ratio, 0.0f32)
        }

        /// One class's term of `KL(p ‖ q)` as `p ln(p/q) − p + q = q·ψ(g)` from
        /// `g = ln p − ln q`, `ψ(g) = g e^g − e^g + 1 ≥ 0` (the `−p + q` parts sum
        /// to 0): each term is `≥ 0` and of its share's size, so a sum of them
        /// keeps f32's precision where `p ≈ q`, where `Σ p ln(p/q)` cancels terms
        /// `1/|g|` times larger than the result. By `ψ`'s series where `|g| <
        /// 1/4` (to `g⁷`, within 10⁻⁷ of the term; the direct form there would
        /// lose 70 times f32's rounding); directly elsewhere, with
        /// `p = 0` giving `q` and `q = 0 < p` giving `+inf` (and `g` NaN, both
        /// 0, giving 0).
        $(#[$attr])*
        pub(super) fn kl_term(p: f32, q: f32, g: f32) -> f32 {
            let s6 = g * (1.0f32 / 840.0f32) + 1.0f32 / 144.0f32;
            let s5 = s6 * g + 1.0f32 / 30.0f32;
            let s4 = s5 * g + 0.125f32;
            let s3 = s4 * g + 1.0f32 / 3.0f32;
            let series = s3 * g + 0.5f32;
            let small = q * (g * g * series);
            let direct = xlog(p, g) - p + q;
            select(f32::abs(g) < 0.25f32, small, direct)
        }

        /// `e^x − 1` for `|x| < 1/4`, by its series to `x⁷` (within 2·10⁻⁹,
        /// relative): precise where `e^x` rounds next to 1.
        $(#[$attr])*
        fn expm1_small(x: f32) -> f32 {
            let s5 = x * (1.0f32 / 5040.0f32) + 1.0f32 / 720.0f32;
            let s4 = s5 * x + 1.0f32 / 120.0f32;
            let s3 = s4 * x + 1.0f32 / 24.0f32;
            let s2 = s3 * x + 1.0f32 / 6.0f32;
            let s1 = s2 * x + 0.5f32;
            (s1 * x + 1.0f32) * x
        }

        /// `ln(1 + u)` for `u > −1`, given `u` and `1 + u` formed by the
        /// caller (from terms that do not round `u` away): where `|u| < 0.3`
        /// by the series of `2 atanh(s)`, `s = u / (2 + u)`, to `s⁹` (within
        /// 3·10⁻⁹, relative), which keeps the digits of a small `u` that
        /// `1 + u` rounds away; `ln(1 + u)` elsewhere.
        $(#[$attr])*
        fn log1p(u: f32, one_plus_u: f32) -> f32 {
            let s = u / (2.0f32 + u);
            let s2 = s * s;
            let series = s2 * (1.0f32 / 9.0f32) + 1.0f32 / 7.0f32;
            let series = series * s2 + 0.2f32;
            let series = series * s2 + 1.0f32 / 3.0f32;
            let series = (series * s2 + 1.0f32) * (s + s);
            select(f32::abs(u) < 0.3f32, series, ln(one_plus_u))
        }

        /// `(ln(a/m), ln(b/m))` for the mixture `m = (1 − w)a + w·b` of two
        /// probabilities, from `g = ln a − ln b` alone: `ln(a/m) = −ln(1 +
        /// u)`, `u = w(e^(−g) − 1)`, with `e^(−g) − 1` by [`expm1_small`]
        /// where `|g| < 1/4`, and [`log1p`]; where `g < −8` (`b` dominates
        /// `m`) as `g − ln(w + (1 − w)e^g)`. `ln(b/m) = ln(a/m) − g`, and
        /// `−ln(w + (1 − w)e^g)` where `g < −8`. Each is of its own size where
        /// `a ≈ b`, where `ln a − ln m` would be the rounding of two logarithms:
        /// `ln(a/m)` to a few roundings for any `w`, `ln(b/m)` for `w ≤ 1/2`
        /// (tested); `±inf` where `a` or `b` is 0. One `exp` and one `ln`.
        $(#[$attr])*
        fn mixture_log_ratios(g: f32, w: f32) -> (f32, f32) {
            let near = f32::abs(g) < 0.25f32;
            let far = g < -8.0f32;
            // e^g where b dominates, e^(−g) ≤ e^8 elsewhere.
            let y = exp(select(far, g, 0.0f32 - g));
            let e = select(near, expm1_small(0.0f32 - g), y - 1.0f32);
            let one_plus_u = select(far, w + (1.0f32 - w) * y, (1.0f32 - w) + w * y);
            // Where b dominates, 1 + u = w + (1 − w)e^g: `1 + u − 1` is exact
            // wherever the series takes it (|u| < 0.3, 1 + u in (0.7, 1]).
            let l = log1p(select(far, one_plus_u - 1.0f32, w * e), one_plus_u);
            let a_over_m = select(far, g - l, 0.0f32 - l);
            (a_over_m, select(far, 0.0f32 - l, a_over_m - g))
        }

        /// The JSD's `(t_j, h_j)` from its two log-ratios to the mixture
        /// (`mix = β`, `scale` the normalised JSD's factor).
        $(#[$attr])*
        fn jsd_terms(p: f32, q: f32, p_over_m: f32, q_over_m: f32, mix: f32, scale: f32) -> (f32, f32) {
            let m = mix * p + (1.0f32 - mix) * q;
            let t = mix * kl_term(p, m, p_over_m) + (1.0f32 - mix) * kl_term(q, m, q_over_m);
            (scale * t, scale * (1.0f32 - mix) * xlog(q, q_over_m))
        }

        /// One divergence's `(t_j, h_j)` for one class from `p`, `q` and `g =
        /// ln p − ln q` (from the logits' difference where both share the
        /// temperature, which rounds less than `ln p − ln q`: see the module
        /// docs); `mix` and `scale` as [`Kind`] says. Every value term is a
        /// sum of [`kl_term`]s, with the mixtures' log-ratios from
        /// [`mixture_log_ratios`].
        $(#[$attr])*
        pub(super) fn terms(
            p: f32,
            q: f32,
            g: f32,
            mix: f32,
            scale: f32,
            $($comptime)* kind: Kind,
        ) -> (f32, f32) {
            match kind {
                Kind::ForwardKl => (kl_term(p, q, g), 0.0f32 - p),
                Kind::ReverseKl => (kl_term(q, p, 0.0f32 - g), xlog(q, 0.0f32 - g)),
                Kind::Jsd => {
                    // m = βp + (1 − β)q = (1 − w)p + w·q, w = 1 − β ≤ 1/2.
                    let (p_over_m, q_over_m) = mixture_log_ratios(g, 1.0f32 - mix);
                    jsd_terms(p, q, p_over_m, q_over_m, mix, scale)
                }
                Kind::JsdSmallBeta => {
                    // m = (1 − w)q + w·p, w = β < 1/2.
                    let (q_over_m, p_over_m) = mixture_log_ratios(0.0f32 - g, mix);
                    jsd_terms(p, q, p_over_m, q_over_m, mix, scale)
                }
                Kind::SkewForwardKl => {
                    let m = mix * p + (1.0f32 - mix) * q;
                    let (p_over_m, _) = mixture_log_ratios(g, 1.0f32 - mix);
                    // m ≥ αp > 0 wherever p > 0; where p = 0 both are 0.
                    let h = select(p > 0.0f32, (mix - 1.0f32) * p * (q / m), 0.0f32);
                    (kl_term(p, m, p_over_m), h)
                }
                Kind::SkewReverseKl => {
                    let m = mix * q + (1.0f32 - mix) * p;
                    let (q_over_m, _) = mixture_log_ratios(0.0f32 - g, 1.0f32 - mix);
                    // m ≥ αq > 0 wherever q > 0.
                    let h = select(q > 0.0f32, xlog(q, q_over_m) - mix * q * (q / m), 0.0f32);
                    (kl_term(q, m, q_over_m), h)
                }
                Kind::Tvd => {
                    // q − p = −q(e^g − 1), of its own size where p ≈ q.
                    let d = select(f32::abs(g) < 0.25f32, 0.0f32 - q * expm1_small(g), q - p);
                    let half_sign =
                        select(d > 0.0f32, 0.5f32, select(d < 0.0f32, -0.5f32, 0.0f32));
                    (0.5f32 * f32::abs(d), q * half_sign)
                }
            }
        }
    };
}
#[cfg(feature = "cube-kernel")]
pub(super) use divergence_table;

#[cfg(any(feature = "flex", feature = "ndarray"))]
use super::math::{exp, ln, select};
#[cfg(any(feature = "flex", feature = "ndarray"))]
divergence_table!(#[inline(always)]; []);

/// One divergence's per-class value term and gradient factor (see the module
/// docs); `lp`, `lq` are the log-probabilities of `p`, `q`. One type per
/// [`Kind`], so that the CPU row loop is monomorphised per divergence with
/// [`terms`] inlined and its `match` folded away.
pub(super) trait Pointwise: Copy {
    /// `(t_j, h_j)`; `g = ln p − ln q` (see [`terms`]).
    fn terms(self, p: f32, q: f32, g: f32) -> (f32, f32);

    /// Whether `Σ_j h_j` over a whole distribution is −1 whatever `p` and `q`
    /// are (forward KL's `h_j = −p_j`), so that a dense row need not sum it
    /// (the Cube kernel skips it too).
    fn sum_h_is_minus_one(self) -> bool;
}

macro_rules! pointwise_types {
    ($($kind:ident),*) => {$(
        #[derive(Clone, Copy)]
        pub(super) struct $kind {
            pub(super) mix: f32,
            pub(super) scale: f32,
        }

        #[cfg(any(feature = "flex", feature = "ndarray"))]
        impl Pointwise for $kind {
            #[inline(always)]
            fn terms(self, p: f32, q: f32, g: f32) -> (f32, f32) {
                terms(p, q, g, self.mix, self.scale, Kind::$kind)
            }

            #[inline(always)]
            fn sum_h_is_minus_one(self) -> bool {
                matches!(Kind::$kind, Kind::ForwardKl)
            }
        }
    )*};
}
pointwise_types!(
    ForwardKl,
    ReverseKl,
    Jsd,
    JsdSmallBeta,
    SkewForwardKl,
    SkewReverseKl,
    Tvd
);

/// A [`Divergence`] as the kernels compute it: its [`Kind`], with the
/// endpoint settings mapped to the plain KLs (see the module docs), and its
/// parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Plugin {
    pub(crate) kind: Kind,
    /// `β` of the JSDs, `α` of the skews; 0 otherwise.
    pub(crate) mix: f32,
    /// The normalised JSD's `1 / (β(1−β))`; 1 otherwise.
    pub(crate) scale: f32,
}

impl Plugin {
    /// The plug-in of a checked divergence.
    pub(crate) fn of(divergence: Divergence) -> Self {
        let (kind, mix, scale) = match divergence {
            Divergence::ForwardKl
            | Divergence::Jsd { beta: 0.0 }
            | Divergence::JsdNormalized { beta: 0.0 }
            | Divergence::SkewForwardKl { alpha: 0.0 } => (Kind::ForwardKl, 0.0, 1.0),
            Divergence::ReverseKl
            | Divergence::Jsd { beta: 1.0 }
            | Divergence::JsdNormalized { beta: 1.0 }
            | Divergence::SkewReverseKl { alpha: 0.0 } => (Kind::ReverseKl, 0.0, 1.0),
            Divergence::Jsd { beta } => (Self::jsd(beta), beta, 1.0),
            Divergence::JsdNormalized { beta } => {
                (Self::jsd(beta), beta, 1.0 / (beta * (1.0 - beta)))
            }
            Divergence::SkewForwardKl { alpha } => (Kind::SkewForwardKl, alpha, 1.0),
            Divergence::SkewReverseKl { alpha } => (Kind::SkewReverseKl, alpha, 1.0),
            Divergence::Tvd => (Kind::Tvd, 0.0, 1.0),
            // `plan` (the one place that decides, by `serves`) gives ULD to
            // its own row loop (`uld_host`), never to these kernels.
            Divergence::Uld => unreachable!("fused::plan serves no ULD"),
        };
        Self {
            kind,
            mix: mix as f32,
            scale: scale as f32,
        }
    }

    /// The JSD's kind for `0 < β < 1` (as f32, which the kernels compute in).
    fn jsd(beta: f64) -> Kind {
        if (beta as f32) < 0.5 {
            Kind::JsdSmallBeta
        } else {
            Kind::Jsd
        }
    }
}

/// Calls the generic row loop with the plug-in of `$plugin`, monomorphised per
/// divergence so that each loop is vectorised with its terms inlined.
macro_rules! with_plugin {
    ($plugin:expr, |$d:ident| $body:expr) => {{
        let $crate::fused::pointwise::Plugin { kind, mix, scale } = $plugin;
        match kind {
            $crate::fused::pointwise::Kind::ForwardKl => {
                let $d = $crate::fused::pointwise::ForwardKl { mix, scale };
                $body
            }
            $crate::fused::pointwise::Kind::ReverseKl => {
                let $d = $crate::fused::pointwise::ReverseKl { mix, scale };
                $body
            }
            $crate::fused::pointwise::Kind::Jsd => {
                let $d = $crate::fused::pointwise::Jsd { mix, scale };
                $body
            }
            $crate::fused::pointwise::Kind::JsdSmallBeta => {
                let $d = $crate::fused::pointwise::JsdSmallBeta { mix, scale };
                $body
            }
            $crate::fused::pointwise::Kind::SkewForwardKl => {
                let $d = $crate::fused::pointwise::SkewForwardKl { mix, scale };
                $body
            }
            $crate::fused::pointwise::Kind::SkewReverseKl => {
                let $d = $crate::fused::pointwise::SkewReverseKl { mix, scale };
                $body
            }
            $crate::fused::pointwise::Kind::Tvd => {
                let $d = $crate::fused::pointwise::Tvd { mix, scale };
                $body
            }
        }
    }};
}
pub(super) use with_plugin;

#[cfg(test)]
mod tests {
    use super::*;

    fn plug(kind: Kind, mix: f32, scale: f32) -> Plugin {
        Plugin { kind, mix, scale }
    }

    /// `h_j = q_j ∂D/∂q_j` of each plug-in against a central finite difference
    /// of its own `Σ t_j` in f64 (each `q_j` moved alone, off the simplex: the
    /// plug-ins are defined for any positive `q`), up to the dropped constant
    /// `c·q_j`, which is recovered from class 0.
    #[test]
    fn gradient_factors_match_finite_differences() {
        let p = [0.5f64, 0.2, 0.25, 0.05];
        let q = [0.1f64, 0.4, 0.3, 0.2];
        let plugins: [(&str, Plugin); 7] = [
            ("forward", plug(Kind::ForwardKl, 0.0, 1.0)),
            ("reverse", plug(Kind::ReverseKl, 0.0, 1.0)),
            ("jsd", plug(Kind::Jsd, 0.7, 1.7)),
            ("jsd, small beta", plug(Kind::JsdSmallBeta, 0.3, 1.7)),
            ("skew forward", plug(Kind::SkewForwardKl, 0.1, 1.0)),
            ("skew reverse", plug(Kind::SkewReverseKl, 0.4, 1.0)),
            ("tvd", plug(Kind::Tvd, 0.0, 1.0)),
        ];
        for (name, plugin) in plugins {
            let total = |q: &[f64; 4]| -> f64 {
                (0..4)
                    .map(|j| {
                        let (pj, qj) = (p[j] as f32, q[j] as f32);
                        with_plugin!(plugin, |d| d.terms(pj, qj, pj.ln() - qj.ln()).0) as f64
                    })
                    .sum()
            };
            let eps = 1e-3;
            let mut implied_constant = None;
            for j in 0..4 {
                let (mut up, mut down) = (q, q);
                up[j] += eps;
                down[j] -= eps;
                let derivative = (total(&up) - total(&down)) / (2.0 * eps);
                let (pj, qj) = (p[j] as f32, q[j] as f32);
                let h = with_plugin!(plugin, |d| d.terms(pj, qj, pj.ln() - qj.ln()).1) as f64;
                // h_j = q_j (∂D/∂q_j − c) for one constant c per plug-in.
                let c = derivative - h / q[j];
                let c0 = *implied_constant.get_or_insert(c);
                assert!(
                    (c - c0).abs() < 2e-2,
                    "{name} class {j}: ∂D/∂q = {derivative}, h/q = {}, constant {c} vs {c0}",
                    h / q[j]
                );
            }
        }
    }

    /// The mixtures' log-ratios against f64 over `g` from −100 to 100 (and
    /// ±inf: one model rules the class out) for weights 0.01 to 0.99: within
    /// a few f32 roundings of their own size (`ln(b/m)` where `w ≤ 1/2`, as
    /// the JSD takes it), and exactly `±inf` where they are.
    #[test]
    fn mixture_log_ratios_keep_their_own_precision() {
        let mut worst = [(0.0f64, 0.0f32, 0.0f32); 2];
        for w in [0.01f32, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99] {
            let mut g = -100.0f32;
            while g <= 100.0 {
                let (a_over_m, b_over_m) = mixture_log_ratios(g, w);
                // ln(a/m) = −ln(1 + w(e^−g − 1)), ln(b/m) = −ln(1 + (1 − w)(e^g − 1)), in f64.
                let (g64, w64) = (g as f64, w as f64);
                let want = [
                    -(w64 * (-g64).exp_m1()).ln_1p(),
                    -((1.0 - w64) * g64.exp_m1()).ln_1p(),
                ];
                for (k, got) in [a_over_m, b_over_m].into_iter().enumerate() {
                    let error = (got as f64 - want[k]).abs() / want[k].abs();
                    if (k == 0 || w <= 0.5) && error > worst[k].0 {
                        worst[k] = (error, g, w);
                    }
                }
                // Finer steps near 0, where the series serve.
                g += if g.abs() < 0.5 { 1.3e-3 } else { 0.0371 };
            }
            let (a_ruled_out, b_dominates) = mixture_log_ratios(f32::NEG_INFINITY, w);
            assert_eq!(a_ruled_out, f32::NEG_INFINITY);
            assert!(
                (b_dominates as f64 + (w as f64).ln()).abs() < 1e-6,
                "w = {w}"
            );
            let (a_dominates, b_ruled_out) = mixture_log_ratios(f32::INFINITY, w);
            assert!(
                (a_dominates as f64 + (1.0 - w as f64).ln()).abs() < 1e-6,
                "w = {w}"
            );
            assert_eq!(b_ruled_out, f32::NEG_INFINITY);
        }
        eprintln!("worst {worst:?}");
        for (k, (error, g, w)) in worst.into_iter().enumerate() {
            let bound = 4.0 * f32::EPSILON as f64;
            assert!(
                error < bound,
                "ratio {k}: relative error {error:e} at g = {g}, w = {w}"
            );
        }
    }

    /// Classes that both models rule out (p = q = 0, log-probabilities −inf)
    /// contribute exactly 0 to the value and the gradient of every plug-in.
    #[test]
    fn ruled_out_classes_contribute_nothing() {
        for plugin in [
            plug(Kind::ForwardKl, 0.0, 1.0),
            plug(Kind::ReverseKl, 0.0, 1.0),
            plug(Kind::Jsd, 0.5, 1.0),
            plug(Kind::JsdSmallBeta, 0.2, 1.0),
            plug(Kind::SkewForwardKl, 0.1, 1.0),
            plug(Kind::SkewReverseKl, 0.1, 1.0),
            plug(Kind::Tvd, 0.0, 1.0),
        ] {
            let inf = f32::NEG_INFINITY;
            let (t, h) = with_plugin!(plugin, |d| d.terms(0.0, 0.0, inf - inf));
            assert_eq!((t, h), (0.0, 0.0), "{plugin:?}");
        }
    }
}
