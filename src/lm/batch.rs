//! A batch of token sequences and the causal shift, done once here:
//! position `t` of a causal LM's logits predicts token `t + 1`.

use burn::tensor::{Bool, Int, Tensor};

use crate::check::{check_device, check_non_empty, positions_mismatch, shape_mismatch};
use crate::error::DistillError;
use crate::targets::Targets;

/// A batch of token sequences for a causal language model: the token ids,
/// which of them are padding, and which belong to the prompt (when only
/// completions are scored).
///
/// [`next_token_targets`](Self::next_token_targets) makes the loss's
/// [`Targets`] for the model's `[batch, seq, vocab]` logits over `tokens`:
/// position `t` is labelled with token `t + 1`, and it counts when token
/// `t + 1` exists, is not padding and is not in the prompt, and position `t`
/// itself is not padding.
///
/// ```
/// use burn::tensor::{Bool, Device, Int, Tensor};
/// use burn_distill::lm::TokenBatch;
///
/// let device = Device::flex();
/// // "a b c" and "d e" padded with 0; the first token of each is the prompt.
/// let tokens = Tensor::<2, Int>::from_ints([[7, 8, 9], [4, 5, 0]], &device);
/// let padding = Tensor::<2, Bool>::from_data([[false, false, false], [false, false, true]], &device);
/// let prompt = Tensor::<2, Bool>::from_data([[true, false, false], [true, false, false]], &device);
/// let batch = TokenBatch::new(tokens).with_padding_mask(padding).with_prompt_mask(prompt);
/// let targets = batch.next_token_targets().unwrap();
/// // Labels: the next token (the last position's is unused).
/// let labels: Vec<i64> = targets.labels().unwrap().clone().into_data().iter::<i64>().collect();
/// assert_eq!(labels, vec![8, 9, 0, 5, 0, 0]);
/// // Counted: "a→b", "b→c" and "d→e".
/// assert_eq!(batch.counted_tokens().unwrap(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// Token ids, `[batch, seq]`.
    pub tokens: Tensor<2, Int>,
    /// `true` on padding (burn's convention, as `generate_padding_mask`
    /// makes it), `[batch, seq]`; `None`: no padding.
    pub padding_mask: Option<Tensor<2, Bool>>,
    /// `true` on prompt tokens, which are input but never predicted,
    /// `[batch, seq]`; `None`: every token is scored.
    pub prompt_mask: Option<Tensor<2, Bool>>,
    /// Each sequence's index in its data set (what a teacher store reads
    /// by); empty when the teacher runs live.
    pub examples: Vec<usize>,
}

impl TokenBatch {
    /// Sequences of token ids, `[batch, seq]`, with no padding and no prompt.
    pub fn new(tokens: Tensor<2, Int>) -> Self {
        Self {
            tokens,
            padding_mask: None,
            prompt_mask: None,
            examples: Vec::new(),
        }
    }

    /// Padding, `true` on padding tokens (burn's convention).
    pub fn with_padding_mask(mut self, padding_mask: Tensor<2, Bool>) -> Self {
        self.padding_mask = Some(padding_mask);
        self
    }

    /// The prompt, `true` on prompt tokens: they are never predicted.
    pub fn with_prompt_mask(mut self, prompt_mask: Tensor<2, Bool>) -> Self {
        self.prompt_mask = Some(prompt_mask);
        self
    }

    /// Each sequence's index in its data set.
    pub fn with_examples(mut self, examples: Vec<usize>) -> Self {
        self.examples = examples;
        self
    }

    /// `[batch, seq]`.
    pub fn dims(&self) -> [usize; 2] {
        self.tokens.dims()
    }

    /// Sequences `range` of the batch, with their masks and examples (a
    /// micro-batch).
    ///
    /// # Panics
    /// If `range` is empty or reaches past the batch.
    pub fn sequences(&self, range: core::ops::Range<usize>) -> TokenBatch {
        let [batch, seq] = self.dims();
        assert!(
            range.start < range.end && range.end <= batch,
            "TokenBatch::sequences: range {range:?} is empty or past the batch's {batch} sequences"
        );
        let rows = |t: &Tensor<2, Bool>| t.clone().slice([range.clone(), 0..seq]);
        TokenBatch {
            tokens: self.tokens.clone().slice([range.clone(), 0..seq]),
            padding_mask: self.padding_mask.as_ref().map(rows),
            prompt_mask: self.prompt_mask.as_ref().map(rows),
            examples: if self.examples.is_empty() {
                Vec::new()
            } else {
                self.examples[range.clone()].to_vec()
            },
        }
    }

    /// Checks the masks' shapes and devices against the tokens', and the
    /// examples' count (when given) against the batch.
    pub fn check(&self) -> Result<(), DistillError> {
        let [batch, seq] = self.dims();
        check_non_empty("tokens", &[batch, seq])?;
        for (argument, mask) in [
            ("padding_mask", &self.padding_mask),
            ("prompt_mask", &self.prompt_mask),
        ] {
            if let Some(mask) = mask {
                if mask.dims() != [batch, seq] {
                    return Err(positions_mismatch(argument, &mask.dims(), &[batch, seq]));
                }
                check_device("tokens", &self.tokens, argument, mask)?;
            }
        }
        if !self.examples.is_empty() && self.examples.len() != batch {
            return Err(shape_mismatch(
                "examples",
                &[self.examples.len()],
                "tokens rows",
                &[batch],
                "give one example index per sequence, or none",
            ));
        }
        Ok(())
    }

    /// The next-token targets of the model's logits over `tokens`: labels
    /// `[batch, seq]` (position `t`: token `t + 1`; the last position's label
    /// is 0 and never counts) and the padding mask of the positions that do
    /// not count (see the type's documentation).
    pub fn next_token_targets(&self) -> Result<Targets, DistillError> {
        self.check()?;
        let [batch, seq] = self.dims();
        let device = self.tokens.device();
        if seq == 1 {
            // One token per sequence: nothing to predict.
            let none = Tensor::<2, Int>::ones([batch, 1], &device).equal_elem(1);
            return Ok(
                Targets::for_sequences(Tensor::<2, Int>::zeros([batch, 1], &device))
                    .with_padding_mask(none),
            );
        }
        let end_int = Tensor::<2, Int>::zeros([batch, 1], &device);
        let end_true = Tensor::<2, Int>::ones([batch, 1], &device).equal_elem(1);
        let next =
            |t: Tensor<2, Int>| Tensor::cat(vec![t.slice([0..batch, 1..seq]), end_int.clone()], 1);
        let next_mask = |m: Tensor<2, Bool>| {
            Tensor::cat(vec![m.slice([0..batch, 1..seq]), end_true.clone()], 1)
        };
        let labels = next(self.tokens.clone());
        // The last position has no next token.
        let last = Tensor::cat(
            vec![
                Tensor::<2, Int>::zeros([batch, seq - 1], &device).equal_elem(1),
                end_true.clone(),
            ],
            1,
        );
        let mut left_out = last;
        if let Some(padding) = &self.padding_mask {
            left_out = left_out
                .bool_or(padding.clone())
                .bool_or(next_mask(padding.clone()));
        }
        if let Some(prompt) = &self.prompt_mask {
            left_out = left_out.bool_or(next_mask(prompt.clone()));
        }
        Ok(Targets::for_sequences(labels).with_padding_mask(left_out))
    }

    /// Each sequence's prompt: its tokens under the prompt mask, read back to
    /// the host (what [`generate`](super::generate) completes for on-policy
    /// distillation).
    ///
    /// # Errors
    /// Without a prompt mask; a prompt that is empty, covers padding, or is
    /// not a prefix of its sequence ([`DistillError::InvalidPrompt`]).
    pub fn prompts(&self) -> Result<Vec<Vec<usize>>, DistillError> {
        self.check()?;
        let Some(prompt_mask) = &self.prompt_mask else {
            return Err(DistillError::MissingPromptMask);
        };
        let [batch, seq] = self.dims();
        let tokens: Vec<i64> = self.tokens.clone().into_data().iter::<i64>().collect();
        let prompt: Vec<bool> = prompt_mask.clone().into_data().iter::<bool>().collect();
        let padding: Vec<bool> = match &self.padding_mask {
            Some(mask) => mask.clone().into_data().iter::<bool>().collect(),
            None => vec![false; batch * seq],
        };
        (0..batch)
            .map(|sequence| {
                let row = sequence * seq..(sequence + 1) * seq;
                let in_prompt = &prompt[row.clone()];
                let length = in_prompt.iter().take_while(|&&p| p).count();
                let invalid = |reason: &str| DistillError::InvalidPrompt {
                    sequence,
                    length,
                    reason: reason.to_string(),
                };
                if length == 0 {
                    return Err(invalid("the prompt mask marks no token of it"));
                }
                if in_prompt[length..].iter().any(|&p| p) {
                    return Err(invalid("the prompt mask is not a prefix of the sequence"));
                }
                if padding[row.clone()][..length].iter().any(|&p| p) {
                    return Err(invalid("the prompt mask covers padding"));
                }
                Ok(tokens[row][..length].iter().map(|&t| t as usize).collect())
            })
            .collect()
    }

    /// The number of positions [`next_token_targets`](Self::next_token_targets)
    /// counts (read back from the device): the normaliser of a step that
    /// spans several batches is the sum of theirs.
    pub fn counted_tokens(&self) -> Result<usize, DistillError> {
        let targets = self.next_token_targets()?;
        let left_out = targets.padding_mask().expect("next_token_targets sets one");
        let [positions] = left_out.dims();
        let dropped = left_out.clone().int().sum().into_scalar::<i64>() as usize;
        Ok(positions - dropped)
    }
}
