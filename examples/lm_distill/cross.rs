//! The cross-tokenizer rows: the word-level teacher distilled into a student
//! that reads byte-pair pieces ([`Bpe`]), by ULD (Boizard et al. 2024: the
//! two answers' rows paired by position) and by GOLD (TRL's: spans aligned
//! by byte offsets, a span's pieces merged; plain, and the hybrid with the
//! tokens both vocabularies share), beside a piece-level student on hard
//! labels.
//!
//! Token perplexities do not compare across tokenizers, so every model is
//! measured on one text: each sentence as the teacher reads it (a word
//! outside its vocabulary is the text `<unk>`), ` word word …`, with `\n` for
//! `</s>` when the sentence is whole, cut to the words both contexts hold.
//! Its total negative log-likelihood is reported per word-level token (a
//! perplexity that compares with the word-level rows) and per byte, in bits.
//!
//! `TokenBatch` carries one tokenization, so the `LmDistiller` does not run
//! GOLD: these rows train in a loop of their own (Adam at the plan's rate,
//! the plan's batch, one step per batch, the same order of sentences as the
//! word-level rows) with the crate's `KdLoss` for the hard term and
//! `GoldLoss` for the soft one.

use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_distill::gold::{GoldLossConfig, SpanAlignment, TokenMatches, Tokenization};
use burn_distill::lm::{CausalLm, TokenBatch};
use burn_distill::train::LmTeacherSource;
use burn_distill::{DistillError, KdLossConfig};

use crate::bpe::{Bpe, word_text};
use crate::data::{BOS, EOS, PAD, Vocab};
use crate::model::Gpt;
use crate::report::Row;
use crate::{NoTeacher, PEAK, Run, SKIPPED, reset_peak};

/// One sentence under both tokenizations. Token 0 is `<s>` on both sides;
/// the offsets are those of tokens `1..` (the predicted ones) in the text.
pub struct Unit {
    teacher: Vec<i64>,
    student: Vec<i64>,
    teacher_offsets: Vec<[usize; 2]>,
    student_offsets: Vec<[usize; 2]>,
    bytes: usize,
}

/// Which tokenization a model reads.
#[derive(Clone, Copy, PartialEq)]
pub enum Side {
    /// Word-level: the teacher and the same-tokenizer students.
    Words,
    /// Byte-pair pieces: the cross-tokenizer students.
    Pieces,
}

impl Unit {
    fn tokens(&self, side: Side) -> &[i64] {
        match side {
            Side::Words => &self.teacher,
            Side::Pieces => &self.student,
        }
    }

    /// GOLD's spans of the predicted tokens: the logits' row `t` predicts
    /// token `t + 1`, so token 1 (after `<s>`) goes with row 0.
    fn spans(&self) -> Result<SpanAlignment, DistillError> {
        SpanAlignment::from_byte_offsets(
            Tokenization {
                first_row: 0,
                tokens: &self.student[1..],
                byte_offsets: &self.student_offsets,
            },
            Tokenization {
                first_row: 0,
                tokens: &self.teacher[1..],
                byte_offsets: &self.teacher_offsets,
            },
        )
    }
}

/// The cross-tokenizer data: the tokenizer, the three splits as units, and
/// the ids with the same text in both vocabularies.
pub struct CrossData {
    pub bpe: Bpe,
    pub train: Vec<Unit>,
    pub valid: Vec<Unit>,
    pub test: Vec<Unit>,
    pub matches: TokenMatches,
}

/// The units of `sentences` (word ids without `<s>`/`</s>`): each cut to the
/// words whose tokens, with `<s>` and room for `</s>`, fit `words_context`
/// and `pieces_context`; `</s>` (the text `\n`) closes a whole sentence.
fn units(
    sentences: &[Vec<usize>],
    vocab: &Vocab,
    bpe: &Bpe,
    words_context: usize,
    pieces_context: usize,
) -> Vec<Unit> {
    sentences
        .iter()
        .map(|words| {
            let mut unit = Unit {
                teacher: vec![BOS as i64],
                student: vec![BOS as i64],
                teacher_offsets: Vec::new(),
                student_offsets: Vec::new(),
                bytes: 0,
            };
            let mut whole = true;
            for &word in words {
                let pieces = bpe.pieces_of(word);
                if unit.teacher.len() + 2 > words_context
                    || unit.student.len() + pieces.len() + 1 > pieces_context
                {
                    whole = false;
                    break;
                }
                let text = word_text(vocab, word).expect("a sentence holds words");
                unit.teacher.push(word as i64);
                unit.teacher_offsets
                    .push([unit.bytes, unit.bytes + text.len()]);
                let mut at = unit.bytes;
                for &piece in pieces {
                    let end = at + bpe.piece(piece).len();
                    unit.student.push(piece as i64);
                    unit.student_offsets.push([at, end]);
                    at = end;
                }
                assert_eq!(
                    at,
                    unit.bytes + text.len(),
                    "the pieces of {text:?} cover its bytes"
                );
                unit.bytes = at;
            }
            if whole {
                let eos = [unit.bytes, unit.bytes + 1];
                unit.teacher.push(EOS as i64);
                unit.student.push(EOS as i64);
                unit.teacher_offsets.push(eos);
                unit.student_offsets.push(eos);
                unit.bytes += 1;
            }
            unit
        })
        .collect()
}

impl CrossData {
    /// The tokenizer learned from `train` (word ids, in the training
    /// order), and the units of the three splits.
    pub fn new(
        vocab: &Vocab,
        [train, valid, test]: [&[Vec<usize>]; 3],
        bpe_size: usize,
        words_context: usize,
        pieces_context: usize,
    ) -> Result<Self, String> {
        let mut counts = vec![0usize; vocab.len()];
        for &word in train.iter().flatten() {
            counts[word] += 1;
        }
        let bpe = Bpe::learn(vocab, &counts, bpe_size);
        let make = |s: &[Vec<usize>]| units(s, vocab, &bpe, words_context, pieces_context);
        let (train, valid, test) = (make(train), make(valid), make(test));
        // The teacher's tokens as text, to find the student's pieces of the
        // same text; `</s>` is `\n` on both sides.
        let words: Vec<(String, usize)> = (0..vocab.len())
            .map(|id| match id {
                EOS => ("\n".to_string(), id),
                _ => (
                    word_text(vocab, id).unwrap_or_else(|| vocab.word(id).into()),
                    id,
                ),
            })
            .collect();
        let matches = TokenMatches::from_vocabularies(
            bpe.vocabulary(),
            words.iter().map(|(w, id)| (w.as_str(), *id)),
        )
        .map_err(|e| e.to_string())?;
        // Each word-level token is one span: the pieces of a word end where
        // it ends, and a piece never crosses a word's end.
        for unit in &test {
            let alignment = unit.spans().map_err(|e| e.to_string())?;
            if alignment.spans().len() != unit.teacher.len() - 1 {
                return Err(format!(
                    "{} spans for {} word-level tokens",
                    alignment.spans().len(),
                    unit.teacher.len() - 1
                ));
            }
        }
        let pieces: usize = test.iter().map(|u| u.student.len() - 1).sum();
        let words: usize = test.iter().map(|u| u.teacher.len() - 1).sum();
        println!(
            "byte-pair pieces: {} learned from the training split; {:.2} pieces per word-level token on test; {} ids share their text with a word",
            bpe.len(),
            pieces as f64 / words as f64,
            matches.pairs().len()
        );
        Ok(Self {
            bpe,
            train,
            valid,
            test,
            matches,
        })
    }
}

/// `units`' tokens on `side`, right-padded to the longest: `[n, len]` and
/// the padding mask.
fn batch(units: &[&Unit], side: Side, device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>) {
    let len = units
        .iter()
        .map(|u| u.tokens(side).len())
        .max()
        .unwrap_or(1);
    let mut tokens = Vec::with_capacity(units.len() * len);
    let mut padding = Vec::with_capacity(units.len() * len);
    for unit in units {
        let row = unit.tokens(side);
        for t in 0..len {
            tokens.push(row.get(t).copied().unwrap_or(PAD as i64));
            padding.push(t >= row.len());
        }
    }
    let shape = [units.len(), len];
    (
        Tensor::from_data(TensorData::new(tokens, shape), device),
        Tensor::from_data(TensorData::new(padding, shape), device),
    )
}

/// A model's negative log-likelihood of `units`' text read on `side`: the
/// perplexity per word-level token and the bits per byte.
pub fn text_scores(model: &Gpt, units: &[Unit], side: Side, device: &Device) -> (f64, f64) {
    let model = model.valid();
    let device = device.clone().without_autodiff();
    let (mut nll, mut words, mut bytes) = (0.0f64, 0usize, 0usize);
    for chunk in units.chunks(64) {
        let chunk: Vec<&Unit> = chunk.iter().collect();
        let (tokens, padding) = batch(&chunk, side, &device);
        let [n, len] = tokens.dims();
        // Position t predicts token t + 1.
        let mut next = vec![PAD as i64; n * len];
        for (s, unit) in chunk.iter().enumerate() {
            for (t, &id) in unit.tokens(side).iter().enumerate().skip(1) {
                next[s * len + t - 1] = id;
            }
        }
        let next = Tensor::<2, Int>::from_data(TensorData::new(next, [n, len]), &device);
        let log_probs = log_softmax(model.logits(tokens, Some(padding)), 2)
            .gather(2, next.unsqueeze_dim(2))
            .reshape([n, len]);
        let log_probs: Vec<f64> = log_probs.into_data().iter::<f64>().collect();
        for (s, unit) in chunk.iter().enumerate() {
            let predicted = unit.tokens(side).len() - 1;
            nll -= log_probs[s * len..s * len + predicted].iter().sum::<f64>();
            words += unit.teacher.len() - 1;
            bytes += unit.bytes;
        }
    }
    (
        (nll / words.max(1) as f64).exp(),
        nll / std::f64::consts::LN_2 / bytes.max(1) as f64,
    )
}

/// The soft term of a cross-tokenizer row.
#[derive(Clone, Copy)]
pub enum Soft {
    /// Hard labels only.
    None,
    /// ULD on the rows paired by position (`SpanAlignment::by_position`).
    Uld,
    /// GOLD: spans by byte offsets, pieces merged, ULD per span.
    Gold,
    /// GOLD's hybrid: JSD on the ids both vocabularies share, ULD on the rest.
    GoldHybrid,
}

/// Trains the piece-level `student` with the hard term and, unless
/// `Soft::None`, half of it replaced by the soft term against `teacher`
/// (word-level, on the plain device); validation perplexity per word every
/// `eval_every` steps; the row with the test scores.
pub fn distil(
    run: &Run,
    name: &str,
    what: &str,
    student: Gpt,
    teacher: &Gpt,
    soft: Soft,
    data: &CrossData,
) -> Result<(Gpt, Row), String> {
    if !run.wants(name) {
        return Err(SKIPPED.into());
    }
    let Run {
        plan,
        device,
        steps,
        ..
    } = *run;
    let plain = device.clone().without_autodiff();
    let hard = KdLossConfig::new()
        .with_soft_weight(0.0)
        .with_hard_weight(1.0)
        .init();
    let gold = match soft {
        Soft::None => None,
        Soft::Uld | Soft::Gold => Some(GoldLossConfig::new().init()),
        Soft::GoldHybrid => Some(
            GoldLossConfig::new()
                .init()
                .with_matches(data.matches.clone()),
        ),
    };
    let (soft_weight, hard_weight) = if gold.is_some() {
        (0.5, 0.5)
    } else {
        (0.0, 1.0)
    };
    let mut optimizer = AdamConfig::new().init();
    let mut model = student;
    let (mut seconds, mut peak) = (0.0, 0usize);
    let mut validation = Vec::new();
    for step in 0..steps {
        let units: Vec<&Unit> = (0..plan.batch)
            .map(|i| &data.train[(step * plan.batch + i) % data.train.len()])
            .collect();
        let start = Instant::now();
        let base = reset_peak();
        let (tokens, padding) = batch(&units, Side::Pieces, device);
        let pieces = TokenBatch::new(tokens.clone()).with_padding_mask(padding.clone());
        let targets = pieces.next_token_targets().map_err(|e| e.to_string())?;
        let no_teacher = NoTeacher {
            vocab: data.bpe.len(),
        }
        .teach(&pieces, device)
        .map_err(|e| e.to_string())?;
        let logits = model.logits(tokens, Some(padding));
        let mut loss = hard
            .forward(logits.clone(), no_teacher, targets)
            .mul_scalar(hard_weight);
        if let Some(gold) = &gold {
            let (t_tokens, t_padding) = batch(&units, Side::Words, &plain);
            let t_logits = teacher.logits(t_tokens, Some(t_padding));
            let alignments = units
                .iter()
                .map(|u| match soft {
                    Soft::Uld => {
                        SpanAlignment::by_position(0..u.student.len() - 1, 0..u.teacher.len() - 1)
                    }
                    _ => u.spans(),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            loss = loss
                + gold
                    .forward(logits, t_logits, &alignments)
                    .mul_scalar(soft_weight);
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        peak = peak.max(PEAK.load(Ordering::Relaxed).saturating_sub(base));
        model = optimizer.step(plan.lr, model, grads);
        seconds += start.elapsed().as_secs_f64();
        if (step + 1) % plan.eval_every == 0 || step + 1 == steps {
            let (perplexity, _) = text_scores(&model, &data.valid, Side::Pieces, device);
            validation.push((step + 1, perplexity));
        }
    }
    let (test_perplexity, bits_per_byte) = text_scores(&model, &data.test, Side::Pieces, device);
    let row = Row {
        name: name.into(),
        what: what.into(),
        test_perplexity,
        agreement: None,
        bits_per_byte: Some(bits_per_byte),
        seconds,
        peak_bytes: peak,
        on_policy_steps: 0,
        validation,
    };
    println!("{}", row.line());
    Ok((model, row))
}
