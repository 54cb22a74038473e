//! Divergences between a teacher distribution `p` and a student distribution `q`,
//! one value per row.
//!
//! Arguments are always named `student_*` and `teacher_*` — never `input` and
//! `target` — so the direction of an asymmetric divergence cannot be swapped by
//! argument order (a bug reported against TRL).
//!
//! All take normalised log-probabilities at whatever temperature the caller
//! chose (e.g. [`temperature::log_softmax`](crate::temperature::log_softmax)),
//! so there is one temperature semantics everywhere: `p = softmax(v/T)`,
//! `q = softmax(z/T)`. None of them multiplies by `T²`; when distilling at a
//! temperature, multiply the result by `T²` for the same reason as in
//! [`KdLoss`](crate::KdLoss): every one of these has a gradient that shrinks as
//! `1/T²` at high `T` (each is a smooth function of `p` and `q`, whose
//! derivatives with respect to `z` carry the factor `1/T`, and which vanish at
//! `q = p`, where the differences `q − p` are themselves `O(1/T)`).
//!
//! | [`Divergence`] | value | at `q = p` |
//! |---|---|---|
//! | `ForwardKl` | `KL(p ‖ q)` (mode-covering; the KD loss) | 0 |
//! | `ReverseKl` | `KL(q ‖ p)` (mode-seeking) | 0 |
//! | `Jsd { beta }` | `β·KL(p ‖ m) + (1−β)·KL(q ‖ m)`, `m = βp + (1−β)q`; β = 0 and 1 are forward and reverse KL (the TRL/Liger convention) | 0 |
//! | `SkewForwardKl { alpha }` | `KL(p ‖ αp + (1−α)q)` (DistiLLM) | 0 |
//! | `SkewReverseKl { alpha }` | `KL(q ‖ αq + (1−α)p)` | 0 |
//! | `Tvd` | `½ Σ |q − p|` (DistillKit, Liger) | 0 |
//! | `Uld` | `Σ_i |q_(i) − p_(i)|` over both sorted (ULD; any two vocabularies) | 0 |
//!
//! A [`Divergence`] is a setting of [`KdLossConfig`](crate::KdLossConfig),
//! which adds the temperature, `T²`, the hard term, masks and the reduction;
//! [`Divergence::rows`] computes it per row with burn's tensor operations —
//! the small pure reference the fused kernels are tested against.

use burn::config::Config;
use burn::tensor::Tensor;

use crate::check::{check_device, check_non_empty, check_same_shape, shape_mismatch};
use crate::error::DistillError;

/// Which divergence between the teacher's distribution `p` and the student's
/// `q` a loss minimises, per row, at the loss's temperature.
///
/// | variant | value | notes |
/// |---|---|---|
/// | `ForwardKl` | `KL(p ‖ q)` | Hinton et al.'s soft loss (mode-covering); the default |
/// | `ReverseKl` | `KL(q ‖ p)` | mode-seeking (MiniLLM) |
/// | `Jsd { beta }` | `β·KL(p‖m) + (1−β)·KL(q‖m)`, `m = βp + (1−β)q` | TRL's and Liger's generalised JSD, for parity with them: β = 0 and β = 1 are *defined* as forward and reverse KL, while the formula itself tends to 0 there, so the value jumps at both ends |
/// | `JsdNormalized { beta }` | the above `/ (β(1−β))` | tends continuously to forward KL as β → 0 and to reverse KL as β → 1 (which it equals there) |
/// | `SkewForwardKl { alpha }` | `KL(p ‖ αp + (1−α)q)` | DistiLLM; α in [0, 1), α = 0 is forward KL |
/// | `SkewReverseKl { alpha }` | `KL(q ‖ αq + (1−α)p)` | α in [0, 1), α = 0 is reverse KL |
/// | `Tvd` | `½ Σ |q − p|` | total variation (DistillKit, Liger) |
/// | `Uld` | `Σ_i |q_(i) − p_(i)|`, each sorted in decreasing order | Boizard et al.'s universal logit distillation: needs no shared vocabulary |
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::divergence::Divergence;
/// use burn_distill::temperature::log_softmax;
///
/// let device = Device::flex();
/// let q = log_softmax(Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device), 1.0, 1)?;
/// let p = log_softmax(Tensor::<2>::from_floats([[0.0, 2.0, -1.0]], &device), 1.0, 1)?;
/// // Near β = 0 the normalised JSD is close to forward KL; TRL's form is near 0.
/// let near_forward = Divergence::JsdNormalized { beta: 1e-4 }.rows(q.clone(), p.clone())?;
/// let forward = Divergence::ForwardKl.rows(q.clone(), p.clone())?;
/// let trl = Divergence::Jsd { beta: 1e-4 }.rows(q, p)?;
/// let (a, b, c) = (
///     near_forward.into_scalar::<f32>(),
///     forward.into_scalar::<f32>(),
///     trl.into_scalar::<f32>(),
/// );
/// assert!((a - b).abs() < 1e-3 * b && c < 1e-3 * b);
/// # Ok::<(), burn_distill::DistillError>(())
/// ```
#[derive(Config, Debug, Copy, PartialEq)]
pub enum Divergence {
    /// `KL(p‖q) = Σ_i p_i (log p_i − log q_i)`: the soft loss of Hinton et al.
    /// (2015). It differs from the soft cross-entropy `−Σ p_i log q_i` by the
    /// teacher's entropy, a constant with the same gradient, and it is exactly 0
    /// when the student matches the teacher. Classes where the teacher's
    /// probability is 0 contribute exactly 0 to the value and to the gradient
    /// (not the NaN of `0 · (−inf − −inf)`); a class the teacher gives positive
    /// probability but the student `−inf` is a genuine `+inf`.
    ForwardKl,
    /// `KL(q‖p) = Σ_i q_i (log q_i − log p_i)`, the student's divergence from
    /// the teacher (mode-seeking, as in on-policy distillation). Classes the
    /// student gives probability 0 contribute 0.
    ReverseKl,
    /// TRL's and Liger's generalised Jensen–Shannon divergence: with
    /// `m = β·p + (1−β)·q`, `β·KL(p ‖ m) + (1−β)·KL(q ‖ m)` for `0 < β < 1`;
    /// `β = 0` is defined as forward KL and `β = 1` as reverse KL (the formula
    /// itself tends to 0 at both ends). At `β = 0.5` it is the symmetric JSD,
    /// bounded by `ln 2`.
    Jsd {
        /// Weight of the teacher in the mixture, in [0, 1].
        beta: f64,
    },
    /// The generalised JSD divided by `β(1−β)`: continuous in `beta` on [0, 1].
    JsdNormalized {
        /// Weight of the teacher in the mixture, in [0, 1].
        beta: f64,
    },
    /// `KL(p ‖ α·p + (1−α)·q)` (Ko et al., DistiLLM, 2024). `α = 0` is forward
    /// KL; a positive `α` keeps the divergence finite where the student gives
    /// a teacher-possible class probability 0, and bounds it by `−ln α`.
    SkewForwardKl {
        /// Weight of the teacher in the mixture, in [0, 1).
        alpha: f64,
    },
    /// `KL(q ‖ α·q + (1−α)·p)`; `α = 0` is reverse KL.
    SkewReverseKl {
        /// Weight of the student in the mixture, in [0, 1).
        alpha: f64,
    },
    /// Total variation distance `½ Σ_i |q_i − p_i|`, in [0, 1] (as DistillKit
    /// and Liger compute it on probabilities). Its gradient with respect to
    /// `q_i` is `½ sign(q_i − p_i)` (0 where equal).
    Tvd,
    /// The universal logit distillation loss (Boizard et al. 2024, "Towards
    /// Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for
    /// LLMs", eq. 3): `Σ_i |q_(i) − p_(i)|`, with `q_(i)` and `p_(i)` the
    /// `i`-th largest probability of each model, the shorter vector padded with
    /// zeros — the Wasserstein-1 distance between the two distributions when
    /// every pair of tokens is one unit apart. It compares the shapes of the
    /// distributions, not which token has which mass, so the teacher may have
    /// any vocabulary (the [`VocabularyRule`](crate::VocabularyRule) does not
    /// apply); with [`KdLoss`](crate::KdLoss) the teacher rows are paired with
    /// the student's positions as given (align the two tokenizations first).
    /// As TRL's `ULDLoss` (GOLD), with whose values and gradients it is
    /// tested. In [0, 2]. Its gradient with respect to `q_j` is the sign of
    /// `q_j − p_(rank of q_j)`. In `KdLoss` on flex or ndarray in f32, a CPU
    /// row loop computes it (a radix sort per row, the gradient in closed
    /// form); elsewhere burn ops (on a GPU burn 0.22.1 sorts on the host). Not
    /// with a top-k teacher, whose tail is not sorted.
    Uld,
}

impl Divergence {
    /// Checks the variant's parameter: β in [0, 1], α in [0, 1).
    pub fn check(&self) -> Result<(), DistillError> {
        match *self {
            Self::Jsd { beta } | Self::JsdNormalized { beta } => check_unit_interval("beta", beta),
            Self::SkewForwardKl { alpha } | Self::SkewReverseKl { alpha } => {
                check_skew("alpha", alpha)
            }
            Self::ForwardKl | Self::ReverseKl | Self::Tvd | Self::Uld => Ok(()),
        }
    }

    /// Whether `D(p, q)` stays finite where the teacher gives a class zero
    /// mass and the student does not: false for reverse KL and the forms
    /// that reduce to it (`β = 1`, skew `α = 0`), whose `q_i·ln(q_i / 0)` is
    /// `+∞`.
    pub(crate) fn finite_where_teacher_is_zero(self) -> bool {
        match self {
            Self::ReverseKl => false,
            Self::Jsd { beta } | Self::JsdNormalized { beta } => beta < 1.0,
            Self::SkewReverseKl { alpha } => alpha > 0.0,
            Self::ForwardKl | Self::SkewForwardKl { .. } | Self::Tvd | Self::Uld => true,
        }
    }

    /// The divergence per row from normalised log-probabilities, `[batch]`,
    /// with burn's tensor operations (any backend, with or without autodiff).
    ///
    /// # Errors
    /// If the parameter is out of range ([`check`](Self::check)), or the shapes
    /// differ or are empty, or the tensors are on different devices.
    ///
    /// # Shapes
    /// - `student_log_probs`, `teacher_log_probs`: `[batch, classes]`; output `[batch]`.
    ///
    /// # Example
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use burn_distill::Divergence;
    ///
    /// let device = Device::flex();
    /// let p = Tensor::<2>::from_floats([[0.5f32.ln(), 0.5f32.ln()]], &device);
    /// let q = Tensor::<2>::from_floats([[0.25f32.ln(), 0.75f32.ln()]], &device);
    /// let value = |d: Divergence, q: &Tensor<2>, p: &Tensor<2>| {
    ///     d.rows(q.clone(), p.clone()).unwrap().into_scalar::<f32>()
    /// };
    /// // 0.5·ln(0.5/0.25) + 0.5·ln(0.5/0.75)
    /// let forward = 0.5 * 2f32.ln() + 0.5 * (2.0f32 / 3.0).ln();
    /// assert!((value(Divergence::ForwardKl, &q, &p) - forward).abs() < 1e-6);
    /// // Reverse KL is forward KL with the roles swapped.
    /// assert!((value(Divergence::ReverseKl, &p, &q) - forward).abs() < 1e-6);
    /// assert!((value(Divergence::Tvd, &q, &p) - 0.25).abs() < 1e-6);
    /// // Disjoint supports reach the JSD's bound ln 2.
    /// let one = Tensor::<2>::from_floats([[0.0, f32::NEG_INFINITY]], &device);
    /// let other = Tensor::<2>::from_floats([[f32::NEG_INFINITY, 0.0]], &device);
    /// let jsd = value(Divergence::Jsd { beta: 0.5 }, &other, &one);
    /// assert!((jsd - 2f32.ln()).abs() < 1e-6);
    /// ```
    pub fn rows(
        &self,
        student_log_probs: Tensor<2>,
        teacher_log_probs: Tensor<2>,
    ) -> Result<Tensor<1>, DistillError> {
        self.check()?;
        match self {
            // Any two vocabularies: only the rows must pair up.
            Self::Uld => check_log_prob_rows(&student_log_probs, &teacher_log_probs)?,
            _ => check_log_prob_pair(&student_log_probs, &teacher_log_probs)?,
        }
        Ok(self.rows_unchecked(student_log_probs, teacher_log_probs))
    }

    /// [`rows`](Self::rows) for callers that made the checks.
    pub(crate) fn rows_unchecked(
        &self,
        student_log_probs: Tensor<2>,
        teacher_log_probs: Tensor<2>,
    ) -> Tensor<1> {
        let (q, p) = (student_log_probs, teacher_log_probs);
        match *self {
            Self::ForwardKl => forward_kl_unchecked(q, p),
            Self::ReverseKl => forward_kl_unchecked(p, q),
            Self::Jsd { beta } => jsd_unchecked(q, p, beta),
            Self::JsdNormalized { beta } if beta == 0.0 || beta == 1.0 => jsd_unchecked(q, p, beta),
            Self::JsdNormalized { beta } => {
                jsd_unchecked(q, p, beta).mul_scalar(1.0 / (beta * (1.0 - beta)))
            }
            Self::SkewForwardKl { alpha } => skew_kl(p, q, alpha),
            Self::SkewReverseKl { alpha } => skew_kl(q, p, alpha),
            Self::Tvd => total_variation_unchecked(q, p),
            Self::Uld => uld_unchecked(q, p),
        }
    }
}

/// Shape checks shared by the divergences: same `[batch, classes]`, non-empty.
pub(crate) fn check_log_prob_pair(
    student_log_probs: &Tensor<2>,
    teacher_log_probs: &Tensor<2>,
) -> Result<(), DistillError> {
    let student_shape = student_log_probs.dims();
    let teacher_shape = teacher_log_probs.dims();
    check_same_shape(
        "student_log_probs",
        &student_shape,
        "teacher_log_probs",
        &teacher_shape,
    )?;
    check_non_empty("student_log_probs", &student_shape)?;
    check_device(
        "student_log_probs",
        student_log_probs,
        "teacher_log_probs",
        teacher_log_probs,
    )
}

/// The checks of [`Divergence::Uld`]'s rows: the same number of rows, each
/// non-empty, one device; any two widths.
fn check_log_prob_rows(
    student_log_probs: &Tensor<2>,
    teacher_log_probs: &Tensor<2>,
) -> Result<(), DistillError> {
    let [rows, _] = student_log_probs.dims();
    let [teacher_rows, _] = teacher_log_probs.dims();
    if teacher_rows != rows {
        return Err(shape_mismatch(
            "teacher_log_probs rows",
            &[teacher_rows],
            "student_log_probs rows",
            &[rows],
            "give one teacher row per student row",
        ));
    }
    check_non_empty("student_log_probs", &student_log_probs.dims())?;
    check_non_empty("teacher_log_probs", &teacher_log_probs.dims())?;
    check_device(
        "student_log_probs",
        student_log_probs,
        "teacher_log_probs",
        teacher_log_probs,
    )
}

/// [`Divergence::Uld`] without the checks: the L1 distance between the
/// sorted probabilities over the shorter width, plus the mass of the longer
/// one's rest (its distance to the zero padding).
pub(crate) fn uld_unchecked(
    student_log_probs: Tensor<2>,
    teacher_log_probs: Tensor<2>,
) -> Tensor<1> {
    let q = student_log_probs.exp().sort_descending(1);
    let p = teacher_log_probs.exp().sort_descending(1);
    let ([rows, q_width], [_, p_width]) = (q.dims(), p.dims());
    let shared = q_width.min(p_width);
    let head = |x: &Tensor<2>| x.clone().slice([0..rows, 0..shared]);
    let distance = (head(&q) - head(&p)).abs().sum_dim(1);
    let rest = |x: Tensor<2>, width: usize| x.slice([0..rows, shared..width]).sum_dim(1);
    let distance = match q_width.cmp(&p_width) {
        std::cmp::Ordering::Greater => distance + rest(q, q_width),
        std::cmp::Ordering::Less => distance + rest(p, p_width),
        std::cmp::Ordering::Equal => distance,
    };
    distance.squeeze_dim::<1>(1)
}

/// `KL(p‖q)` per row ([`Divergence::ForwardKl`]) without the checks, for
/// callers that already made them.
pub(crate) fn forward_kl_unchecked(
    student_log_probs: Tensor<2>,
    teacher_log_probs: Tensor<2>,
) -> Tensor<1> {
    let teacher_probs = teacher_log_probs.clone().exp();
    // Where p = 0 the term is 0 by the convention 0·log 0 = 0. The log-difference
    // is zeroed there *before* the product: otherwise the product's backward into
    // p computes 0·(−inf − −inf) = NaN whenever p carries a gradient (the student
    // in reverse KL and the JSD).
    let absent = teacher_probs.clone().lower_equal_elem(0.0);
    let difference = (teacher_log_probs - student_log_probs).mask_fill(absent, 0.0);
    let terms = teacher_probs * difference;
    terms.sum_dim(1).squeeze_dim::<1>(1)
}

/// [`Divergence::Jsd`] without the checks.
fn jsd_unchecked(
    student_log_probs: Tensor<2>,
    teacher_log_probs: Tensor<2>,
    beta: f64,
) -> Tensor<1> {
    if beta == 0.0 {
        return forward_kl_unchecked(student_log_probs, teacher_log_probs);
    }
    if beta == 1.0 {
        return forward_kl_unchecked(teacher_log_probs, student_log_probs);
    }
    let mixture = log_mixture(teacher_log_probs.clone(), beta, student_log_probs.clone());
    let teacher_part = forward_kl_unchecked(mixture.clone(), teacher_log_probs).mul_scalar(beta);
    let student_part = forward_kl_unchecked(mixture, student_log_probs).mul_scalar(1.0 - beta);
    teacher_part + student_part
}

/// [`Divergence::Tvd`] without the checks.
fn total_variation_unchecked(
    student_log_probs: Tensor<2>,
    teacher_log_probs: Tensor<2>,
) -> Tensor<1> {
    let difference = student_log_probs.exp() - teacher_log_probs.exp();
    difference
        .abs()
        .sum_dim(1)
        .squeeze_dim::<1>(1)
        .mul_scalar(0.5)
}

/// `KL(a ‖ α·a + (1−α)·b)` per row from log-probabilities; `KL(a ‖ b)` at α = 0.
fn skew_kl(log_a: Tensor<2>, log_b: Tensor<2>, alpha: f64) -> Tensor<1> {
    if alpha == 0.0 {
        return forward_kl_unchecked(log_b, log_a);
    }
    let mixture = log_mixture(log_a.clone(), alpha, log_b);
    forward_kl_unchecked(mixture, log_a)
}

/// `log(w·a + (1−w)·b)` from `log a` and `log b`, as a stable log-sum-exp
/// (`0 < w < 1`). Where both are `−inf` the result is `−inf`.
fn log_mixture(log_a: Tensor<2>, w: f64, log_b: Tensor<2>) -> Tensor<2> {
    // −inf (probability 0) is raised to the most negative finite f32 first, so that
    // no (−inf) − (−inf) = NaN arises in the forward pass or, through `abs`, in the
    // backward; exp of it is still exactly 0, and its gradient is 0 (clamped).
    let floor = f64::from(f32::MIN);
    let x = log_a.clamp_min(floor).add_scalar(w.ln());
    let y = log_b.clamp_min(floor).add_scalar((1.0 - w).ln());
    // log(e^x + e^y) = m + log(e^(x−m) + e^(y−m)) with m = max(x, y), detached:
    // the gradient then flows through the exponentials alone, e^(x−m)/(…) to x,
    // which is right at a tie too. (Through `max_pair` and `|x − y|` it was not:
    // at x = y — student and teacher agreeing on a class, which f32 rounding
    // makes common — `max_pair` sends the whole gradient to x and `abs` none.)
    let max = x.clone().max_pair(y.clone()).detach();
    max.clone() + ((x - max.clone()).exp() + (y - max).exp()).log()
}

/// A mixing weight in [0, 1].
pub(crate) fn check_unit_interval(argument: &'static str, value: f64) -> Result<(), DistillError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(DistillError::OutOfUnitInterval { argument, value })
    }
}

/// A skew weight in [0, 1): α = 1 would compare a distribution with itself.
fn check_skew(argument: &'static str, value: f64) -> Result<(), DistillError> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(DistillError::OutOfUnitInterval { argument, value })
    }
}
