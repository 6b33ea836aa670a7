//! The Stable Diffusion safety checker: a CLIP ViT-L/14 vision tower, its visual projection,
//! and the cosine similarity of the image embedding to 17 concept and 3 "special care"
//! embeddings, each against its own threshold.
//!
//! Follows diffusers `pipelines/stable_diffusion/safety_checker.py`
//! (`StableDiffusionSafetyChecker.forward`, `cosine_distance`) and transformers
//! `models/clip/modeling_clip.py` (`CLIPVisionEmbeddings`, `CLIPVisionTransformer`). Weights:
//! `CompVis/stable-diffusion-safety-checker`'s `model.safetensors`, whose names this reads as
//! they are (`vision_model.vision_model.*`, `visual_projection.weight`, `concept_embeds`, ...).

use burn::module::Param;
use burn::nn::LayerNorm;
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use serde::Deserialize;

use super::clip::{Activation, EncoderLayer, EncoderShape, load_encoder};
use super::linear::Linear;
use crate::Error;
use crate::weights::{TensorStore, Weights};

/// transformers `CLIPVisionConfig`, with the widths, depth and patch size read from the
/// weights and the rest from the checker's config.json (`vision_config`). Defaults are
/// ViT-L/14's: 64-wide heads, quick_gelu, eps 1e-5.
#[derive(Clone, Debug)]
pub struct SafetyCheckerConfig {
    pub encoder: EncoderShape,
    pub image_size: usize,
    pub patch_size: usize,
    pub projection_dim: usize,
    pub concepts: usize,
    pub special_concepts: usize,
}

#[derive(Deserialize, Default)]
struct VisionOverrides {
    num_attention_heads: Option<usize>,
    hidden_act: Option<Activation>,
    layer_norm_eps: Option<f64>,
}

const TOWER: &str = "vision_model.vision_model";

impl SafetyCheckerConfig {
    /// `config` is the checker's config.json (a `CLIPConfig`), or `{}`.
    pub fn detect(store: &TensorStore, config: &serde_json::Value) -> Result<Self, Error> {
        let o: VisionOverrides = config
            .get("vision_config")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let shape = |name: &str| {
            store.shape(name).ok_or_else(|| {
                Error::weights(format!(
                    "not a Stable Diffusion safety checker: missing `{name}`"
                ))
            })
        };
        let patch = shape(&format!("{TOWER}.embeddings.patch_embedding.weight"))?;
        let positions = shape(&format!("{TOWER}.embeddings.position_embedding.weight"))?;
        let fc1 = shape(&format!("{TOWER}.encoder.layers.0.mlp.fc1.weight"))?;
        let projection = shape("visual_projection.weight")?;
        let hidden_size = patch[0];
        let patch_size = patch[2];
        // positions = (image_size / patch_size)² + 1 (the class token)
        let grid = ((positions[0].saturating_sub(1)) as f64).sqrt() as usize;
        if grid * grid + 1 != positions[0] {
            return Err(Error::weights(format!(
                "the safety checker's {} positions are not a square grid plus a class token",
                positions[0]
            )));
        }
        Ok(Self {
            encoder: EncoderShape {
                hidden_size,
                intermediate_size: fc1[0],
                num_hidden_layers: store.count_indexed(&format!("{TOWER}.encoder.layers")),
                num_attention_heads: o.num_attention_heads.unwrap_or(hidden_size / 64).max(1),
                hidden_act: o.hidden_act.unwrap_or(Activation::QuickGelu),
                layer_norm_eps: o.layer_norm_eps.unwrap_or(1e-5),
            },
            image_size: grid * patch_size,
            patch_size,
            projection_dim: projection[0],
            concepts: shape("concept_embeds")?[0],
            special_concepts: shape("special_care_embeds")?[0],
        })
    }
}

#[derive(Module, Debug)]
pub struct SafetyChecker<B: Backend> {
    class_embedding: Param<Tensor<B, 1>>,
    /// [D, 3, P, P], no bias
    patch_embedding: Param<Tensor<B, 4>>,
    /// [positions, D]
    position_embedding: Param<Tensor<B, 2>>,
    pre_layrnorm: LayerNorm<B>,
    layers: Vec<EncoderLayer<B>>,
    post_layernorm: LayerNorm<B>,
    visual_projection: Linear<B>,
    /// Each [N, P], normalised to unit length at load (diffusers normalises them on every
    /// call; the product is the same).
    concept_embeds: Tensor<B, 2>,
    special_care_embeds: Tensor<B, 2>,
    #[module(skip)]
    concept_thresholds: Vec<f32>,
    #[module(skip)]
    special_thresholds: Vec<f32>,
    #[module(skip)]
    patch_size: usize,
    #[module(skip)]
    image_size: usize,
}

/// What the checker found in one image: diffusers' `result_img` (scores rounded to three
/// decimals as it rounds them) and its flag.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Cosine similarity to each concept embedding, unrounded.
    pub concept_similarity: Vec<f32>,
    pub special_similarity: Vec<f32>,
    /// similarity − threshold (+ 0.01 once a special-care concept was hit), rounded.
    pub concept_scores: Vec<f32>,
    pub special_scores: Vec<f32>,
    /// Indices of the concepts whose score is above 0 (diffusers `bad_concepts`).
    pub bad_concepts: Vec<usize>,
    /// Indices of the special-care concepts whose score is above 0.
    pub special_care: Vec<usize>,
    pub is_nsfw: bool,
}

/// `round(x, 3)` as Python rounds a float: to the nearest thousandth, halves to even.
fn round3(x: f32) -> f32 {
    ((x as f64) * 1000.0).round_ties_even() as f32 / 1000.0
}

/// diffusers `StableDiffusionSafetyChecker.forward`, per image: the special-care concepts
/// first, where the first hit raises the adjustment to 0.01 for the special concepts after
/// it and for every concept; the image is flagged when any concept scores above 0.
pub fn verdict(
    concept_similarity: &[f32],
    special_similarity: &[f32],
    concept_thresholds: &[f32],
    special_thresholds: &[f32],
) -> Verdict {
    let mut adjustment = 0.0f32;
    let mut special_scores = Vec::with_capacity(special_similarity.len());
    let mut special_care = Vec::new();
    for (i, (cos, threshold)) in special_similarity
        .iter()
        .zip(special_thresholds)
        .enumerate()
    {
        let score = round3(cos - threshold + adjustment);
        special_scores.push(score);
        if score > 0.0 {
            special_care.push(i);
            adjustment = 0.01;
        }
    }
    let concept_scores: Vec<f32> = concept_similarity
        .iter()
        .zip(concept_thresholds)
        .map(|(cos, threshold)| round3(cos - threshold + adjustment))
        .collect();
    let bad_concepts: Vec<usize> = (0..concept_scores.len())
        .filter(|&i| concept_scores[i] > 0.0)
        .collect();
    Verdict {
        concept_similarity: concept_similarity.to_vec(),
        special_similarity: special_similarity.to_vec(),
        is_nsfw: !bad_concepts.is_empty(),
        concept_scores,
        special_scores,
        bad_concepts,
        special_care,
    }
}

/// `nn.functional.normalize`: rows divided by their L2 norm (at least 1e-12). [N, P]
fn normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}

impl<B: Backend> SafetyChecker<B> {
    pub fn load(
        store: &TensorStore,
        config: &SafetyCheckerConfig,
        device: &B::Device,
    ) -> Result<Self, Error> {
        let root = Weights::new(store, device);
        let w = root.pp(TOWER);
        let shape = &config.encoder;
        let (d, p, eps) = (shape.hidden_size, config.patch_size, shape.layer_norm_eps);
        let grid = config.image_size / p;
        let layers = load_encoder(&w.pp("encoder"), shape)?;
        let e = w.pp("embeddings");
        let (pd, nc, ns) = (
            config.projection_dim,
            config.concepts,
            config.special_concepts,
        );
        let host = |name: &str, n: usize| -> Result<Vec<f32>, Error> {
            root.tensor::<1>(name, [n])?
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| Error::weights(format!("`{name}`: {e:?}")))
        };
        Ok(Self {
            class_embedding: Param::from_tensor(e.tensor("class_embedding", [d])?),
            patch_embedding: Param::from_tensor(e.tensor("patch_embedding.weight", [d, 3, p, p])?),
            position_embedding: Param::from_tensor(
                e.tensor("position_embedding.weight", [grid * grid + 1, d])?,
            ),
            pre_layrnorm: w.layer_norm("pre_layrnorm", d, eps)?,
            layers,
            post_layernorm: w.layer_norm("post_layernorm", d, eps)?,
            visual_projection: root.linear("visual_projection", d, pd, false)?,
            concept_embeds: normalize(root.tensor("concept_embeds", [nc, pd])?),
            special_care_embeds: normalize(root.tensor("special_care_embeds", [ns, pd])?),
            concept_thresholds: host("concept_embeds_weights", nc)?,
            special_thresholds: host("special_care_embeds_weights", ns)?,
            patch_size: p,
            image_size: config.image_size,
        })
    }

    /// `CLIPVisionEmbeddings`: the patch convolution's outputs after a class token, plus
    /// position embeddings. pixel_values: [B, 3, S, S] → [B, 1 + (S/P)², D]
    pub fn embeddings(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let p = self.patch_size;
        let options = ConvOptions::new([p, p], [0, 0], [1, 1], 1);
        let patches = conv2d(pixel_values, self.patch_embedding.val(), None, options);
        let [b, d, gh, gw] = patches.dims();
        let patches = patches.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([b, 1, d]);
        Tensor::cat(vec![class, patches], 1) + self.position_embedding.val().unsqueeze::<3>()
    }

    /// `CLIPVisionTransformer` and `visual_projection`: the image embeddings. [B, P]
    pub fn image_embeds(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = self.pre_layrnorm.forward(self.embeddings(pixel_values));
        for layer in &self.layers {
            x = layer.forward(x, false);
        }
        let [b, _, d] = x.dims();
        // pooled_output = post_layernorm(last_hidden_state[:, 0, :])
        let pooled = self
            .post_layernorm
            .forward(x.slice([0..b, 0..1]).reshape([b, d]));
        self.visual_projection.forward(pooled)
    }

    /// diffusers `cosine_distance` of the image embeddings to the concept and to the
    /// special-care embeddings (a cosine similarity, despite the name): ([B, 17], [B, 3]).
    pub fn similarities(&self, image_embeds: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let image = normalize(image_embeds);
        (
            image
                .clone()
                .matmul(self.concept_embeds.clone().transpose()),
            image.matmul(self.special_care_embeds.clone().transpose()),
        )
    }

    /// The verdict on each image of `pixel_values` ([`clip_input`]). [B, 3, S, S]
    pub fn check(&self, pixel_values: Tensor<B, 4>) -> Result<Vec<Verdict>, Error> {
        let (concepts, special) = self.similarities(self.image_embeds(pixel_values));
        let rows = |t: Tensor<B, 2>| -> Result<Vec<Vec<f32>>, Error> {
            let [_, n] = t.dims();
            let values = t
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| Error::weights(format!("safety checker output: {e:?}")))?;
            Ok(values.chunks(n.max(1)).map(<[f32]>::to_vec).collect())
        };
        let (concepts, special) = (rows(concepts)?, rows(special)?);
        Ok(concepts
            .iter()
            .zip(&special)
            .map(|(c, s)| verdict(c, s, &self.concept_thresholds, &self.special_thresholds))
            .collect())
    }

    /// The side of the square the tower looks at (224 for ViT-L/14).
    pub fn image_size(&self) -> usize {
        self.image_size
    }
}
