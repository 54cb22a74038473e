//! The one trait a causal language model implements to be distilled, as a
//! student or a teacher, and sampled from.

use burn::module::{Module, ModuleDisplay};
use burn::nn::Linear;
use burn::tensor::{Bool, Int, Tensor};

use crate::feature::Features;

/// A causal language model: its last hidden states over a batch of token
/// sequences, and the output layer that turns them into logits.
///
/// Position `t` of the output sees tokens `0..=t` only (the model applies its
/// own causal mask) and predicts token `t + 1`. Two methods rather than one
/// (the logits) because the fused linear loss
/// ([`FusedLinearKdLoss`](crate::FusedLinearKdLoss)) takes the hidden states
/// and the output layer and never makes the `[batch, seq, vocab]` logits
/// whole; [`logits`](Self::logits) is provided from them.
/// (`ModuleDisplay` and `Sync` come with `#[derive(Module)]`; burn's Learner
/// needs them.)
///
/// ```
/// use burn::module::Module;
/// use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
/// use burn::tensor::{Bool, Device, Int, Tensor};
/// use burn_distill::lm::{CausalLm, OutputLayer};
///
/// /// A bigram model: each position sees its own token only.
/// #[derive(Module, Debug)]
/// struct Bigram {
///     embedding: Embedding,
///     output: Linear,
/// }
///
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
/// let tokens = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device);
/// assert_eq!(model.logits(tokens, None).dims(), [1, 3, 10]);
/// ```
pub trait CausalLm: Module + ModuleDisplay + Sync + 'static {
    /// The last hidden states `[batch, seq, d]` over `tokens` `[batch, seq]`,
    /// before the output layer. `padding_mask`: `true` on padding (burn's
    /// convention, as burn's transformer takes it), or `None`.
    fn hidden(&self, tokens: Tensor<2, Int>, padding_mask: Option<Tensor<2, Bool>>) -> Tensor<3>;

    /// The output layer: `logits = hidden · weight + bias`.
    fn output_layer(&self) -> OutputLayer;

    /// The logits `[batch, seq, vocab]`: the output layer over
    /// [`hidden`](Self::hidden).
    fn logits(&self, tokens: Tensor<2, Int>, padding_mask: Option<Tensor<2, Bool>>) -> Tensor<3> {
        // The hidden states first, then the layer, as the fused loss reads
        // them: burn initialises a parameter when it is first read, so one
        // order for both keeps a lazily initialised model the same model.
        let hidden = self.hidden(tokens, padding_mask);
        self.output_layer().forward(hidden)
    }

    /// The last hidden states, as [`hidden`](Self::hidden), and named
    /// intermediate outputs from the same forward: what an
    /// [`LmDistiller`](crate::train::LmDistiller)'s feature terms read
    /// (`[batch, seq, d]` per position, or any rank from 2 to 5). By default
    /// the last hidden states themselves, named `"hidden"`. With feature
    /// terms the distiller takes the logits from these hidden states through
    /// the [output layer](Self::output_layer).
    ///
    /// ```
    /// # use burn::module::Module;
    /// # use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
    /// # use burn::tensor::{Bool, Device, Int, Tensor};
    /// # use burn_distill::lm::{CausalLm, OutputLayer};
    /// # #[derive(Module, Debug)]
    /// # struct Bigram {
    /// #     embedding: Embedding,
    /// #     output: Linear,
    /// # }
    /// # impl CausalLm for Bigram {
    /// #     fn hidden(&self, tokens: Tensor<2, Int>, _padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
    /// #         self.embedding.forward(tokens)
    /// #     }
    /// #     fn output_layer(&self) -> OutputLayer {
    /// #         OutputLayer::from_linear(&self.output)
    /// #     }
    /// # }
    /// let device = Device::flex();
    /// let model = Bigram {
    ///     embedding: EmbeddingConfig::new(10, 4).init(&device),
    ///     output: LinearConfig::new(4, 10).init(&device),
    /// };
    /// let tokens = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device);
    /// let (hidden, features) = model.hidden_and_features(tokens, None);
    /// assert_eq!(features.names(), ["hidden"]);
    /// assert_eq!(features.get("hidden").unwrap().dims(), hidden.dims());
    /// ```
    fn hidden_and_features(
        &self,
        tokens: Tensor<2, Int>,
        padding_mask: Option<Tensor<2, Bool>>,
    ) -> (Tensor<3>, Features) {
        let hidden = self.hidden(tokens, padding_mask);
        (hidden.clone(), Features::new().with("hidden", hidden))
    }
}

/// A causal LM's output layer: `weight` `[d, vocab]` (as burn's `Linear`
/// holds it; a tied embedding `[vocab, d]` gives its transpose) and an
/// optional `bias` `[vocab]`.
#[derive(Debug, Clone)]
pub struct OutputLayer {
    /// `[d, vocab]`.
    pub weight: Tensor<2>,
    /// `[vocab]`.
    pub bias: Option<Tensor<1>>,
}

impl OutputLayer {
    /// The weights of a burn [`Linear`].
    pub fn from_linear(linear: &Linear) -> Self {
        Self {
            weight: linear.weight.val(),
            bias: linear.bias.as_ref().map(|bias| bias.val()),
        }
    }

    /// The vocabulary size.
    pub fn vocab(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `hidden · weight + bias`, `[batch, seq, vocab]`.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        let logits = hidden.matmul(self.weight.clone().unsqueeze::<3>());
        match &self.bias {
            Some(bias) => logits + bias.clone().unsqueeze::<3>(),
            None => logits,
        }
    }
}
