//! CLIP text transformer: OpenAI CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text towers.
//!
//! Follows transformers `models/clip/modeling_clip.py` (`CLIPTextModel`,
//! `CLIPTextModelWithProjection`). OpenCLIP checkpoints are renamed to these names on load
//! (`weights::open_clip_store`); the towers are otherwise the same network, differing in width,
//! depth, activation (quick_gelu for L, gelu for bigG) and the projection.

use super::linear::Linear;
use burn::module::Module;
use burn::nn::{Embedding, LayerNorm};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{gelu, sigmoid};
use serde::Deserialize;

use super::blocks::Attention;
use crate::Error;
use crate::weights::{TensorStore, Weights};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    QuickGelu,
    Gelu,
}

/// Hyper-parameters, named as in transformers' `CLIPTextConfig`. The widths and depth are read
/// from the weights; heads and activation cannot be, so they come from config.json or the
/// manifest (defaults: 64-wide heads, as every released CLIP text tower has).
#[derive(Clone, Debug)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// Width of `text_projection` (CLIPTextModelWithProjection), if the weights have one.
    pub projection_dim: Option<usize>,
}

#[derive(Deserialize, Default)]
struct ClipOverrides {
    num_attention_heads: Option<usize>,
    hidden_act: Option<Activation>,
    layer_norm_eps: Option<f64>,
}

impl ClipConfig {
    /// Reads the shapes from `store` (transformers names) and the rest from `overrides`
    /// (a config.json or a manifest table), falling back to `default_act`.
    pub fn detect(
        store: &TensorStore,
        overrides: &serde_json::Value,
        default_act: Activation,
    ) -> Result<Self, Error> {
        let o: ClipOverrides = serde_json::from_value(overrides.clone()).unwrap_or_default();
        let shape = |name: &str| {
            store
                .shape(name)
                .ok_or_else(|| Error::weights(format!("not a CLIP text encoder: missing `{name}`")))
        };
        let tokens = shape("text_model.embeddings.token_embedding.weight")?;
        let positions = shape("text_model.embeddings.position_embedding.weight")?;
        let fc1 = shape("text_model.encoder.layers.0.mlp.fc1.weight")?;
        let hidden_size = tokens[1];
        Ok(Self {
            vocab_size: tokens[0],
            hidden_size,
            intermediate_size: fc1[0],
            num_hidden_layers: store.count_indexed("text_model.encoder.layers"),
            num_attention_heads: o.num_attention_heads.unwrap_or(hidden_size / 64).max(1),
            max_position_embeddings: positions[0],
            hidden_act: o.hidden_act.unwrap_or(default_act),
            layer_norm_eps: o.layer_norm_eps.unwrap_or(1e-5),
            projection_dim: store.shape("text_projection.weight").map(|s| s[0]),
        })
    }
}

/// One `CLIPEncoderLayer`: pre-norm self-attention and MLP, each with a residual. The text and
/// vision towers share it (transformers `modeling_clip.py`); the text tower attends causally.
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    layer_norm1: LayerNorm<B>,
    self_attn: Attention<B>,
    layer_norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    #[module(skip)]
    quick_gelu: bool,
}

/// The shape of a CLIP encoder (`CLIPEncoder`), as transformers' configs name it.
#[derive(Clone, Debug)]
pub struct EncoderShape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

/// `CLIPEncoder`'s layers; `w` is the encoder's view (`...encoder`).
pub fn load_encoder<B: Backend>(
    w: &Weights<B>,
    shape: &EncoderShape,
) -> Result<Vec<EncoderLayer<B>>, Error> {
    (0..shape.num_hidden_layers)
        .map(|i| EncoderLayer::load(&w.pp("layers").pp(i), shape))
        .collect()
}

impl<B: Backend> EncoderLayer<B> {
    /// `w` is the layer's view (`...encoder.layers.{i}`).
    fn load(w: &Weights<B>, shape: &EncoderShape) -> Result<Self, Error> {
        let (d, eps) = (shape.hidden_size, shape.layer_norm_eps);
        let a = w.pp("self_attn");
        Ok(Self {
            layer_norm1: w.layer_norm("layer_norm1", d, eps)?,
            self_attn: Attention::new(
                a.linear("q_proj", d, d, true)?,
                a.linear("k_proj", d, d, true)?,
                a.linear("v_proj", d, d, true)?,
                a.linear("out_proj", d, d, true)?,
                shape.num_attention_heads,
            ),
            layer_norm2: w.layer_norm("layer_norm2", d, eps)?,
            fc1: w.linear("mlp.fc1", d, shape.intermediate_size, true)?,
            fc2: w.linear("mlp.fc2", shape.intermediate_size, d, true)?,
            quick_gelu: shape.hidden_act == Activation::QuickGelu,
        })
    }

    /// x: [B, L, D] → [B, L, D]
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        let h = self
            .self_attn
            .forward(self.layer_norm1.forward(x.clone()), None, causal);
        let x = x + h;
        let h = self.fc1.forward(self.layer_norm2.forward(x.clone()));
        let h = if self.quick_gelu {
            // transformers `QuickGELUActivation`: x · σ(1.702 x)
            h.clone() * sigmoid(h * 1.702)
        } else {
            gelu(h)
        };
        x + self.fc2.forward(h)
    }
}

#[derive(Module, Debug)]
pub struct ClipTextModel<B: Backend> {
    token_embedding: Embedding<B>,
    position_embedding: Embedding<B>,
    layers: Vec<EncoderLayer<B>>,
    final_layer_norm: LayerNorm<B>,
    text_projection: Option<Linear<B>>,
    #[module(skip)]
    hidden_size: usize,
}

/// What the SDXL-style pipelines take from a CLIP tower.
pub struct ClipOutput<B: Backend> {
    /// The states asked for: by default `hidden_states[-2]`, the output of the second-to-last
    /// layer without final layer norm. [B, L, D]
    pub hidden: Tensor<B, 3>,
    /// `final_layer_norm(last)[eos]`, projected when the tower has a projection. [B, D or P]
    pub pooled: Tensor<B, 2>,
}

impl<B: Backend> ClipTextModel<B> {
    pub fn load(
        store: &TensorStore,
        config: &ClipConfig,
        device: &B::Device,
    ) -> Result<Self, Error> {
        let root = Weights::new(store, device);
        let w = root.pp("text_model");
        let (d, eps) = (config.hidden_size, config.layer_norm_eps);
        let shape = EncoderShape {
            hidden_size: d,
            intermediate_size: config.intermediate_size,
            num_hidden_layers: config.num_hidden_layers,
            num_attention_heads: config.num_attention_heads,
            hidden_act: config.hidden_act,
            layer_norm_eps: eps,
        };
        let layers = load_encoder(&w.pp("encoder"), &shape)?;
        let text_projection = match config.projection_dim {
            Some(p) => Some(root.linear("text_projection", d, p, false)?),
            None => None,
        };
        Ok(Self {
            token_embedding: w.embedding("embeddings.token_embedding", config.vocab_size, d)?,
            position_embedding: w.embedding(
                "embeddings.position_embedding",
                config.max_position_embeddings,
                d,
            )?,
            layers,
            final_layer_norm: w.layer_norm("final_layer_norm", d, eps)?,
            text_projection,
            hidden_size: d,
        })
    }

    /// input_ids: [B, L]; `eos_positions[b]` is the index of the first end-of-text token of
    /// row b (transformers pools there). Causal attention, no padding mask: the SDXL pipelines
    /// pass input ids only. `hidden` is the penultimate layer's output.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, eos_positions: &[usize]) -> ClipOutput<B> {
        self.forward_at(
            input_ids,
            eos_positions,
            self.layers.len().checked_sub(2),
            &[],
        )
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The width of a token's input embedding.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// [`forward`](Self::forward) with `hidden` the output of layer `layer` (0-based, no
    /// final norm), or the final normed output when `None` (ComfyUI's `clip_layer` "last");
    /// `vectors` replace the token embeddings of row 0 at their positions (textual-inversion
    /// embeddings, `process_tokens`), each `hidden_size` wide.
    pub fn forward_at(
        &self,
        input_ids: Tensor<B, 2, Int>,
        eos_positions: &[usize],
        layer: Option<usize>,
        vectors: &[(usize, Vec<f32>)],
    ) -> ClipOutput<B> {
        let [batch, len] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..len as i64, &device).unsqueeze::<2>();
        let mut tokens = self.token_embedding.forward(input_ids);
        for (position, vector) in vectors {
            let d = vector.len();
            let value =
                Tensor::<B, 3>::from_data(TensorData::new(vector.clone(), [1, 1, d]), &device);
            tokens = tokens.slice_assign([0..1, *position..*position + 1, 0..d], value);
        }
        let mut x = tokens + self.position_embedding.forward(positions);
        let mut hidden = None;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x, true);
            if Some(i) == layer {
                hidden = Some(x.clone());
            }
        }
        let last = self.final_layer_norm.forward(x);
        let pooled = Tensor::cat(
            (0..batch)
                .map(|b| {
                    let p = eos_positions[b];
                    last.clone().slice([b..b + 1, p..p + 1]).reshape([1, -1])
                })
                .collect(),
            0,
        );
        let pooled = match &self.text_projection {
            Some(proj) => proj.forward(pooled),
            None => pooled,
        };
        ClipOutput {
            hidden: hidden.unwrap_or_else(|| last.clone()),
            pooled,
        }
    }
}
