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
//! | JSD(β), `m = βp + (1−β)q` | `β p_j log(p_j/m_j) + (1−β) q_j log(q_j/m_j)` | `(1−β) log(q_j/m_j)` ¹ | `(1−β) q_j log(q_j/m_j)` |
//! | skew forward KL, `m = αp + (1−α)q` | `p_j log(p_j/m_j)` | `−(1−α) p_j/m_j` | `−(1−α) p_j q_j/m_j` |
//! | skew reverse KL, `m = αq + (1−α)p` | `q_j log(q_j/m_j)` | `log(q_j/m_j) + 1 − α q_j/m_j` | `q_j log(q_j/m_j) − α q_j²/m_j` |
//! | TVD | `½ |q_j − p_j|` | `½ sign(q_j − p_j)` | `½ q_j sign(q_j − p_j)` |
//!
//! ² The `± p_j ∓ q_j` sum to 0 over the classes; with them each term is `≥ 0` and
//! of its share's size ([`kl_term`]), so that the sum keeps f32's precision where
//! `p ≈ q` (high temperatures, a student close to its teacher), where the plain
//! terms cancel. The KL plug-ins take `log p_j − log q_j` from the caller, which
//! computes it from the logits' difference where both share the temperature.
//!
//! ¹ `β·(−p_j/m_j)(1−β) + (1−β)(log(q_j/m_j) + 1 − (1−β) q_j/m_j)`
//! `= (1−β)(log(q_j/m_j) + 1 − m_j/m_j)`. The normalised JSD divides `t` and `h`
//! by `β(1−β)`; at β = 0 and 1 both JSDs are forward and reverse KL (the
//! reference's definition), and the skews at α = 0 are the plain KLs, so those
//! settings use the KL plug-ins.
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
    /// `scale · (β KL(p‖m) + (1−β) KL(q‖m))`, `mix = β`, `0 < β < 1`.
    Jsd,
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
/// module provides `ln` (the target's, both built on
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

        /// One divergence's `(t_j, h_j)` for one class: `p`, `q` and their
        /// logarithms `lp`, `lq`, and `g = ln p − ln q` (`lp − lq`, or the
        /// same from the logits' difference, which rounds less: see the
        /// module docs); `mix` and `scale` as [`Kind`] says. The KLs' value terms
        /// are [`kl_term`]s.
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        pub(super) fn terms(
            p: f32,
            lp: f32,
            q: f32,
            lq: f32,
            g: f32,
            mix: f32,
            scale: f32,
            $($comptime)* kind: Kind,
        ) -> (f32, f32) {
            match kind {
                Kind::ForwardKl => (kl_term(p, q, g), 0.0f32 - p),
                Kind::ReverseKl => (kl_term(q, p, 0.0f32 - g), xlog(q, 0.0f32 - g)),
                Kind::Jsd => {
                    let lm = ln(mix * p + (1.0f32 - mix) * q);
                    let student = xlog(q, lq - lm);
                    let t = mix * xlog(p, lp - lm) + (1.0f32 - mix) * student;
                    (scale * t, scale * (1.0f32 - mix) * student)
                }
                Kind::SkewForwardKl => {
                    let m = mix * p + (1.0f32 - mix) * q;
                    // m ≥ αp > 0 wherever p > 0; where p = 0 both are 0.
                    let h = select(p > 0.0f32, (mix - 1.0f32) * p * (q / m), 0.0f32);
                    (xlog(p, lp - ln(m)), h)
                }
                Kind::SkewReverseKl => {
                    let m = mix * q + (1.0f32 - mix) * p;
                    let t = xlog(q, lq - ln(m));
                    // m ≥ αq > 0 wherever q > 0.
                    let h = select(q > 0.0f32, t - mix * q * (q / m), 0.0f32);
                    (t, h)
                }
                Kind::Tvd => {
                    let d = q - p;
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
use super::math::{ln, select};
#[cfg(any(feature = "flex", feature = "ndarray"))]
divergence_table!(#[inline(always)]; []);

/// One divergence's per-class value term and gradient factor (see the module
/// docs); `lp`, `lq` are the log-probabilities of `p`, `q`. One type per
/// [`Kind`], so that the CPU row loop is monomorphised per divergence with
/// [`terms`] inlined and its `match` folded away.
pub(super) trait Pointwise: Copy {
    /// `(t_j, h_j)`; `g = ln p − ln q` (see [`terms`]).
    fn terms(self, p: f32, lp: f32, q: f32, lq: f32, g: f32) -> (f32, f32);

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
            fn terms(self, p: f32, lp: f32, q: f32, lq: f32, g: f32) -> (f32, f32) {
                terms(p, lp, q, lq, g, self.mix, self.scale, Kind::$kind)
            }

            #[inline(always)]
            fn sum_h_is_minus_one(self) -> bool {
                matches!(Kind::$kind, Kind::ForwardKl)
            }
        }
    )*};
}
pointwise_types!(ForwardKl, ReverseKl, Jsd, SkewForwardKl, SkewReverseKl, Tvd);

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
            Divergence::Jsd { beta } => (Kind::Jsd, beta, 1.0),
            Divergence::JsdNormalized { beta } => (Kind::Jsd, beta, 1.0 / (beta * (1.0 - beta))),
            Divergence::SkewForwardKl { alpha } => (Kind::SkewForwardKl, alpha, 1.0),
            Divergence::SkewReverseKl { alpha } => (Kind::SkewReverseKl, alpha, 1.0),
            Divergence::Tvd => (Kind::Tvd, 0.0, 1.0),
        };
        Self {
            kind,
            mix: mix as f32,
            scale: scale as f32,
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
        let plugins: [(&str, Plugin); 6] = [
            ("forward", plug(Kind::ForwardKl, 0.0, 1.0)),
            ("reverse", plug(Kind::ReverseKl, 0.0, 1.0)),
            ("jsd", plug(Kind::Jsd, 0.3, 1.7)),
            ("skew forward", plug(Kind::SkewForwardKl, 0.1, 1.0)),
            ("skew reverse", plug(Kind::SkewReverseKl, 0.4, 1.0)),
            ("tvd", plug(Kind::Tvd, 0.0, 1.0)),
        ];
        for (name, plugin) in plugins {
            let total = |q: &[f64; 4]| -> f64 {
                (0..4)
                    .map(|j| {
                        let (pj, qj) = (p[j] as f32, q[j] as f32);
                        with_plugin!(plugin, |d| d
                            .terms(pj, pj.ln(), qj, qj.ln(), pj.ln() - qj.ln())
                            .0) as f64
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
                let h = with_plugin!(plugin, |d| d
                    .terms(pj, pj.ln(), qj, qj.ln(), pj.ln() - qj.ln())
                    .1) as f64;
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

    /// Classes that both models rule out (p = q = 0, log-probabilities −inf)
    /// contribute exactly 0 to the value and the gradient of every plug-in.
    #[test]
    fn ruled_out_classes_contribute_nothing() {
        for plugin in [
            plug(Kind::ForwardKl, 0.0, 1.0),
            plug(Kind::ReverseKl, 0.0, 1.0),
            plug(Kind::Jsd, 0.5, 1.0),
            plug(Kind::SkewForwardKl, 0.1, 1.0),
            plug(Kind::SkewReverseKl, 0.1, 1.0),
            plug(Kind::Tvd, 0.0, 1.0),
        ] {
            let inf = f32::NEG_INFINITY;
            let (t, h) = with_plugin!(plugin, |d| d.terms(0.0, inf, 0.0, inf, inf - inf));
            assert_eq!((t, h), (0.0, 0.0), "{plugin:?}");
        }
    }
}
