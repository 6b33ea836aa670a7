//! The Chroma transformer: Flux's double- and single-stream trunk without per-block
//! modulation layers, CLIP or guidance input; one "distilled guidance" approximator produces
//! every modulation vector from the timestep.
//!
//! Follows diffusers `models/transformers/transformer_chroma.py` (`ChromaTransformer2DModel`,
//! `ChromaApproximator`, `ChromaCombinedTimestepTextProjEmbeddings`) and lodestones'
//! `src/models/chroma/model.py`. Weights use diffusers names; Chroma's own files are renamed on
//! load (`weights::flux_store`).

use super::linear::Linear;
use burn::module::Module;
use burn::prelude::*;

use super::blocks::{RmsNorm, layer_norm, timestep_embedding};
use super::flux::{
    AttentionMask, DoubleBlock, FluxConfig, MlpEmbedder, Modulation, Rope, SingleBlock,
};
use crate::Error;
use crate::weights::{TensorStore, Weights};

/// `ChromaApproximator`: in_proj, residual (RMSNorm → Linear → SiLU → Linear) layers, out_proj.
#[derive(Module, Debug)]
struct Approximator<B: Backend> {
    in_proj: Linear<B>,
    layers: Vec<MlpEmbedder<B>>,
    norms: Vec<RmsNorm<B>>,
    out_proj: Linear<B>,
}

#[derive(Module, Debug)]
pub struct ChromaTransformer<B: Backend> {
    x_embedder: Linear<B>,
    context_embedder: Linear<B>,
    distilled_guidance_layer: Approximator<B>,
    double_blocks: Vec<DoubleBlock<B>>,
    single_blocks: Vec<SingleBlock<B>>,
    proj_out: Linear<B>,
    /// Width of the approximator input: timestep, guidance and index embeddings (¼, ¼, ½).
    #[module(skip)]
    approximator_channels: usize,
}

impl<B: Backend> ChromaTransformer<B> {
    pub fn load(store: &TensorStore, cfg: &FluxConfig, device: &B::Device) -> Result<Self, Error> {
        let w = Weights::new(store, device);
        let d = cfg.inner_dim();
        let a = w.pp("distilled_guidance_layer");
        let (in_proj, approximator_channels, hidden) = a.linear_any("in_proj", true)?;
        let layers = store.count_indexed("distilled_guidance_layer.layers");
        // torch `nn.RMSNorm()` without eps uses finfo(f32).eps.
        let norms = (0..layers)
            .map(|i| {
                RmsNorm::load(
                    &a,
                    &format!("norms.{i}.weight"),
                    hidden,
                    f32::EPSILON as f64,
                )
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let distilled_guidance_layer = Approximator {
            in_proj,
            layers: (0..layers)
                .map(|i| MlpEmbedder::load(&a.pp("layers").pp(i)))
                .collect::<Result<Vec<_>, Error>>()?,
            norms,
            out_proj: a.linear("out_proj", hidden, d, true)?,
        };
        Ok(Self {
            x_embedder: w.linear("x_embedder", cfg.in_channels, d, true)?,
            context_embedder: w.linear("context_embedder", cfg.joint_attention_dim, d, true)?,
            distilled_guidance_layer,
            double_blocks: (0..cfg.num_layers)
                .map(|i| DoubleBlock::load(&w.pp("transformer_blocks").pp(i), cfg))
                .collect::<Result<Vec<_>, Error>>()?,
            single_blocks: (0..cfg.num_single_layers)
                .map(|i| SingleBlock::load(&w.pp("single_transformer_blocks").pp(i), cfg))
                .collect::<Result<Vec<_>, Error>>()?,
            proj_out: w.linear("proj_out", d, cfg.in_channels, true)?,
            approximator_channels,
        })
    }

    /// Every modulation vector: [B, 3·singles + 12·doubles + 2, D] (diffusers
    /// `ChromaCombinedTimestepTextProjEmbeddings` + `ChromaApproximator`). Guidance is fixed at
    /// 0 as in the reference.
    fn modulations(&self, timesteps: &[f32], device: &B::Device) -> Tensor<B, 3> {
        let count = 3 * self.single_blocks.len() + 12 * self.double_blocks.len() + 2;
        let quarter = self.approximator_channels / 4;
        let scaled: Vec<f32> = timesteps.iter().map(|t| t * 1000.0).collect();
        let time = timestep_embedding::<B>(&scaled, quarter, true, 0.0, device);
        let guidance =
            timestep_embedding::<B>(&vec![0.0; timesteps.len()], quarter, true, 0.0, device);
        let indices: Vec<f32> = (0..count).map(|i| i as f32 * 1000.0).collect();
        let index = timestep_embedding::<B>(&indices, 2 * quarter, true, 0.0, device);
        let batch = timesteps.len();
        let time_guidance: Tensor<B, 3> = Tensor::cat(vec![time, guidance], 1)
            .unsqueeze_dim::<3>(1)
            .expand([batch, count, 2 * quarter]);
        let index: Tensor<B, 3> = index.unsqueeze::<3>().expand([batch, count, 2 * quarter]);
        let a = &self.distilled_guidance_layer;
        let mut x = a
            .in_proj
            .forward(Tensor::cat(vec![time_guidance, index], 2));
        for (layer, norm) in a.layers.iter().zip(&a.norms) {
            x = x.clone() + layer.forward(norm.forward(x));
        }
        a.out_proj.forward(x)
    }

    /// img: packed latents [B, N, C]; txt: T5 states [B, T, Dt]; `rope`: of the position ids of
    /// the T + N tokens; `timesteps`: σ per row; `mask`: over [text ‖ image] → velocity [B, N, C].
    pub fn forward(
        &self,
        img: Tensor<B, 3>,
        txt: Tensor<B, 3>,
        rope: &Rope<B>,
        timesteps: &[f32],
        mask: &AttentionMask<B>,
    ) -> Tensor<B, 3> {
        let device = img.device();
        let mods = self.modulations(timesteps, &device);
        let [b, _, d] = mods.dims();
        let rows = |start: usize, n: usize| mods.clone().slice([0..b, start..start + n]);
        let (singles, doubles) = (self.single_blocks.len(), self.double_blocks.len());

        let mut img = self.x_embedder.forward(img);
        let mut txt = self.context_embedder.forward(txt);
        // Rows: [single 3·S | double image 6·D | double text 6·D | final 2].
        for (i, block) in self.double_blocks.iter().enumerate() {
            let img_mod = Modulation::chunks(rows(3 * singles + 6 * i, 6), 2);
            let txt_mod = Modulation::chunks(rows(3 * singles + 6 * doubles + 6 * i, 6), 2);
            (img, txt) = block.forward(img, txt, &img_mod, &txt_mod, rope, mask);
        }
        let text_len = txt.dims()[1];
        let mut x = Tensor::cat(vec![txt, img], 1);
        for (i, block) in self.single_blocks.iter().enumerate() {
            let modulation = &Modulation::chunks(rows(3 * i, 3), 1)[0];
            x = block.forward(x, modulation, rope, mask);
        }
        let l = x.dims()[1];
        let img = x.slice([0..b, text_len..l, 0..d]);
        // `ChromaAdaLayerNormContinuousPruned`: (shift, scale), no swap.
        let last = rows(3 * singles + 12 * doubles, 2);
        let shift = last.clone().slice([0..b, 0..1]);
        let scale = last.slice([0..b, 1..2]);
        self.proj_out
            .forward(layer_norm(img, 1e-6) * (scale + 1.0) + shift)
    }
}
