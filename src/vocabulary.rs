//! How a teacher whose vocabulary differs in size from the student's is
//! matched to it: the rule decided once, where the teacher enters a loss.

use burn::config::Config;

use crate::divergence::Divergence;
use crate::error::DistillError;

/// How [`KdLoss`](crate::KdLoss) (and the
/// [`FusedLinearKdLoss`](crate::FusedLinearKdLoss) built on it) matches a
/// dense teacher whose number of classes `V_t` differs from the student's
/// `V_s`.
///
/// Every rule but [`Same`](Self::Same) matches classes **by id**: id `i` is
/// the same token for both models, as when two vocabularies of one tokenizer
/// family differ only by rows at the end (Qwen's 152064 vs 151936 embedding
/// rows). When the two tokenizers differ, a rule by id is wrong whatever the
/// sizes.
///
/// | rule | `V_t > V_s` | `V_t < V_s` |
/// |---|---|---|
/// | `Same` | error | error |
/// | `TruncateTeacher` | teacher cut to ids `0..V_s` | error |
/// | `PadTeacher` | teacher cut to ids `0..V_s` | teacher mass 0 on ids `V_t..V_s` |
/// | `SharedIds` | teacher cut to ids `0..V_s` | student cut to ids `0..V_t` in the soft term |
///
/// A teacher cut to the shared ids is renormalised over them: its logits are
/// cut before the softmax (probabilities are renormalised), so the mass it
/// puts on the ids the student lacks is dropped, not moved.
///
/// Where the teacher gives zero mass to classes the student keeps
/// (`PadTeacher` with `V_t < V_s`), each divergence `D(p, q)` behaves as its
/// formula says at `p_i = 0`:
///
/// | divergence | at `p_i = 0, q_i > 0` |
/// |---|---|
/// | `ForwardKl`, `SkewForwardKl` | 0: finite |
/// | `Jsd`, `JsdNormalized` with `β < 1` | finite (the mixture keeps `(1−β)·q_i`) |
/// | `SkewReverseKl` with `α > 0` | `−q_i·ln α`: finite |
/// | `Tvd` | `½·q_i`: finite |
/// | `ReverseKl`, `Jsd`/`JsdNormalized` with `β = 1`, `SkewReverseKl` with `α = 0` | `+∞` |
///
/// The last row's divergences are refused by name
/// ([`DistillError::InfiniteOnPadding`]) under `PadTeacher`; `SharedIds`
/// renormalises the student over the shared ids instead, which every
/// divergence accepts. The hard-label term always sees the student's whole
/// vocabulary.
///
/// [`Divergence::Uld`] compares sorted distributions, not ids: it takes any
/// two vocabularies and no rule applies to it.
///
/// A top-k teacher ([`TeacherOutput::TopK`](crate::TeacherOutput::TopK)) has
/// no width: its indices must be student ids under every rule, and its tail
/// bucket covers every other student class.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::{Divergence, KdLossConfig, TeacherOutput, Targets, VocabularyRule};
///
/// let device = Device::flex();
/// // A student of 3 classes, a teacher of 2: class 2 is the student's alone.
/// let student = Tensor::<2>::from_floats([[0.5, -0.5, 1.0]], &device);
/// let teacher = || TeacherOutput::Logits(Tensor::<2>::from_floats([[0.0, 1.0]], &device));
/// let soft = |vocabulary, divergence| {
///     let kd = KdLossConfig::new()
///         .with_temperature(1.0)
///         .with_soft_weight(1.0)
///         .with_hard_weight(0.0)
///         .with_vocabulary(vocabulary)
///         .with_divergence(divergence)
///         .init();
///     kd.forward(student.clone(), teacher(), Targets::unlabelled())
///         .into_scalar::<f32>()
/// };
/// let softmax = |z: &[f32]| {
///     let sum: f32 = z.iter().map(|v| v.exp()).sum();
///     z.iter().map(|v| v.exp() / sum).collect::<Vec<_>>()
/// };
/// let kl = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a * (a / b).ln()).sum::<f32>();
/// let p = softmax(&[0.0, 1.0]);
///
/// // Forward KL against the padded teacher (mass 0 on class 2) is finite.
/// let padded = soft(VocabularyRule::PadTeacher, Divergence::ForwardKl);
/// let q = softmax(&[0.5, -0.5, 1.0]);
/// assert!((padded - kl(&p, &q[..2])).abs() < 1e-5);
///
/// // Reverse KL would be infinite there: refused by name.
/// let kd = KdLossConfig::new()
///     .with_vocabulary(VocabularyRule::PadTeacher)
///     .with_divergence(Divergence::ReverseKl)
///     .init();
/// let error = kd.check(&student, &teacher(), &Targets::unlabelled()).unwrap_err();
/// assert!(error.to_string().contains("ReverseKl"));
///
/// // Over the shared ids the student is renormalised too: q = softmax([0.5, -0.5]).
/// let shared = soft(VocabularyRule::SharedIds, Divergence::ReverseKl);
/// let q = softmax(&[0.5, -0.5]);
/// assert!((shared - kl(&q, &p)).abs() < 1e-5);
/// ```
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum VocabularyRule {
    /// The teacher has exactly the student's classes; any other number is a
    /// [`DistillError::ShapeMismatch`]. The default: a silently matched
    /// vocabulary is wrong whenever the two do not share their ids.
    Same,
    /// A teacher with more classes is cut to the student's ids (and
    /// renormalised over them); one with fewer is an error.
    TruncateTeacher,
    /// A wider teacher is cut as by `TruncateTeacher`; a narrower one gives
    /// zero mass to the student's ids it lacks, with every divergence that is
    /// finite there (see the table above).
    PadTeacher,
    /// The soft term is taken over the ids both models have, `0..min(V_s, V_t)`,
    /// with both distributions renormalised over them: a wider teacher is cut,
    /// a wider student's extra classes take no part in the soft term (and get
    /// no gradient from it).
    SharedIds,
}

impl VocabularyRule {
    /// Whether a teacher of `teacher` classes may teach a student of
    /// `student` under this rule and `divergence` (widths only; see
    /// [`check_teacher`](Self::check_teacher) for what else it refuses).
    /// [`Divergence::Uld`] takes any two vocabularies.
    pub(crate) fn fits(self, teacher: usize, student: usize, divergence: Divergence) -> bool {
        match self {
            _ if divergence == Divergence::Uld => true,
            Self::Same => teacher == student,
            Self::TruncateTeacher => teacher >= student,
            Self::PadTeacher | Self::SharedIds => true,
        }
    }

    /// The classes the soft term compares, `(the student's, the teacher's)`:
    /// the student's for both, or the ids both have under `SharedIds`; under
    /// [`Divergence::Uld`] each model's own.
    pub(crate) fn soft_classes(
        self,
        teacher: usize,
        student: usize,
        divergence: Divergence,
    ) -> (usize, usize) {
        match self {
            _ if divergence == Divergence::Uld => (student, teacher),
            Self::SharedIds => (teacher.min(student), teacher.min(student)),
            _ => (student, student),
        }
    }

    /// Refuses a teacher the divergence cannot take: a top-k one
    /// (`teacher: None`, no width of its own) under ULD, which sorts the
    /// whole distribution; a narrower one, padded with zero mass, under a
    /// divergence infinite there. `teacher_argument` names it in the error.
    pub(crate) fn check_teacher(
        self,
        teacher_argument: &'static str,
        teacher: Option<usize>,
        student: usize,
        divergence: Divergence,
    ) -> Result<(), DistillError> {
        let Some(teacher) = teacher else {
            return match divergence {
                Divergence::Uld => Err(DistillError::UnsupportedTeacher {
                    teacher: teacher_argument,
                    reason: "ULD sorts the teacher's whole distribution; a top-k teacher keeps \
                             k classes and an unsorted tail",
                }),
                _ => Ok(()),
            };
        };
        let padded = self == Self::PadTeacher && teacher < student;
        if padded && !divergence.finite_where_teacher_is_zero() {
            return Err(DistillError::InfiniteOnPadding {
                teacher: teacher_argument,
                teacher_classes: teacher,
                student_classes: student,
                divergence,
            });
        }
        Ok(())
    }
}
