//! Distillation from a teacher with another tokenizer, as TRL's GOLD does it
//! (`trl.experimental.gold`, its `ULDLoss` with `use_extended_uld`): the two
//! tokenizations of one text are aligned by their byte offsets into spans
//! that end at the same byte, the probabilities of each span's tokens are
//! merged into one distribution per model, and the merged distributions are
//! compared by the universal logit distillation loss (Boizard et al. 2024):
//!
//! ```text
//! GOLD = mean over sequences of  (1/S) Σ_spans Σ_i |q̃_(i) − p̃_(i)|
//! ```
//!
//! with `q̃`, `p̃` a span's merged student and teacher probabilities, each
//! sorted in decreasing order and the shorter padded with zeros, and `S` the
//! sequence's number of spans. A span of tokens `t_a … t_b` (rows `a … b`)
//! merges, by [`TokenMerge`], into
//!
//! ```text
//! Observed:  p̃ = p_a(·) · Π_{k=a+1..b} max(p_k(t_k), 1e-8)
//! Bayesian:  p̃ = p_b(·) · Π_{k=a..b−1} max(p_k(t_k), 1e-8)
//! ```
//!
//! which is not renormalised (as in TRL). The alignment is the crate's own
//! ([`SpanAlignment::from_byte_offsets`]) and takes any tokenizer's byte
//! offsets; the loss's value and gradient match TRL 1.16's.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use burn_distill::gold::{GoldLossConfig, SpanAlignment, Tokenization};
//!
//! // "a cat": the student reads ["a", " cat"], the teacher ["a", " c", "at"].
//! let student = Tokenization { first_row: 0, tokens: &[1, 2], byte_offsets: &[[0, 1], [1, 5]] };
//! let teacher = Tokenization {
//!     first_row: 0,
//!     tokens: &[4, 0, 3],
//!     byte_offsets: &[[0, 1], [1, 3], [3, 5]],
//! };
//! let alignment = SpanAlignment::from_byte_offsets(student, teacher)?;
//! // Two spans: "a" (one token each) and " cat" (one student token, two teacher tokens).
//! assert_eq!(alignment.spans(), &[(0..1, 0..1), (1..2, 1..3)]);
//!
//! let device = Device::flex().autodiff();
//! let z = Tensor::<3>::zeros([1, 2, 3], &device).require_grad(); // [batch, seq, student vocab]
//! let v = Tensor::<3>::zeros([1, 3, 5], &device); // [batch, seq, teacher vocab]
//! let loss = GoldLossConfig::new().init().forward(z.clone(), v, &[alignment]);
//! assert!(loss.into_scalar::<f32>() > 0.0);
//! # Ok::<(), burn_distill::DistillError>(())
//! ```

use std::ops::Range;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::check::{check_device, check_temperature, check_weight, indexed, shape_mismatch};
use crate::divergence::{Divergence, check_unit_interval, uld_unchecked};
use crate::error::{DistillError, or_panic};
use crate::fused;
use crate::temperature::{compute_dtype, log_softmax_unchecked};

/// TRL's floor on a merged token's probability (`clamp_min(1e-8)`).
const MERGED_TOKEN_FLOOR: f64 = 1e-8;

/// How the rows of a span merge into one distribution (TRL's
/// `uld_token_merge_strategy`); see the [module](self) for the formulas.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum TokenMerge {
    /// The distribution at the span's first row times the probabilities of
    /// the span's later tokens at their rows. TRL's default.
    Observed,
    /// The distribution at the span's last row times the probabilities of
    /// its earlier tokens at their rows: the chain rule, when row `k` is the
    /// distribution that predicts token `k`.
    Bayesian,
}

/// One sequence's tokens under one tokenizer, for [`SpanAlignment`].
#[derive(Debug, Clone, Copy)]
pub struct Tokenization<'a> {
    /// The row of the model's `[seq, vocab]` logits that goes with
    /// `tokens[0]`; token `k` goes with row `first_row + k`.
    pub first_row: usize,
    /// The token ids.
    pub tokens: &'a [i64],
    /// Each token's `[start, end)` in the text's UTF-8 bytes, as tokenizers
    /// report them (`return_offsets_mapping`); the ends must not decrease.
    pub byte_offsets: &'a [[usize; 2]],
}

/// The alignment of a student's and a teacher's tokenization of one text:
/// consecutive spans of tokens that end at the same byte, where the two
/// tokenizers agree on a boundary (TRL's `_align_by_byte_offsets`, with the
/// spans that have no token on one side left out, as TRL leaves them out).
#[derive(Debug, Clone, PartialEq)]
pub struct SpanAlignment {
    student_first_row: usize,
    teacher_first_row: usize,
    student_tokens: Vec<i64>,
    teacher_tokens: Vec<i64>,
    spans: Vec<(Range<usize>, Range<usize>)>,
}

impl SpanAlignment {
    /// Aligns two tokenizations of one text by their byte offsets.
    ///
    /// # Errors
    /// [`DistillError::InvalidAlignment`] naming the side and the values when
    /// a side has no token, as many offsets as tokens, a negative token, an
    /// offset that starts after it ends, or ends that decrease, or when the
    /// two do not end at the same byte (they do not tokenize the same text).
    pub fn from_byte_offsets(
        student: Tokenization<'_>,
        teacher: Tokenization<'_>,
    ) -> Result<Self, DistillError> {
        check_tokenization("student", &student)?;
        check_tokenization("teacher", &teacher)?;
        let (s_end, t_end) = (last_end(&student), last_end(&teacher));
        if s_end != t_end {
            return Err(DistillError::InvalidAlignment {
                argument: "teacher.byte_offsets",
                reason: format!(
                    "the student's tokens end at byte {s_end} and the teacher's at byte {t_end}: \
                     they do not tokenize the same text"
                ),
            });
        }
        let (s, t) = (student.byte_offsets, teacher.byte_offsets);
        let mut spans = Vec::new();
        let (mut s_start, mut t_start, mut i, mut j) = (0, 0, 0, 0);
        while i < s.len() && j < t.len() {
            match s[i][1].cmp(&t[j][1]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                    spans.push((s_start..i, t_start..j));
                    (s_start, t_start) = (i, j);
                }
            }
        }
        // Both end at one byte (checked), so the walk closes a span there;
        // what is left on one side is zero-width tokens at the text's end (an
        // EOS), which have no counterpart: left out, as TRL leaves them out.
        Ok(Self {
            student_first_row: student.first_row,
            teacher_first_row: teacher.first_row,
            student_tokens: student.tokens.to_vec(),
            teacher_tokens: teacher.tokens.to_vec(),
            spans,
        })
    }

    /// Boizard et al.'s alignment (TRL's plain ULD, `use_extended_uld =
    /// false`): the first `min(n_s, n_t)` rows of the student's answer
    /// `student_rows` and of the teacher's `teacher_rows` paired one to one,
    /// the rest of the longer answer left out. Each span is one row, so
    /// nothing merges: [`GoldLoss`] is then ULD averaged over the pairs.
    ///
    /// # Errors
    /// [`DistillError::InvalidAlignment`] when a side's rows are empty.
    ///
    /// ```
    /// use burn_distill::gold::SpanAlignment;
    ///
    /// // A student answer at rows 1..6, the teacher's at rows 2..5.
    /// let alignment = SpanAlignment::by_position(1..6, 2..5)?;
    /// assert_eq!(alignment.spans(), &[(0..1, 0..1), (1..2, 1..2), (2..3, 2..3)]);
    /// # Ok::<(), burn_distill::DistillError>(())
    /// ```
    pub fn by_position(
        student_rows: Range<usize>,
        teacher_rows: Range<usize>,
    ) -> Result<Self, DistillError> {
        for (argument, rows) in [
            ("student_rows", &student_rows),
            ("teacher_rows", &teacher_rows),
        ] {
            if rows.is_empty() {
                return Err(DistillError::InvalidAlignment {
                    argument,
                    reason: format!("{rows:?} holds no row"),
                });
            }
        }
        let pairs = student_rows.len().min(teacher_rows.len());
        Ok(Self {
            student_first_row: student_rows.start,
            teacher_first_row: teacher_rows.start,
            // One-row spans multiply in no token's probability: the ids are
            // never read (0 is in every vocabulary).
            student_tokens: vec![0; pairs],
            teacher_tokens: vec![0; pairs],
            spans: (0..pairs).map(|k| (k..k + 1, k..k + 1)).collect(),
        })
    }

    /// The spans, as ranges of the student's and the teacher's token
    /// indices (`0` is each [`Tokenization`]'s first token).
    pub fn spans(&self) -> &[(Range<usize>, Range<usize>)] {
        &self.spans
    }
}

/// The checks of one side of an alignment.
fn check_tokenization(side: &'static str, t: &Tokenization<'_>) -> Result<(), DistillError> {
    let argument = match side {
        "student" => "student.byte_offsets",
        _ => "teacher.byte_offsets",
    };
    let bad = |reason: String| Err(DistillError::InvalidAlignment { argument, reason });
    if t.tokens.is_empty() {
        return bad(format!("the {side} has no token"));
    }
    if t.tokens.len() != t.byte_offsets.len() {
        return bad(format!(
            "{} offsets for {} {side} tokens",
            t.byte_offsets.len(),
            t.tokens.len()
        ));
    }
    if let Some(k) = t.tokens.iter().position(|&id| id < 0) {
        return bad(format!("{side} token {k} is {}", t.tokens[k]));
    }
    for (k, &[start, end]) in t.byte_offsets.iter().enumerate() {
        if start > end {
            return bad(format!(
                "offset {k} is [{start}, {end}]: it starts after it ends"
            ));
        }
        if k > 0 && end < t.byte_offsets[k - 1][1] {
            let before = t.byte_offsets[k - 1][1];
            return bad(format!(
                "offset {k} ends at byte {end}, before offset {} ({before})",
                k - 1
            ));
        }
    }
    Ok(())
}

/// The byte where a (checked, non-empty) tokenization ends.
fn last_end(t: &Tokenization<'_>) -> usize {
    t.byte_offsets.last().map_or(0, |o| o[1])
}

/// The token ids whose strings are the same in the student's and the
/// teacher's vocabularies, for GOLD's hybrid loss
/// ([`GoldLoss::with_matches`]); TRL's `_initialize_vocabulary_mapping`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenMatches {
    /// `(student id, teacher id)`, by increasing teacher id.
    pairs: Vec<(usize, usize)>,
}

impl TokenMatches {
    /// Matches the ids of equal strings in two vocabularies given as
    /// `(token string, id)` pairs (a tokenizer's `get_vocab()`).
    ///
    /// # Errors
    /// [`DistillError::InvalidAlignment`] when a side lists a string or an id
    /// twice, naming it.
    ///
    /// ```
    /// use burn_distill::gold::TokenMatches;
    ///
    /// let student = [("a", 0), ("b", 1), (" cat", 2)];
    /// let teacher = [(" cat", 0), ("a", 1), ("ab", 2)];
    /// let matches = TokenMatches::from_vocabularies(student, teacher)?;
    /// assert_eq!(matches.pairs(), &[(2, 0), (0, 1)]);
    /// # Ok::<(), burn_distill::DistillError>(())
    /// ```
    pub fn from_vocabularies<'a>(
        student: impl IntoIterator<Item = (&'a str, usize)>,
        teacher: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Result<Self, DistillError> {
        use std::collections::{HashMap, HashSet};
        let read = |argument: &'static str, entries: &mut dyn Iterator<Item = (&'a str, usize)>| {
            let mut by_string = HashMap::new();
            let mut ids = HashSet::new();
            for (string, id) in entries {
                if !ids.insert(id) {
                    return Err(DistillError::InvalidAlignment {
                        argument,
                        reason: format!("id {id} is listed twice"),
                    });
                }
                if by_string.insert(string, id).is_some() {
                    return Err(DistillError::InvalidAlignment {
                        argument,
                        reason: format!("the token {string:?} is listed twice"),
                    });
                }
            }
            Ok(by_string)
        };
        let student = read("student_vocabulary", &mut student.into_iter())?;
        let teacher = read("teacher_vocabulary", &mut teacher.into_iter())?;
        let mut pairs: Vec<(usize, usize)> = teacher
            .iter()
            .filter_map(|(string, &t)| student.get(string).map(|&s| (s, t)))
            .collect();
        pairs.sort_unstable_by_key(|&(_, t)| t);
        Ok(Self { pairs })
    }

    /// The matched `(student id, teacher id)` pairs, by increasing teacher id.
    pub fn pairs(&self) -> &[(usize, usize)] {
        &self.pairs
    }
}

/// ULD per row of merged log-values (not renormalised): the CPU engine's
/// radix sort where it serves them, burn ops elsewhere.
fn uld(s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
    fused::uld_of_log_values(&s, &t).unwrap_or_else(|| uld_unchecked(s, t))
}

/// The hybrid's columns: the matched ids (student's, teacher's), the rest
/// of each vocabulary (`None` where a side has none), and the two weights.
struct HybridColumns {
    matched: Option<(Tensor<1, Int>, Tensor<1, Int>)>,
    rest: Option<(Tensor<1, Int>, Tensor<1, Int>)>,
    weights: [f64; 2],
}

/// Configuration of a [`GoldLoss`].
#[derive(Config, Debug)]
pub struct GoldLossConfig {
    /// Temperature of the student's softmax (TRL's `uld_student_temperature`).
    /// Default: 1.0.
    #[config(default = 1.0)]
    pub student_temperature: f64,
    /// Temperature of the teacher's softmax (TRL's `uld_teacher_temperature`).
    /// Default: 1.0.
    #[config(default = 1.0)]
    pub teacher_temperature: f64,
    /// How a span's rows merge. Default: [`TokenMerge::Observed`] (TRL's).
    #[config(default = "TokenMerge::Observed")]
    pub merge: TokenMerge,
    /// With [`GoldLoss::with_matches`] (the hybrid loss): `β` of the
    /// generalised JSD on the matched tokens, in [0, 1] (TRL's `beta`).
    /// Default: 0.5.
    #[config(default = 0.5)]
    pub beta: f64,
    /// With [`GoldLoss::with_matches`]: the weights of the matched and the
    /// unmatched part; `None` weighs the matched part by the matched ids'
    /// share of the teacher's vocabulary and the rest by its complement
    /// (TRL's adaptive weighting). Default: None.
    #[config(default = "None")]
    pub hybrid_weights: Option<[f64; 2]>,
}

impl GoldLossConfig {
    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid field, with the message of [`try_init`](Self::try_init).
    pub fn init(&self) -> GoldLoss {
        or_panic(self.try_init())
    }

    /// Builds the loss, or says which field is invalid: a temperature that is
    /// not finite and > 0, `beta` outside [0, 1], a hybrid weight that is
    /// negative or not finite.
    pub fn try_init(&self) -> Result<GoldLoss, DistillError> {
        check_temperature("student_temperature", self.student_temperature)?;
        check_temperature("teacher_temperature", self.teacher_temperature)?;
        check_unit_interval("beta", self.beta)?;
        if let Some([matched, unmatched]) = self.hybrid_weights {
            check_weight("hybrid_weights[0]", matched)?;
            check_weight("hybrid_weights[1]", unmatched)?;
        }
        Ok(GoldLoss {
            student_temperature: self.student_temperature,
            teacher_temperature: self.teacher_temperature,
            merge: self.merge,
            beta: self.beta,
            hybrid_weights: self.hybrid_weights,
            matches: None,
        })
    }
}

/// GOLD's cross-tokenizer loss; see the [module](self) documentation.
///
/// # Shapes
/// - `student_logits`: `[batch, seq_s, vocab_s]`; `teacher_logits`:
///   `[batch, seq_t, vocab_t]` — any two vocabularies and lengths
/// - `alignments`: one [`SpanAlignment`] per sequence of the batch
/// - output: `[1]`, the mean over the sequences of each one's mean over its
///   spans (a sequence without a span counts as 0, as in TRL)
#[derive(Module, Debug)]
pub struct GoldLoss {
    student_temperature: f64,
    teacher_temperature: f64,
    #[module(skip)]
    merge: TokenMerge,
    beta: f64,
    #[module(skip)]
    hybrid_weights: Option<[f64; 2]>,
    #[module(skip)]
    matches: Option<TokenMatches>,
}

impl GoldLoss {
    /// GOLD's hybrid loss: on the `matches` (ids whose strings both
    /// vocabularies share), the generalised JSD of the merged probabilities
    /// (floored at 1e-8, `β` of the config), averaged over the spans; ULD on
    /// the other ids; weighted as the config's `hybrid_weights` say.
    pub fn with_matches(self, matches: TokenMatches) -> Self {
        Self {
            matches: Some(matches),
            ..self
        }
    }

    /// The loss, `[1]`, in the student's dtype (computed in f32 or f64).
    ///
    /// # Panics
    /// On bad input, with the message of [`check`](Self::check).
    pub fn forward(
        &self,
        student_logits: Tensor<3>,
        teacher_logits: Tensor<3>,
        alignments: &[SpanAlignment],
    ) -> Tensor<1> {
        or_panic(self.check(&student_logits, &teacher_logits, alignments));
        let dtype = student_logits.dtype();
        let compute = compute_dtype(dtype);
        let batch = alignments.len();
        let ([_, _, s_vocab], [_, _, t_vocab]) = (student_logits.dims(), teacher_logits.dims());
        let device = student_logits.device();
        let spans: usize = alignments.iter().map(|a| a.spans.len()).sum();
        if spans == 0 {
            // No span anywhere: 0, with a zero gradient.
            return student_logits.sum().mul_scalar(0.0).cast(dtype);
        }
        // Every sequence's spans at once: one softmax, one merge and one ULD
        // call over all the batch's spans, each span weighted by
        // 1 / (its sequence's spans · sequences).
        let s = self.merged(
            student_logits,
            self.student_temperature,
            compute,
            alignments,
            Side::Student,
        );
        let t = self.merged(
            teacher_logits.detach(),
            self.teacher_temperature,
            compute,
            alignments,
            Side::Teacher,
        );
        let per_span = match &self.matches {
            None => uld(s, t),
            Some(m) => {
                let columns = self.hybrid_columns(m, s_vocab, t_vocab, &device);
                self.hybrid(s, t, &columns)
            }
        };
        // In f64, cast to the computation's dtype: 1/n in f32 would cost an
        // f64 loss its precision.
        let weights: Vec<f64> = alignments
            .iter()
            .flat_map(|a| {
                let w = 1.0 / (a.spans.len() as f64 * batch as f64);
                std::iter::repeat_n(w, a.spans.len())
            })
            .collect();
        let weights = Tensor::<1>::from_data(
            TensorData::new(weights, [spans]),
            (&device, per_span.dtype()),
        );
        (per_span * weights).sum().cast(dtype)
    }

    /// Checks what [`forward`](Self::forward) checks: one alignment per
    /// sequence, every span's rows inside its logits, every token inside its
    /// model's vocabulary, non-empty logits, one device.
    pub fn check(
        &self,
        student_logits: &Tensor<3>,
        teacher_logits: &Tensor<3>,
        alignments: &[SpanAlignment],
    ) -> Result<(), DistillError> {
        check_device(
            "student_logits",
            student_logits,
            "teacher_logits",
            teacher_logits,
        )?;
        let [batch, s_seq, s_vocab] = student_logits.dims();
        let [t_batch, t_seq, t_vocab] = teacher_logits.dims();
        for (argument, found) in [
            ("teacher_logits", t_batch),
            ("alignments", alignments.len()),
        ] {
            if found != batch {
                return Err(shape_mismatch(
                    argument,
                    &[found],
                    "student_logits batch",
                    &[batch],
                    "give one per sequence of the student's batch",
                ));
            }
        }
        for (argument, shape) in [
            ("student_logits", student_logits.dims()),
            ("teacher_logits", teacher_logits.dims()),
        ] {
            crate::check::check_non_empty(argument, &shape)?;
        }
        if let Some(matches) = &self.matches {
            for (side, id, vocab) in matches
                .pairs
                .iter()
                .flat_map(|&(s, t)| [("student", s, s_vocab), ("teacher", t, t_vocab)])
            {
                if id >= vocab {
                    return Err(DistillError::InvalidAlignment {
                        argument: "matches",
                        reason: format!(
                            "{side} id {id} is outside the {side}'s vocabulary of {vocab}"
                        ),
                    });
                }
            }
        }
        for (b, a) in alignments.iter().enumerate() {
            let argument = indexed("alignments", b);
            let sides = [
                (
                    "student",
                    a.student_first_row,
                    &a.student_tokens,
                    s_seq,
                    s_vocab,
                ),
                (
                    "teacher",
                    a.teacher_first_row,
                    &a.teacher_tokens,
                    t_seq,
                    t_vocab,
                ),
            ];
            for (side, first, tokens, seq, vocab) in sides {
                if first.saturating_add(tokens.len()) > seq {
                    return Err(DistillError::InvalidAlignment {
                        argument,
                        reason: format!(
                            "the {side}'s tokens take rows {first}..{} of a sequence of {seq}",
                            first + tokens.len()
                        ),
                    });
                }
                if let Some(&token) = tokens.iter().find(|&&t| t as u64 >= vocab as u64) {
                    return Err(DistillError::InvalidAlignment {
                        argument,
                        reason: format!(
                            "{side} token {token} is outside the {side}'s vocabulary of {vocab}"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The hybrid per span (`s`, `t`: merged log-probabilities, `[spans,
    /// vocab]` each): `w_m · JSD_β` on the matched ids plus `w_u · ULD` on
    /// the others, each part 0 where it has no id; `[spans]`.
    fn hybrid(&self, s: Tensor<2>, t: Tensor<2>, columns: &HybridColumns) -> Tensor<1> {
        let [spans, _] = s.dims();
        let zero = || Tensor::<1>::zeros([spans], (&s.device(), s.dtype()));
        let floor = MERGED_TOKEN_FLOOR.ln();
        let matched = match &columns.matched {
            None => zero(),
            Some((s_ids, t_ids)) => {
                let q = s.clone().select(1, s_ids.clone()).clamp_min(floor);
                let p = t.clone().select(1, t_ids.clone()).clamp_min(floor);
                Divergence::Jsd { beta: self.beta }.rows_unchecked(q, p)
            }
        };
        let rest = match &columns.rest {
            None => zero(),
            Some((s_ids, t_ids)) => uld(s.select(1, s_ids.clone()), t.select(1, t_ids.clone())),
        };
        let [w_matched, w_rest] = columns.weights;
        matched.mul_scalar(w_matched) + rest.mul_scalar(w_rest)
    }

    /// The hybrid's columns and weights for vocabularies of `s_vocab` and
    /// `t_vocab`: the same for every sequence, so made once per call.
    fn hybrid_columns(
        &self,
        matches: &TokenMatches,
        s_vocab: usize,
        t_vocab: usize,
        device: &Device,
    ) -> HybridColumns {
        let ids = |ids: &[usize]| {
            let n = ids.len();
            let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), device)
        };
        let unmatched = |vocab: usize, matched: &[usize]| {
            let mut keep = vec![true; vocab];
            matched.iter().for_each(|&i| keep[i] = false);
            (0..vocab).filter(|&i| keep[i]).collect::<Vec<_>>()
        };
        let (s_matched, t_matched): (Vec<usize>, Vec<usize>) =
            matches.pairs.iter().copied().unzip();
        let (s_rest, t_rest) = (
            unmatched(s_vocab, &s_matched),
            unmatched(t_vocab, &t_matched),
        );
        HybridColumns {
            matched: (!s_matched.is_empty()).then(|| (ids(&s_matched), ids(&t_matched))),
            rest: (!s_rest.is_empty() && !t_rest.is_empty()).then(|| (ids(&s_rest), ids(&t_rest))),
            weights: self.hybrid_weights.unwrap_or_else(|| {
                let share = s_matched.len() as f64 / t_vocab.max(1) as f64;
                [share, 1.0 - share]
            }),
        }
    }

    /// The merged log-probabilities of every span of every sequence, in
    /// order, from one side's `[batch, seq, vocab]` logits: `[spans, vocab]`.
    fn merged(
        &self,
        logits: Tensor<3>,
        temperature: f64,
        compute: burn::tensor::DType,
        alignments: &[SpanAlignment],
        side: Side,
    ) -> Tensor<2> {
        let device = logits.device();
        let [batch, seq, vocab] = logits.dims();
        // Over the flattened logits (rows `b · seq + t`): each row's token
        // (0 where none), each span's base row and, as (span, row) pairs, the
        // rows whose own probabilities it multiplies in; spans counted over
        // the whole batch.
        let mut tokens = vec![0i64; batch * seq];
        let mut base = Vec::new();
        let (mut pair_spans, mut pair_rows) = (Vec::new(), Vec::new());
        for (b, a) in alignments.iter().enumerate() {
            let (first_row, own_tokens) = match side {
                Side::Student => (a.student_first_row, &a.student_tokens),
                Side::Teacher => (a.teacher_first_row, &a.teacher_tokens),
            };
            let offset = b * seq + first_row;
            tokens[offset..offset + own_tokens.len()].copy_from_slice(own_tokens);
            for (s_span, t_span) in &a.spans {
                let span = match side {
                    Side::Student => s_span,
                    Side::Teacher => t_span,
                };
                let (first, others) = match self.merge {
                    TokenMerge::Observed => (span.start, span.start + 1..span.end),
                    TokenMerge::Bayesian => (span.end - 1, span.start..span.end - 1),
                };
                for k in others {
                    pair_spans.push(base.len() as i64);
                    pair_rows.push((offset + k) as i64);
                }
                base.push((offset + first) as i64);
            }
        }
        let ints = |values: Vec<i64>| {
            let n = values.len();
            Tensor::<1, Int>::from_data(TensorData::new(values, [n]), &device)
        };
        // One softmax over every row (a row no span reads costs its softmax,
        // not a copy of the rows that are read).
        let log_probs = log_softmax_unchecked(
            logits.reshape([batch * seq, vocab]).cast(compute),
            temperature,
            1,
        );
        let spans = base.len();
        let merged = log_probs.clone().select(0, ints(base));
        if pair_rows.is_empty() {
            return merged;
        }
        // Each token's own log-probability at its row, floored as TRL floors
        // it, summed into its span.
        let own = log_probs
            .gather(1, ints(tokens).reshape([batch * seq, 1]))
            .clamp_min(MERGED_TOKEN_FLOOR.ln())
            .reshape([batch * seq]);
        let products = Tensor::<1>::zeros([spans], (&device, own.dtype())).select_assign(
            0,
            ints(pair_spans),
            own.select(0, ints(pair_rows)),
            IndexingUpdateOp::Add,
        );
        merged + products.reshape([spans, 1])
    }
}

/// Which model's tokens and spans [`GoldLoss::merged`] reads.
#[derive(Clone, Copy)]
enum Side {
    Student,
    Teacher,
}
