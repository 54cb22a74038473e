//! A decoder-only transformer (a tiny GPT) from burn's `nn` modules: token
//! and position embeddings, burn's `TransformerEncoder` under a causal mask,
//! a final layer norm and the output layer.

use burn::config::Config;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Int, Tensor};
use burn_distill::lm::{CausalLm, OutputLayer};

#[derive(Config, Debug)]
pub struct GptConfig {
    pub vocab: usize,
    pub context: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    #[config(default = 0.1)]
    pub dropout: f64,
}

impl GptConfig {
    /// A model with every parameter initialised now, in the module's order:
    /// burn initialises a parameter when it is first read, so otherwise a
    /// model's values would depend on what else drew from the device's
    /// generator before its first forward.
    pub fn init(&self, device: &Device) -> Gpt {
        struct Touch;
        impl ModuleVisitor for Touch {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let _ = param.val();
            }
        }
        let model = Gpt {
            tokens: EmbeddingConfig::new(self.vocab, self.d_model).init(device),
            positions: EmbeddingConfig::new(self.context, self.d_model).init(device),
            blocks: TransformerEncoderConfig::new(
                self.d_model,
                4 * self.d_model,
                self.n_heads,
                self.n_layers,
            )
            .with_dropout(self.dropout)
            .with_norm_first(true)
            .init(device),
            norm: LayerNormConfig::new(self.d_model).init(device),
            output: LinearConfig::new(self.d_model, self.vocab).init(device),
        };
        model.visit(&mut Touch);
        model
    }

    /// Parameters, for the table.
    pub fn parameters(&self) -> usize {
        let d = self.d_model;
        let block = 4 * d * d + 4 * d + 2 * (4 * d * d) + 4 * d + d + 4 * d;
        self.vocab * d
            + self.context * d
            + self.n_layers * block
            + 2 * d
            + d * self.vocab
            + self.vocab
    }
}

#[derive(Module, Debug)]
pub struct Gpt {
    tokens: Embedding,
    positions: Embedding,
    blocks: TransformerEncoder,
    norm: LayerNorm,
    output: Linear,
}

impl CausalLm for Gpt {
    fn hidden(&self, tokens: Tensor<2, Int>, _padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        // Right padding under a causal mask: no real token attends to a pad,
        // so the padding mask changes nothing the loss counts; it is left out.
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .repeat_dim(0, batch);
        let x = self.tokens.forward(tokens) + self.positions.forward(positions);
        let mask = generate_autoregressive_mask(batch, seq, &device);
        let h = self
            .blocks
            .forward(TransformerEncoderInput::new(x).mask_attn(mask));
        self.norm.forward(h)
    }

    fn output_layer(&self) -> OutputLayer {
        OutputLayer::from_linear(&self.output)
    }
}
