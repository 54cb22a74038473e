//! A seeded sampler for a [`CausalLm`]: completions of a batch of prompts,
//! for on-policy distillation (the student samples, the teacher scores) and
//! sequence-level KD (the teacher's completions become the data).

use burn::config::Config;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::batch::TokenBatch;
use super::model::CausalLm;
use crate::check::shape_mismatch;
use crate::divergence::check_unit_interval;
use crate::error::DistillError;
use crate::specialist::rng::SplitMix64;

/// How [`generate`] samples: temperature, top-k and top-p (nucleus)
/// filtering, when a completion stops, and the seed.
///
/// ```
/// use burn_distill::lm::SamplerConfig;
///
/// // TRL's GKD generation settings: temperature 0.9, up to 128 new tokens.
/// let sampler = SamplerConfig::new()
///     .with_temperature(0.9)
///     .with_max_new_tokens(128)
///     .with_eos_token(Some(2));
/// assert!(sampler.check().is_ok());
/// assert!(SamplerConfig::new().with_top_p(Some(1.5)).check().is_err());
/// ```
#[derive(Config, Debug)]
pub struct SamplerConfig {
    /// Softmax temperature of the draw; 0 takes the most probable token
    /// (greedy decoding).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Draw among the `k` most probable tokens only (`None`: all). Applied
    /// before `top_p`.
    #[config(default = "None")]
    pub top_k: Option<usize>,
    /// Draw among the smallest set of most probable tokens whose probability
    /// reaches `p`, in (0, 1] (`None`: all).
    #[config(default = "None")]
    pub top_p: Option<f64>,
    /// New tokens per completion at most.
    #[config(default = 32)]
    pub max_new_tokens: usize,
    /// A completion stops after this token (which is kept and scored).
    #[config(default = "None")]
    pub eos_token: Option<usize>,
    /// The token that fills a sequence after its end (masked as padding).
    #[config(default = 0)]
    pub pad_token: usize,
    /// The model's context: a sequence never grows past it, and a prompt that
    /// fills it is refused (`None`: no limit).
    #[config(default = "None")]
    pub context: Option<usize>,
    /// The seed of the draws: the same seed, prompts and model give the same
    /// completions.
    #[config(default = 0)]
    pub seed: u64,
}

impl SamplerConfig {
    /// Checks the settings: a finite temperature ≥ 0, `top_k` ≥ 1, `top_p` in
    /// (0, 1], at least one new token.
    pub fn check(&self) -> Result<(), DistillError> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(DistillError::InvalidTemperature {
                argument: "temperature (0 for greedy decoding)",
                value: self.temperature,
            });
        }
        if self.top_k == Some(0) {
            return Err(DistillError::InvalidParameter {
                argument: "top_k",
                value: 0,
                requirement: "at least 1 (or None for every token)",
            });
        }
        if let Some(p) = self.top_p {
            check_unit_interval("top_p", p)?;
            if p == 0.0 {
                return Err(DistillError::OutOfUnitInterval {
                    argument: "top_p (in (0, 1]; None for every token)",
                    value: p,
                });
            }
        }
        if self.max_new_tokens == 0 {
            return Err(DistillError::InvalidParameter {
                argument: "max_new_tokens",
                value: 0,
                requirement: "at least 1",
            });
        }
        Ok(())
    }

    /// The tokens a draw may pick from `logits` (one position's), most
    /// probable first, with their probabilities renormalised over that set:
    /// the temperature, then `top_k`, then `top_p`.
    fn support(&self, logits: &[f64]) -> Vec<(usize, f64)> {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        // Most probable first; ties by the lower token id.
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.temperature == 0.0 {
            return vec![(order[0], 1.0)];
        }
        if let Some(k) = self.top_k {
            order.truncate(k.max(1));
        }
        let best = logits[order[0]];
        let mut weights: Vec<f64> = order
            .iter()
            .map(|&token| ((logits[token] - best) / self.temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= total);
        if let Some(p) = self.top_p {
            let mut mass = 0.0;
            let keep = weights
                .iter()
                .position(|w| {
                    mass += w;
                    mass >= p
                })
                .map_or(weights.len(), |last| last + 1);
            order.truncate(keep);
            weights.truncate(keep);
            let total: f64 = weights.iter().sum();
            weights.iter_mut().for_each(|w| *w /= total);
        }
        order.into_iter().zip(weights).collect()
    }

    /// One draw from `logits` with `rng`.
    fn draw(&self, logits: &[f64], rng: &mut SplitMix64) -> usize {
        let support = self.support(logits);
        if support.len() == 1 {
            return support[0].0;
        }
        let u = rng.uniform();
        let mut mass = 0.0;
        for &(token, p) in &support {
            mass += p;
            if u < mass {
                return token;
            }
        }
        support[support.len() - 1].0
    }
}

/// Completes each of `prompts` with tokens sampled from `model` as `config`
/// says, and returns prompts and completions as one [`TokenBatch`]: right
/// padded with `pad_token` (masked as padding), the prompt tokens in its
/// prompt mask (so they are never scored), on `device`, the model's device.
///
/// A completion stops at `eos_token` (kept), at `max_new_tokens`, or when
/// its sequence reaches `context`. The model runs without autodiff (on
/// `Module::valid`), over the whole sequence for every new token: there is no
/// KV cache, so a completion of `n` tokens costs `n` forwards of growing
/// length — fine for small models and short completions, quadratic for long
/// ones. The next token's logits are read back to the host for each new
/// token, and drawn there with a seeded generator (the same seed, prompts and
/// model give the same completions on every device).
///
/// # Errors
/// A bad `config` ([`SamplerConfig::check`]); no prompts; an empty prompt, or
/// one that already fills `context` ([`DistillError::InvalidPrompt`]); a
/// prompt token or `pad_token`/`eos_token` outside the model's vocabulary
/// ([`DistillError::TokenOutOfRange`]); logits that are not finite.
///
/// ```
/// use burn::module::Module;
/// use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
/// use burn::tensor::{Bool, Device, Int, Tensor};
/// use burn_distill::lm::{CausalLm, OutputLayer, SamplerConfig, generate};
///
/// #[derive(Module, Debug)]
/// struct Bigram {
///     embedding: Embedding,
///     output: Linear,
/// }
/// impl CausalLm for Bigram {
///     fn hidden(&self, tokens: Tensor<2, Int>, _padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
///         self.embedding.forward(tokens)
///     }
///     fn output_layer(&self) -> OutputLayer {
///         OutputLayer::from_linear(&self.output)
///     }
/// }
///
/// let device = Device::flex();
/// let model = Bigram {
///     embedding: EmbeddingConfig::new(10, 4).init(&device),
///     output: LinearConfig::new(4, 10).init(&device),
/// };
/// let sampler = SamplerConfig::new().with_max_new_tokens(3).with_seed(7);
/// let batch = generate(&model, &[vec![1, 2], vec![3]], &sampler, &device).unwrap();
/// assert_eq!(batch.dims(), [2, 5]); // the longer prompt and 3 new tokens
/// // The same seed draws the same completions.
/// let again = generate(&model, &[vec![1, 2], vec![3]], &sampler, &device).unwrap();
/// assert_eq!(batch.tokens.into_data(), again.tokens.into_data());
/// ```
pub fn generate<M: CausalLm>(
    model: &M,
    prompts: &[Vec<usize>],
    config: &SamplerConfig,
    device: &Device,
) -> Result<TokenBatch, DistillError> {
    config.check()?;
    if prompts.is_empty() {
        return Err(DistillError::EmptyTensor {
            argument: "prompts",
            shape: vec![0],
        });
    }
    let vocab = model.output_layer().vocab();
    for (argument, token) in [
        ("pad_token", Some(config.pad_token)),
        ("eos_token", config.eos_token),
    ] {
        if let Some(token) = token
            && token >= vocab
        {
            return Err(DistillError::TokenOutOfRange {
                argument,
                token: token as i64,
                vocab,
            });
        }
    }
    for (sequence, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(DistillError::InvalidPrompt {
                sequence,
                length: 0,
                reason: "it is empty; a causal LM needs at least one token to start from".into(),
            });
        }
        if let Some(context) = config.context
            && prompt.len() >= context
        {
            return Err(DistillError::InvalidPrompt {
                sequence,
                length: prompt.len(),
                reason: format!(
                    "it leaves no room for a new token in the model's context of {context}"
                ),
            });
        }
        if let Some(&token) = prompt.iter().find(|&&token| token >= vocab) {
            return Err(DistillError::TokenOutOfRange {
                argument: "prompts",
                token: token as i64,
                vocab,
            });
        }
    }
    let device = device.clone().without_autodiff();
    let model = model.valid();
    let mut rng = SplitMix64::new(config.seed);
    let mut sequences: Vec<Vec<usize>> = prompts.to_vec();
    let mut open: Vec<bool> = vec![true; prompts.len()];
    for _ in 0..config.max_new_tokens {
        let active: Vec<usize> = (0..sequences.len()).filter(|&s| open[s]).collect();
        if active.is_empty() {
            break;
        }
        let rows: Vec<&Vec<usize>> = active.iter().map(|&s| &sequences[s]).collect();
        let logits = next_token_logits(&model, &rows, config.pad_token, vocab, &device)?;
        for (row, &s) in active.iter().enumerate() {
            let token = config.draw(&logits[row * vocab..(row + 1) * vocab], &mut rng);
            sequences[s].push(token);
            let full = config.context.is_some_and(|c| sequences[s].len() >= c);
            if config.eos_token == Some(token) || full {
                open[s] = false;
            }
        }
    }
    Ok(batch_of(&sequences, prompts, config.pad_token, &device))
}

/// The logits of each row's next token, `[rows · vocab]` on the host: one
/// forward over the rows right-padded to the longest, read at each row's
/// last token.
fn next_token_logits<M: CausalLm>(
    model: &M,
    rows: &[&Vec<usize>],
    pad_token: usize,
    vocab: usize,
    device: &Device,
) -> Result<Vec<f64>, DistillError> {
    let length = rows.iter().map(|row| row.len()).max().unwrap_or(1);
    let mut tokens = Vec::with_capacity(rows.len() * length);
    let mut padding = Vec::with_capacity(rows.len() * length);
    let mut last = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        tokens.extend(row.iter().map(|&t| t as i64));
        tokens.extend(std::iter::repeat_n(pad_token as i64, length - row.len()));
        padding.extend((0..length).map(|t| t >= row.len()));
        last.push((r * length + row.len() - 1) as i64);
    }
    let shape = [rows.len(), length];
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(tokens, shape), device);
    let padding = Tensor::<2, Bool>::from_data(TensorData::new(padding, shape), device);
    let padding = rows.iter().any(|row| row.len() < length).then_some(padding);
    let logits = model.logits(tokens, padding);
    let [_, _, model_vocab] = logits.dims();
    if model_vocab != vocab {
        return Err(shape_mismatch(
            "model.logits (vocabulary)",
            &[model_vocab],
            "vocab",
            &[vocab],
            "the model's vocabulary must be the one given",
        ));
    }
    let last = Tensor::<1, Int>::from_data(TensorData::new(last, [rows.len()]), device);
    let next = logits.reshape([rows.len() * length, vocab]).select(0, last);
    let values: Vec<f64> = next.into_data().iter::<f64>().collect();
    if let Some(value) = values.iter().find(|v| !v.is_finite()) {
        return Err(DistillError::NotFinite {
            argument: "the model's next-token logits",
            value: *value,
        });
    }
    Ok(values)
}

/// Prompts and completions as a right-padded [`TokenBatch`] with its padding
/// and prompt masks.
fn batch_of(
    sequences: &[Vec<usize>],
    prompts: &[Vec<usize>],
    pad_token: usize,
    device: &Device,
) -> TokenBatch {
    let length = sequences.iter().map(Vec::len).max().unwrap_or(1);
    let mut tokens = Vec::with_capacity(sequences.len() * length);
    let mut padding = Vec::with_capacity(sequences.len() * length);
    let mut prompt = Vec::with_capacity(sequences.len() * length);
    for (sequence, prompt_of) in sequences.iter().zip(prompts) {
        tokens.extend(sequence.iter().map(|&t| t as i64));
        tokens.extend(std::iter::repeat_n(
            pad_token as i64,
            length - sequence.len(),
        ));
        padding.extend((0..length).map(|t| t >= sequence.len()));
        prompt.extend((0..length).map(|t| t < prompt_of.len()));
    }
    let shape = [sequences.len(), length];
    TokenBatch::new(Tensor::from_data(TensorData::new(tokens, shape), device))
        .with_padding_mask(Tensor::from_data(TensorData::new(padding, shape), device))
        .with_prompt_mask(Tensor::from_data(TensorData::new(prompt, shape), device))
}
