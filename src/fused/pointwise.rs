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
//! | forward KL | `p_j (log p_j − log q_j)` | `−p_j / q_j` | `−p_j` |
//! | reverse KL | `q_j (log q_j − log p_j)` | `log(q_j/p_j) + 1` | `q_j (log q_j − log p_j)` = `t_j` |
//! | JSD(β), `m = βp + (1−β)q` | `β p_j log(p_j/m_j) + (1−β) q_j log(q_j/m_j)` | `(1−β) log(q_j/m_j)` ¹ | `(1−β) q_j log(q_j/m_j)` |
//! | skew forward KL, `m = αp + (1−α)q` | `p_j log(p_j/m_j)` | `−(1−α) p_j/m_j` | `−(1−α) p_j q_j/m_j` |
//! | skew reverse KL, `m = αq + (1−α)p` | `q_j log(q_j/m_j)` | `log(q_j/m_j) + 1 − α q_j/m_j` | `q_j log(q_j/m_j) − α q_j²/m_j` |
//! | TVD | `½ |q_j − p_j|` | `½ sign(q_j − p_j)` | `½ q_j sign(q_j − p_j)` |
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

use super::math::ln;
use crate::divergence::Divergence;

/// One divergence's per-class value term and gradient factor (see the module
/// docs); `lp`, `lq` are the log-probabilities of `p`, `q`.
pub(super) trait Pointwise: Copy {
    /// `(t_j, h_j)`.
    fn terms(self, p: f32, lp: f32, q: f32, lq: f32) -> (f32, f32);
}

/// `KL(p ‖ q)`.
#[derive(Clone, Copy)]
pub(super) struct ForwardKl;

impl Pointwise for ForwardKl {
    #[inline(always)]
    fn terms(self, p: f32, lp: f32, _q: f32, lq: f32) -> (f32, f32) {
        (xlog(p, lp - lq), -p)
    }
}

/// `KL(q ‖ p)`.
#[derive(Clone, Copy)]
pub(super) struct ReverseKl;

impl Pointwise for ReverseKl {
    #[inline(always)]
    fn terms(self, _p: f32, lp: f32, q: f32, lq: f32) -> (f32, f32) {
        let t = xlog(q, lq - lp);
        (t, t)
    }
}

/// `β KL(p ‖ m) + (1−β) KL(q ‖ m)`, `0 < β < 1`, both times `scale`.
#[derive(Clone, Copy)]
pub(super) struct Jsd {
    pub(super) beta: f32,
    pub(super) scale: f32,
}

impl Pointwise for Jsd {
    #[inline(always)]
    fn terms(self, p: f32, lp: f32, q: f32, lq: f32) -> (f32, f32) {
        let lm = ln(self.beta * p + (1.0 - self.beta) * q);
        let student = xlog(q, lq - lm);
        let t = self.beta * xlog(p, lp - lm) + (1.0 - self.beta) * student;
        (self.scale * t, self.scale * (1.0 - self.beta) * student)
    }
}

/// `KL(p ‖ αp + (1−α)q)`, `0 < α < 1`.
#[derive(Clone, Copy)]
pub(super) struct SkewForwardKl {
    pub(super) alpha: f32,
}

impl Pointwise for SkewForwardKl {
    #[inline(always)]
    fn terms(self, p: f32, lp: f32, q: f32, _lq: f32) -> (f32, f32) {
        let m = self.alpha * p + (1.0 - self.alpha) * q;
        // m ≥ αp > 0 wherever p > 0; where p = 0 both are 0.
        let h = if p > 0.0 {
            -(1.0 - self.alpha) * p * (q / m)
        } else {
            0.0
        };
        (xlog(p, lp - ln(m)), h)
    }
}

/// `KL(q ‖ αq + (1−α)p)`, `0 < α < 1`.
#[derive(Clone, Copy)]
pub(super) struct SkewReverseKl {
    pub(super) alpha: f32,
}

impl Pointwise for SkewReverseKl {
    #[inline(always)]
    fn terms(self, p: f32, _lp: f32, q: f32, lq: f32) -> (f32, f32) {
        let m = self.alpha * q + (1.0 - self.alpha) * p;
        let t = xlog(q, lq - ln(m));
        // m ≥ αq > 0 wherever q > 0.
        let h = if q > 0.0 {
            t - self.alpha * q * (q / m)
        } else {
            0.0
        };
        (t, h)
    }
}

/// `½ Σ |q − p|`.
#[derive(Clone, Copy)]
pub(super) struct Tvd;

impl Pointwise for Tvd {
    #[inline(always)]
    fn terms(self, p: f32, _lp: f32, q: f32, _lq: f32) -> (f32, f32) {
        let d = q - p;
        let half_sign = if d > 0.0 {
            0.5
        } else if d < 0.0 {
            -0.5
        } else {
            0.0
        };
        (0.5 * d.abs(), q * half_sign)
    }
}

/// `w · log_ratio`, 0 where the weight `w` is 0 (whatever the log-ratio).
#[inline(always)]
fn xlog(w: f32, log_ratio: f32) -> f32 {
    if w > 0.0 { w * log_ratio } else { 0.0 }
}

/// A [`Divergence`] as the plug-in that computes it, with the endpoint
/// settings mapped to the plain KLs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Plugin {
    ForwardKl,
    ReverseKl,
    Jsd { beta: f32, scale: f32 },
    SkewForwardKl { alpha: f32 },
    SkewReverseKl { alpha: f32 },
    Tvd,
}

impl Plugin {
    /// The plug-in of a checked divergence.
    pub(super) fn of(divergence: Divergence) -> Self {
        match divergence {
            Divergence::ForwardKl
            | Divergence::Jsd { beta: 0.0 }
            | Divergence::JsdNormalized { beta: 0.0 }
            | Divergence::SkewForwardKl { alpha: 0.0 } => Self::ForwardKl,
            Divergence::ReverseKl
            | Divergence::Jsd { beta: 1.0 }
            | Divergence::JsdNormalized { beta: 1.0 }
            | Divergence::SkewReverseKl { alpha: 0.0 } => Self::ReverseKl,
            Divergence::Jsd { beta } => Self::Jsd {
                beta: beta as f32,
                scale: 1.0,
            },
            Divergence::JsdNormalized { beta } => Self::Jsd {
                beta: beta as f32,
                scale: (1.0 / (beta * (1.0 - beta))) as f32,
            },
            Divergence::SkewForwardKl { alpha } => Self::SkewForwardKl {
                alpha: alpha as f32,
            },
            Divergence::SkewReverseKl { alpha } => Self::SkewReverseKl {
                alpha: alpha as f32,
            },
            Divergence::Tvd => Self::Tvd,
        }
    }
}

/// Calls the generic row loop with the plug-in of `$plugin`, monomorphised per
/// divergence so that each loop is vectorised with its terms inlined.
macro_rules! with_plugin {
    ($plugin:expr, |$d:ident| $body:expr) => {
        match $plugin {
            $crate::fused::pointwise::Plugin::ForwardKl => {
                let $d = $crate::fused::pointwise::ForwardKl;
                $body
            }
            $crate::fused::pointwise::Plugin::ReverseKl => {
                let $d = $crate::fused::pointwise::ReverseKl;
                $body
            }
            $crate::fused::pointwise::Plugin::Jsd { beta, scale } => {
                let $d = $crate::fused::pointwise::Jsd { beta, scale };
                $body
            }
            $crate::fused::pointwise::Plugin::SkewForwardKl { alpha } => {
                let $d = $crate::fused::pointwise::SkewForwardKl { alpha };
                $body
            }
            $crate::fused::pointwise::Plugin::SkewReverseKl { alpha } => {
                let $d = $crate::fused::pointwise::SkewReverseKl { alpha };
                $body
            }
            $crate::fused::pointwise::Plugin::Tvd => {
                let $d = $crate::fused::pointwise::Tvd;
                $body
            }
        }
    };
}
pub(super) use with_plugin;

#[cfg(test)]
mod tests {
    use super::*;

    /// `h_j = q_j ∂D/∂q_j` of each plug-in against a central finite difference
    /// of its own `Σ t_j` in f64 (each `q_j` moved alone, off the simplex: the
    /// plug-ins are defined for any positive `q`), up to the dropped constant
    /// `c·q_j`, which is recovered from class 0.
    #[test]
    fn gradient_factors_match_finite_differences() {
        let p = [0.5f64, 0.2, 0.25, 0.05];
        let q = [0.1f64, 0.4, 0.3, 0.2];
        let plugins: [(&str, Plugin); 6] = [
            ("forward", Plugin::ForwardKl),
            ("reverse", Plugin::ReverseKl),
            (
                "jsd",
                Plugin::Jsd {
                    beta: 0.3,
                    scale: 1.7,
                },
            ),
            ("skew forward", Plugin::SkewForwardKl { alpha: 0.1 }),
            ("skew reverse", Plugin::SkewReverseKl { alpha: 0.4 }),
            ("tvd", Plugin::Tvd),
        ];
        for (name, plugin) in plugins {
            let total = |q: &[f64; 4]| -> f64 {
                (0..4)
                    .map(|j| {
                        let (pj, qj) = (p[j] as f32, q[j] as f32);
                        with_plugin!(plugin, |d| d.terms(pj, pj.ln(), qj, qj.ln()).0) as f64
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
                let h = with_plugin!(plugin, |d| d.terms(pj, pj.ln(), qj, qj.ln()).1) as f64;
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
            Plugin::ForwardKl,
            Plugin::ReverseKl,
            Plugin::Jsd {
                beta: 0.5,
                scale: 1.0,
            },
            Plugin::SkewForwardKl { alpha: 0.1 },
            Plugin::SkewReverseKl { alpha: 0.1 },
            Plugin::Tvd,
        ] {
            let inf = f32::NEG_INFINITY;
            let (t, h) = with_plugin!(plugin, |d| d.terms(0.0, inf, 0.0, inf));
            assert_eq!((t, h), (0.0, 0.0), "{plugin:?}");
        }
    }
}
