//! The crate's one error type.
//!
//! Every check in burn-distill runs *before* any tensor operation, so a bad
//! argument surfaces as a [`DistillError`] naming the argument and the values
//! involved, never as a broadcast panic from inside burn or a silent NaN.
//! Panicking entry points (`forward`, `init`, …) panic with exactly the
//! [`Display`](std::fmt::Display) text of the error their `try_*` twin returns.

use std::fmt;

/// Why a distillation loss or helper refused its input.
///
/// Each variant carries the offending values so that the message can name them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DistillError {
    /// A temperature that is not a finite number greater than zero.
    InvalidTemperature {
        /// The argument or field that held it (e.g. `"temperature"`).
        argument: &'static str,
        /// The value given.
        value: f64,
    },
    /// A loss weight that is negative, NaN or infinite.
    InvalidWeight {
        /// The argument or field that held it (e.g. `"soft_weight"`).
        argument: &'static str,
        /// The value given.
        value: f64,
    },
    /// Both loss weights are zero, so the loss would be identically zero and
    /// train nothing — almost certainly a configuration mistake.
    AllWeightsZero {
        /// The soft-term weight given.
        soft_weight: f64,
        /// The hard-term weight given.
        hard_weight: f64,
    },
    /// A reduction dimension outside the tensor's rank.
    InvalidDim {
        /// The argument that held it (e.g. `"dim"`).
        argument: &'static str,
        /// The dimension given.
        dim: usize,
        /// The tensor's rank.
        rank: usize,
    },
    /// A tensor that must not be empty has a zero-sized dimension.
    EmptyTensor {
        /// The argument that held it.
        argument: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// Two arguments whose shapes, or one axis of them, must agree do not:
    /// teacher and student logits over vocabularies of 152064 and 151936
    /// classes, labels for another number of rows, a mask of another shape
    /// than the positions, a weight per teacher, … The one variant for every
    /// such mismatch; `requirement` says what the two must satisfy.
    ShapeMismatch {
        /// Name of the first argument (e.g. `"targets"`, `"teacher_logits[2]"`).
        left_argument: &'static str,
        /// Its shape, or the size of the axis compared.
        left_shape: Vec<usize>,
        /// Name of the argument it is compared with.
        right_argument: &'static str,
        /// Its shape, or the size of the axis compared.
        right_shape: Vec<usize>,
        /// What the two must satisfy (e.g. `"give one label per row"`).
        requirement: &'static str,
    },
    /// An ensemble was given no teachers.
    NoTeachers,
    /// A class subset with no classes.
    EmptySubset,
    /// A class index not below the number of classes.
    ClassOutOfRange {
        /// The class given.
        class: usize,
        /// The number of classes.
        num_classes: usize,
    },
    /// A class listed twice in a subset.
    DuplicateClass {
        /// The repeated class.
        class: usize,
    },
    /// A count or size parameter outside its valid range.
    InvalidParameter {
        /// The parameter's name.
        argument: &'static str,
        /// The value given.
        value: usize,
        /// What it must satisfy.
        requirement: &'static str,
    },
    /// A sampler that cannot draw: no example of the subset, or none outside it.
    NoExamples {
        /// Which side has none (`"in the subset"` or `"outside the subset"`).
        side: &'static str,
    },
    /// A mixing weight (β of the JSD, α of a skew KL) outside its interval.
    OutOfUnitInterval {
        /// The argument's name.
        argument: &'static str,
        /// The value given.
        value: f64,
    },
    /// [`Reduction::GlobalCount`](crate::Reduction::GlobalCount)`(0)` while
    /// positions are kept: the loss would silently be a sum.
    ZeroGlobalCount {
        /// The positions kept in the call.
        kept: usize,
    },
    /// Probabilities with a negative (or NaN) entry.
    InvalidProbabilities {
        /// The argument that held them (e.g. `"teacher_probs"`).
        argument: &'static str,
        /// The smallest entry found.
        value: f64,
    },
    /// Per-teacher weights that are all 0 (or whose sum overflows), so they
    /// cannot be normalised.
    InvalidWeightSum {
        /// Their sum.
        total: f64,
    },
    /// A loss that needs labels was given [`Targets::unlabelled`](crate::Targets::unlabelled).
    MissingLabels,
    /// A number that must be finite is not.
    NotFinite {
        /// The argument that held it.
        argument: &'static str,
        /// The value given.
        value: f64,
    },
    /// A teacher form a loss or setting cannot use.
    UnsupportedTeacher {
        /// The teacher argument given (e.g. `"teacher.log_probs"` for a top-k teacher).
        teacher: &'static str,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// A teacher of fewer classes than the student, padded with zero mass
    /// ([`VocabularyRule::PadTeacher`](crate::VocabularyRule::PadTeacher)),
    /// under a divergence that is infinite wherever the student puts mass on
    /// the padded classes.
    InfiniteOnPadding {
        /// The teacher argument (e.g. `"teacher_logits"`).
        teacher: &'static str,
        /// The teacher's classes.
        teacher_classes: usize,
        /// The student's classes.
        student_classes: usize,
        /// The divergence configured.
        divergence: crate::Divergence,
    },
    /// Two tensors that must be on one device are not.
    DeviceMismatch {
        /// The first argument.
        left_argument: &'static str,
        /// Its device.
        left_device: String,
        /// The second argument.
        right_argument: &'static str,
        /// Its device.
        right_device: String,
    },
    /// A class label that is negative or not below the number of classes.
    LabelOutOfRange {
        /// The argument that held it (e.g. `"targets"`).
        argument: &'static str,
        /// The offending label (the smallest if negative, else the largest).
        label: i64,
        /// Number of classes of the logits.
        num_classes: usize,
    },
    /// Top-k rows that cannot be a teacher's: a class index outside the
    /// vocabulary, a class listed twice, a NaN log-probability, or
    /// probabilities summing to more than 1.
    InvalidTopK {
        /// The argument that held them (e.g. `"teacher.indices"`).
        argument: &'static str,
        /// The first offending row.
        row: usize,
        /// What is wrong, with the values.
        reason: String,
    },
    /// A teacher store could not be created, written or read.
    StoreIo {
        /// The file.
        path: String,
        /// What was being done (e.g. `"open"`, `"rename into place"`).
        operation: &'static str,
        /// The operating system's message.
        message: String,
        /// The I/O error itself, also [`source`](std::error::Error::source).
        source: IoSource,
    },
    /// A teacher store whose bytes are not what was written: cut short,
    /// a checksum that differs, a value no writer produces.
    StoreDamaged {
        /// The file.
        path: String,
        /// What was found, with the values.
        what: String,
    },
    /// A teacher store written for something else than what the caller
    /// expects: another vocabulary, temperature, dataset order or teacher.
    StoreMismatch {
        /// The file.
        path: String,
        /// The header field that differs (e.g. `"dataset_fingerprint"`).
        field: &'static str,
        /// Its value in the store.
        stored: String,
        /// The value expected.
        expected: String,
    },
    /// An example index at or beyond the number of examples stored.
    ExampleOutOfRange {
        /// The index asked for.
        example: usize,
        /// Number of examples in the store.
        examples: usize,
    },
    /// A prompt that cannot be completed: empty, not a prefix of its
    /// sequence, or at least as long as the model's context.
    InvalidPrompt {
        /// The sequence (its index in the batch).
        sequence: usize,
        /// Its prompt's length.
        length: usize,
        /// What is wrong, with the values.
        reason: String,
    },
    /// On-policy distillation needs the batch's prompts, and the batch has no
    /// prompt mask.
    MissingPromptMask,
    /// A token id outside the vocabulary of a model or a teacher.
    TokenOutOfRange {
        /// The argument that held it (e.g. `"prompts"`).
        argument: &'static str,
        /// The offending token.
        token: i64,
        /// The vocabulary size.
        vocab: usize,
    },
    /// Two tokenizations that cannot be aligned, or an alignment that does
    /// not fit the logits it is used with.
    InvalidAlignment {
        /// The argument (e.g. `"teacher.byte_offsets"`, `"alignments[2]"`).
        argument: &'static str,
        /// What is wrong, with the values.
        reason: String,
    },
    /// A feature term asked a model for an intermediate output it did not
    /// give.
    MissingFeature {
        /// The name asked for.
        name: String,
        /// The names the model gave.
        available: Vec<String>,
    },
    /// A feature term of a distiller could not be computed.
    InFeatureTerm {
        /// The term's name (e.g. `"hint block2"`).
        term: String,
        /// Why.
        error: Box<DistillError>,
    },
}

impl fmt::Display for DistillError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidTemperature { argument, value } => write!(
                f,
                "{argument} must be a finite number greater than 0, got {value}"
            ),
            Self::InvalidWeight { argument, value } => write!(
                f,
                "{argument} must be a finite number greater than or equal to 0, got {value}"
            ),
            Self::AllWeightsZero {
                soft_weight,
                hard_weight,
            } => write!(
                f,
                "soft_weight ({soft_weight}) and hard_weight ({hard_weight}) are both 0: \
                 the loss would be identically zero; set at least one of them above 0"
            ),
            Self::InvalidDim {
                argument,
                dim,
                rank,
            } => write!(
                f,
                "{argument} = {dim} is out of range for a tensor of rank {rank} \
                 (valid: 0..{rank})"
            ),
            Self::EmptyTensor { argument, shape } => write!(
                f,
                "{argument} has shape {shape:?}, with a zero-sized dimension; \
                 it needs at least one row and one class"
            ),
            Self::ShapeMismatch {
                left_argument,
                left_shape,
                right_argument,
                right_shape,
                requirement,
            } => write!(
                f,
                "{left_argument} has shape {left_shape:?} but {right_argument} has shape \
                 {right_shape:?}; {requirement}"
            ),
            Self::NoTeachers => write!(
                f,
                "teacher_logits is empty: an ensemble needs at least one teacher"
            ),
            Self::EmptySubset => write!(f, "a class subset needs at least one class"),
            Self::ClassOutOfRange { class, num_classes } => write!(
                f,
                "class {class} is out of range for {num_classes} classes (valid: 0..{num_classes})"
            ),
            Self::DuplicateClass { class } => {
                write!(f, "class {class} appears more than once in the subset")
            }
            Self::InvalidParameter {
                argument,
                value,
                requirement,
            } => write!(
                f,
                "{argument} = {value} is invalid: it must be {requirement}"
            ),
            Self::NoExamples { side } => write!(
                f,
                "labels has no example {side}, so half/half sampling is impossible"
            ),
            Self::OutOfUnitInterval { argument, value } => write!(
                f,
                "{argument} must lie in [0, 1] (α of a skew KL in [0, 1)), got {value}"
            ),
            Self::ZeroGlobalCount { kept } => write!(
                f,
                "reduction is Reduction::GlobalCount(0) but {kept} positions are kept, \
                 so the loss would be a plain sum; give the kept positions of every \
                 micro-batch of the step (at least {kept})"
            ),
            Self::InvalidProbabilities { argument, value } => write!(
                f,
                "{argument} must hold probabilities (every entry ≥ 0), but its smallest entry is {value}"
            ),
            Self::InvalidWeightSum { total } => write!(
                f,
                "weights sum to {total}: at least one teacher needs a weight above 0, \
                 and the sum must be finite"
            ),
            Self::MissingLabels => write!(
                f,
                "targets has no labels, but this loss needs one label per row"
            ),
            Self::NotFinite { argument, value } => {
                write!(f, "{argument} must be a finite number, got {value}")
            }
            Self::InfiniteOnPadding {
                teacher,
                teacher_classes,
                student_classes,
                divergence,
            } => write!(
                f,
                "{teacher} has {teacher_classes} classes and the student {student_classes}: \
                 VocabularyRule::PadTeacher gives the student's last {} classes zero teacher \
                 mass, where {divergence:?} is infinite wherever the student puts mass; use \
                 VocabularyRule::SharedIds (the student renormalised over the shared ids) or a \
                 divergence finite there (ForwardKl, SkewForwardKl, Tvd, Jsd with beta < 1, \
                 SkewReverseKl with alpha > 0)",
                student_classes.saturating_sub(*teacher_classes)
            ),
            Self::InvalidAlignment { argument, reason } => {
                write!(f, "{argument} cannot be aligned: {reason}")
            }
            Self::UnsupportedTeacher { teacher, reason } => {
                write!(f, "{teacher} cannot be used here: {reason}")
            }
            Self::DeviceMismatch {
                left_argument,
                left_device,
                right_argument,
                right_device,
            } => write!(
                f,
                "{left_argument} is on {left_device} but {right_argument} is on {right_device}; \
                 move them to one device"
            ),
            Self::LabelOutOfRange {
                argument,
                label,
                num_classes,
            } => write!(
                f,
                "{argument} contains the label {label}, outside 0..{num_classes} \
                 (the logits have {num_classes} classes)"
            ),
            Self::InvalidTopK {
                argument,
                row,
                reason,
            } => write!(
                f,
                "{argument} row {row} is not a top-k teacher row: {reason}"
            ),
            Self::StoreIo {
                path,
                operation,
                message,
                ..
            } => write!(f, "teacher store {path}: could not {operation}: {message}"),
            Self::StoreDamaged { path, what } => write!(
                f,
                "teacher store {path} is damaged: {what}; nothing was read from it \
                 (write it again)"
            ),
            Self::StoreMismatch {
                path,
                field,
                stored,
                expected,
            } => write!(
                f,
                "teacher store {path} was written for {field} = {stored}, but {expected} \
                 is expected here; write a store for these settings"
            ),
            Self::ExampleOutOfRange { example, examples } => write!(
                f,
                "example {example} is out of range: the store holds {examples} examples \
                 (valid: 0..{examples})"
            ),
            Self::InvalidPrompt {
                sequence,
                length,
                reason,
            } => write!(
                f,
                "the prompt of sequence {sequence} ({length} tokens) cannot be completed: {reason}"
            ),
            Self::MissingPromptMask => write!(
                f,
                "the batch has no prompt_mask: on-policy distillation completes each \
                 sequence's prompt, so set TokenBatch::with_prompt_mask"
            ),
            Self::TokenOutOfRange {
                argument,
                token,
                vocab,
            } => write!(
                f,
                "{argument} holds token {token}, outside the vocabulary (valid: 0..{vocab})"
            ),
            Self::MissingFeature { name, available } => write!(
                f,
                "no feature named {name:?} (the model gave {available:?}); \
                 a distiller's feature terms read the student's from \
                 `Classifier::logits_and_features`, the teacher's from the teacher source"
            ),
            Self::InFeatureTerm { term, error } => write!(f, "feature term {term:?}: {error}"),
        }
    }
}

impl std::error::Error for DistillError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::StoreIo { source, .. } => Some(&*source.0),
            _ => None,
        }
    }
}

/// An I/O error kept inside a [`DistillError`]: shared, so that the error
/// stays `Clone`, and equal to another of the same kind and message.
#[derive(Debug, Clone)]
pub struct IoSource(pub std::sync::Arc<std::io::Error>);

impl IoSource {
    /// The I/O error.
    pub fn error(&self) -> &std::io::Error {
        &self.0
    }
}

impl From<std::io::Error> for IoSource {
    fn from(error: std::io::Error) -> Self {
        Self(std::sync::Arc::new(error))
    }
}

impl PartialEq for IoSource {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

/// A teacher store's I/O error on `path` while doing `operation`.
#[cfg_attr(not(feature = "store"), allow(dead_code))]
pub(crate) fn store_io(
    path: &std::path::Path,
    operation: &'static str,
    error: std::io::Error,
) -> DistillError {
    DistillError::StoreIo {
        path: path.display().to_string(),
        operation,
        message: error.to_string(),
        source: error.into(),
    }
}

/// Unwraps a checked result, panicking with the error's message.
///
/// Panicking entry points go through here so that their message is exactly the
/// `Display` of the error that the `try_*` twin returns.
#[track_caller]
pub(crate) fn or_panic<T>(result: Result<T, DistillError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{error}"),
    }
}
