//! Stable Diffusion XL (and Illustrious, Pony, NoobAI: the same network) text-to-image and
//! image-to-image.
//!
//! Reference: diffusers `pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py`
//! (`encode_prompt`, `_get_add_time_ids`, `prepare_latents`, the denoising loop) and
//! `pipeline_stable_diffusion_xl_img2img.py` (`get_timesteps`, `prepare_latents`) with
//! `EulerDiscreteScheduler` / `EulerAncestralDiscreteScheduler` / `DPMSolverMultistepScheduler`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;

use super::components::{
    ComponentFile, folder_config, folder_scheduler, folder_store, manifest_scheduler, merged,
    open_checkpoint, read_json, with_text_model_prefix,
};
use super::{
    Flow, GenerationParams, MergedLoras, StepProgress, check_size, image_sample, initial_noise,
    report_step,
};
use crate::Error;
use crate::models::clip::{Activation, ClipConfig, ClipTextModel};
use crate::models::unet_sdxl::{UNet, UNetConfig};
use crate::models::vae::{Decoder, Encoder, VaeConfig};
use crate::models::weight_bytes;
use crate::registry::{Family, Manifest};
use crate::sampling::{Prediction, Sampler, SchedulerConfig, TorchGenerator};
use crate::text::{ClipTokenizer, Embeddings, LongPrompt, TokenChunk};
use crate::weights::{
    LoadedParam, LoraComponent, LoraFile, LoraPatch, SafetensorsFile, TensorStore, open_clip_store,
    unet_store, vae_store,
};

/// SDXL's VAE latent scale (sgm `scale_factor`, diffusers vae config `scaling_factor`).
const SDXL_VAE_SCALING: f32 = 0.13025;
/// Width of a latent pixel in image pixels.
pub const VAE_SCALE: usize = 8;

#[derive(Clone)]
pub struct SdxlPipeline<B: Backend> {
    tokenizer_l: ClipTokenizer,
    tokenizer_g: ClipTokenizer,
    clip_l: ClipTextModel<B>,
    clip_g: ClipTextModel<B>,
    unet: UNet<B>,
    vae: Decoder<B>,
    /// For graphs' VAEEncode (img2img).
    vae_encoder: Encoder<B>,
    scheduler: SchedulerConfig,
    prediction: Prediction,
    force_zeros_for_empty_prompt: bool,
    latent_channels: usize,
    device: B::Device,
    /// Weight name → parameter, per network, for merging LoRAs.
    loaded_params: [(LoraComponent, HashMap<String, LoadedParam>); 3],
}

/// The tensors and settings of an SDXL model, from whichever layout it came in.
struct SdxlParts {
    unet: TensorStore,
    vae: TensorStore,
    clip_l: TensorStore,
    clip_g: TensorStore,
    /// config.json (folder) merged with the manifest's `[architecture.*]`, per component.
    unet_config: serde_json::Value,
    vae_config: serde_json::Value,
    clip_l_config: serde_json::Value,
    clip_g_config: serde_json::Value,
    scheduler: SchedulerConfig,
    tokenizer_l: Option<PathBuf>,
    tokenizer_g: Option<PathBuf>,
    /// SDXL's bigG tokenizer pads with "!" (tokenizer_2/tokenizer_config.json `pad_token`).
    pad_g: String,
    force_zeros_for_empty_prompt: bool,
}

impl SdxlParts {
    fn from_manifest(manifest: &Manifest) -> Result<Self, Error> {
        let files = &manifest.files;
        let mut parts = match (&files.checkpoint, &files.diffusers) {
            (Some(ckpt), None) => Self::single_file(&manifest.resolve(ckpt))?,
            (None, Some(dir)) => Self::diffusers_folder(&manifest.resolve(dir))?,
            _ => {
                return Err(Error::config(format!(
                    "model `{}`: [files] needs exactly one of `checkpoint` or `diffusers`",
                    manifest.id
                )));
            }
        };
        if let Some(vae) = &files.vae {
            parts.vae = standalone_vae(&manifest.resolve(vae))?;
        }
        if let Some(t) = &files.tokenizer_clip_l {
            parts.tokenizer_l = Some(manifest.resolve(t));
        }
        if let Some(t) = &files.tokenizer_clip_g {
            parts.tokenizer_g = Some(manifest.resolve(t));
        }
        parts.unet_config = merged(parts.unet_config, &manifest.architecture("unet"));
        parts.vae_config = merged(parts.vae_config, &manifest.architecture("vae"));
        parts.clip_l_config = merged(parts.clip_l_config, &manifest.architecture("text_encoder"));
        parts.clip_g_config = merged(
            parts.clip_g_config,
            &manifest.architecture("text_encoder_2"),
        );
        parts.scheduler = manifest_scheduler(parts.scheduler, manifest)?;
        Ok(parts)
    }

    /// The LDM/SGM single file civitai distributes.
    fn single_file(path: &Path) -> Result<Self, Error> {
        let file = open_checkpoint(
            path,
            "an SDXL",
            &[
                "model.diffusion_model.",
                "first_stage_model.",
                "conditioner.embedders.0.transformer.",
                "conditioner.embedders.1.model.",
            ],
        )?;
        let empty = serde_json::json!({});
        Ok(Self {
            unet: unet_store(&file, "model.diffusion_model."),
            vae: vae_store(&file, "first_stage_model."),
            clip_l: TensorStore::from_file_prefix(&file, "conditioner.embedders.0.transformer."),
            clip_g: open_clip_store(&file, "conditioner.embedders.1.model."),
            unet_config: empty.clone(),
            vae_config: empty.clone(),
            clip_l_config: empty.clone(),
            clip_g_config: empty,
            scheduler: SchedulerConfig::default(),
            tokenizer_l: None,
            tokenizer_g: None,
            pad_g: "!".into(),
            force_zeros_for_empty_prompt: true,
        })
    }

    fn diffusers_folder(dir: &Path) -> Result<Self, Error> {
        let index = read_json(&dir.join("model_index.json"))?;
        let scheduler = folder_scheduler(dir)?.unwrap_or_default();
        let tokenizer = |sub: &str| {
            let p = dir.join(sub).join("tokenizer.json");
            p.is_file().then_some(p)
        };
        let pad_g = read_json(&dir.join("tokenizer_2/tokenizer_config.json"))
            .ok()
            .and_then(|c| c["pad_token"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "!".into());
        Ok(Self {
            unet: folder_store(&dir.join("unet"))?,
            vae: folder_store(&dir.join("vae"))?,
            clip_l: with_text_model_prefix(folder_store(&dir.join("text_encoder"))?),
            clip_g: with_text_model_prefix(folder_store(&dir.join("text_encoder_2"))?),
            unet_config: folder_config(&dir.join("unet"))?,
            vae_config: folder_config(&dir.join("vae"))?,
            clip_l_config: folder_config(&dir.join("text_encoder"))?,
            clip_g_config: folder_config(&dir.join("text_encoder_2"))?,
            scheduler,
            tokenizer_l: tokenizer("tokenizer"),
            tokenizer_g: tokenizer("tokenizer_2"),
            pad_g,
            force_zeros_for_empty_prompt: index["force_zeros_for_empty_prompt"]
                .as_bool()
                .unwrap_or(true),
        })
    }
}

/// A VAE file on its own (e.g. sdxl-vae-fp16-fix): diffusers names or the LDM layout.
fn standalone_vae(path: &Path) -> Result<TensorStore, Error> {
    let file = SafetensorsFile::open(path)?;
    let store = TensorStore::from_file_prefix(&file, "");
    if store.has_prefix("decoder.up_blocks") {
        return Ok(store);
    }
    let prefix = if store.has_prefix("first_stage_model") {
        "first_stage_model."
    } else {
        ""
    };
    Ok(vae_store(&file, prefix))
}

/// SDXL's two text encoders and the one tokenizer ComfyUI uses for both: a checkpoint's, or
/// DualCLIPLoader's files.
pub struct ComfyClip<'a, B: Backend> {
    pub tokenizer: &'a ClipTokenizer,
    pub clip_l: &'a ClipTextModel<B>,
    pub clip_g: &'a ClipTextModel<B>,
    pub device: &'a B::Device,
    /// What `embedding:name` words may name (vectors under `clip_l` / `clip_g`).
    pub embeddings: &'a Embeddings,
}

impl<B: Backend> ComfyClip<'_, B> {
    /// ComfyUI's SDXL text encoding (`SDXLClipModel.encode_token_weights`):
    /// ComfyUI's tokenization with one tokenizer for both encoders (bigG pads with id 0),
    /// `text_l` for CLIP-L and `text_g` for bigG (CLIPTextEncode gives both the same text;
    /// CLIPTextEncodeSDXL pads the shorter chunk list with empty chunks); each chunk's states
    /// of layer `clip_layer` of both encoders (ComfyUI's `clip_layer`: −1 the last layer's
    /// output, −2 the default; beyond the layer count, the final normed output) concatenated
    /// on channels, chunks on tokens; weighted tokens as `(z − z_empty)·w + z_empty` against
    /// the encoding of [BOS, EOS, pad…]; pooled = bigG's projected pooled output of the first
    /// chunk. Returns (context [1, 77·k, L+G], pooled [1, P]).
    pub fn encode(
        &self,
        text_l: &str,
        text_g: &str,
        clip_layer: i64,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), Error> {
        let lookup_l = |name: &str| self.embeddings.vectors(name, "clip_l");
        let lookup_g = |name: &str| self.embeddings.vectors(name, "clip_g");
        let mut chunks_l = self.tokenizer.comfy_chunks(text_l, None, &lookup_l)?;
        let mut chunks_g = self.tokenizer.comfy_chunks(text_g, Some(0), &lookup_g)?;
        while chunks_l.len() < chunks_g.len() {
            chunks_l.push(self.tokenizer.comfy_empty(None));
        }
        while chunks_g.len() < chunks_l.len() {
            chunks_g.push(self.tokenizer.comfy_empty(Some(0)));
        }
        let encode = |model: &ClipTextModel<B>, chunks: &[TokenChunk], pad: Option<u32>| {
            let layers = model.num_layers() as i64;
            let layer = (clip_layer.abs() <= layers).then(|| (layers + clip_layer) as usize);
            let empty = match chunks.iter().any(TokenChunk::is_weighted) {
                true => Some(
                    self.clip_forward(model, &self.tokenizer.comfy_empty(pad), layer)?
                        .0,
                ),
                false => None,
            };
            let mut pooled = None;
            let mut states = Vec::new();
            for chunk in chunks {
                let (z, p) = self.clip_forward(model, chunk, layer)?;
                pooled.get_or_insert(p);
                states.push(match &empty {
                    Some(z_empty) if chunk.is_weighted() => {
                        let weights = Tensor::<B, 3>::from_data(
                            TensorData::new(chunk.weights.clone(), [1, chunk.weights.len(), 1]),
                            self.device,
                        );
                        (z - z_empty.clone()) * weights + z_empty.clone()
                    }
                    _ => z,
                });
            }
            Ok::<_, Error>((Tensor::cat(states, 1), pooled.expect("at least one chunk")))
        };
        let (l, _) = encode(self.clip_l, &chunks_l, None)?;
        let (g, pooled) = encode(self.clip_g, &chunks_g, Some(0))?;
        Ok((Tensor::cat(vec![l, g], 2), pooled))
    }

    /// One 77-token sequence through a CLIP tower: (the states of `layer`, pooled).
    fn clip_forward(
        &self,
        model: &ClipTextModel<B>,
        chunk: &TokenChunk,
        layer: Option<usize>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), Error> {
        clip_vectors_fit(model, chunk)?;
        let ids: Vec<i64> = chunk.ids.iter().map(|&i| i as i64).collect();
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, chunk.ids.len()]), self.device);
        let out = model.forward_at(ids, &[chunk.eos_position], layer, &chunk.vectors);
        Ok((out.hidden, out.pooled))
    }
}

/// An embedding's vectors must be as wide as the tower's token embeddings (ComfyUI warns and
/// ignores one that is not, padding the sequence; here it is an error that says so).
pub fn clip_vectors_fit<B: Backend>(
    model: &ClipTextModel<B>,
    chunk: &TokenChunk,
) -> Result<(), Error> {
    match chunk
        .vectors
        .iter()
        .find(|(_, v)| v.len() != model.hidden_size())
    {
        Some((_, v)) => Err(Error::request(format!(
            "an embedding of width {} does not fit a CLIP encoder of width {}",
            v.len(),
            model.hidden_size()
        ))),
        None => Ok(()),
    }
}

/// A 4-channel VAE file (SD / SDXL; LDM or diffusers names): (decoder, encoder), a graph's
/// VAELoader.
pub fn load_vae<B: Backend>(
    file: &ComponentFile,
    device: &B::Device,
) -> Result<(Decoder<B>, Encoder<B>), Error> {
    let store = standalone_vae(&file.path)?;
    let cfg = VaeConfig::detect(&store, &file.config, SDXL_VAE_SCALING, 0.0)?;
    Ok((
        Decoder::load(&store, &cfg, device)?,
        Encoder::load(&store, &cfg, device)?,
    ))
}

impl<B: Backend> SdxlPipeline<B> {
    /// The VAE's networks, shared (a graph's VAE output of CheckpointLoaderSimple).
    pub fn vae(&self) -> (Decoder<B>, Encoder<B>) {
        (self.vae.clone(), self.vae_encoder.clone())
    }

    /// Bytes of weights on the device, per network.
    pub fn weight_bytes(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("unet", weight_bytes(&self.unet)),
            ("clip_l", weight_bytes(&self.clip_l)),
            ("clip_g", weight_bytes(&self.clip_g)),
            (
                "vae",
                weight_bytes(&self.vae) + weight_bytes(&self.vae_encoder),
            ),
        ]
    }

    pub fn load(manifest: &Manifest, device: &B::Device) -> Result<Self, Error> {
        let parts = SdxlParts::from_manifest(manifest)?;
        let clip_l_cfg =
            ClipConfig::detect(&parts.clip_l, &parts.clip_l_config, Activation::QuickGelu)?;
        let clip_g_cfg = ClipConfig::detect(&parts.clip_g, &parts.clip_g_config, Activation::Gelu)?;
        let pooled_dim = clip_g_cfg
            .projection_dim
            .ok_or_else(|| Error::weights("SDXL's second text encoder has no text_projection"))?;
        let unet_cfg = UNetConfig::detect(&parts.unet, &parts.unet_config, pooled_dim)?;
        if unet_cfg.cross_attention_dim != clip_l_cfg.hidden_size + clip_g_cfg.hidden_size {
            return Err(Error::weights(format!(
                "the UNet attends to {}-wide text states but the text encoders give {} + {}",
                unet_cfg.cross_attention_dim, clip_l_cfg.hidden_size, clip_g_cfg.hidden_size
            )));
        }
        let vae_cfg = VaeConfig::detect(&parts.vae, &parts.vae_config, SDXL_VAE_SCALING, 0.0)?;
        let tokenizer = |path: &Option<PathBuf>, pad: Option<&str>| match path {
            Some(p) => ClipTokenizer::from_file(p, pad),
            None => ClipTokenizer::bundled(pad),
        };
        let prediction = match parts.scheduler.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            other => {
                return Err(Error::config(format!(
                    "prediction_type `{other}` is not supported"
                )));
            }
        };
        let clip_l = ClipTextModel::load(&parts.clip_l, &clip_l_cfg, device)?;
        let clip_g = ClipTextModel::load(&parts.clip_g, &clip_g_cfg, device)?;
        let unet = UNet::load(&parts.unet, &unet_cfg, device)?;
        Ok(Self {
            tokenizer_l: tokenizer(&parts.tokenizer_l, None)?,
            tokenizer_g: tokenizer(&parts.tokenizer_g, Some(&parts.pad_g))?,
            clip_l,
            clip_g,
            unet,
            loaded_params: [
                (LoraComponent::Unet, parts.unet.loaded_params()),
                (LoraComponent::TextEncoder, parts.clip_l.loaded_params()),
                (LoraComponent::TextEncoder2, parts.clip_g.loaded_params()),
            ],
            vae: Decoder::load(&parts.vae, &vae_cfg, device)?,
            vae_encoder: Encoder::load(&parts.vae, &vae_cfg, device)?,
            scheduler: parts.scheduler,
            prediction,
            force_zeros_for_empty_prompt: parts.force_zeros_for_empty_prompt,
            latent_channels: unet_cfg.in_channels,
            device: device.clone(),
        })
    }

    /// A prompt → (context [1, 77·k, L+G], pooled [1, P]): the penultimate states of both
    /// encoders concatenated on channels, chunk by chunk; the bigG pooled output of the first
    /// chunk. Emphasis weights follow A1111's "Original" method per encoder and chunk: scale
    /// each token's states by its weight, then restore the chunk's mean.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        long_prompt: LongPrompt,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), Error> {
        let chunks_l = self.tokenizer_l.chunks(prompt, long_prompt)?;
        let chunks_g = self.tokenizer_g.chunks(prompt, long_prompt)?;
        let encode = |model: &ClipTextModel<B>, chunk: &TokenChunk| {
            let ids: Vec<i64> = chunk.ids.iter().map(|&i| i as i64).collect();
            let ids = Tensor::<B, 2, Int>::from_data(
                TensorData::new(ids, [1, chunk.ids.len()]),
                &self.device,
            );
            let out = model.forward(ids, &[chunk.eos_position]);
            (apply_emphasis(out.hidden, chunk), out.pooled)
        };
        let mut contexts = Vec::new();
        let mut pooled = None;
        // Both tokenizers share CLIP's vocabulary, so they chunk a prompt the same way.
        for (cl, cg) in chunks_l.iter().zip(&chunks_g) {
            let (hl, _) = encode(&self.clip_l, cl);
            let (hg, pg) = encode(&self.clip_g, cg);
            contexts.push(Tensor::cat(vec![hl, hg], 2));
            pooled.get_or_insert(pg);
        }
        Ok((
            Tensor::cat(contexts, 1),
            pooled.expect("at least one chunk"),
        ))
    }

    /// The text encoders as ComfyUI's SDXL CLIP encodes with them (graphs).
    pub fn comfy_clip<'a>(&'a self, embeddings: &'a Embeddings) -> ComfyClip<'a, B> {
        ComfyClip {
            tokenizer: &self.tokenizer_l,
            clip_l: &self.clip_l,
            clip_g: &self.clip_g,
            device: &self.device,
            embeddings,
        }
    }

    /// The UNet's noise prediction (the stage both the native pipeline and graphs call):
    /// x [B, C, h, w], one timestep per row, context [B, L, ctx], pooled [B, P], time ids
    /// [B][6].
    pub fn predict_noise(
        &self,
        x: Tensor<B, 4>,
        timesteps: &[f32],
        context: &Tensor<B, 3>,
        pooled: Tensor<B, 2>,
        time_ids: &[[f32; 6]],
    ) -> Tensor<B, 4> {
        self.unet.forward(x, timesteps, context, pooled, time_ids)
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The VAE's latent scale (`scaling_factor`; ComfyUI's `latent_format.scale_factor`).
    pub fn vae_scaling(&self) -> f32 {
        SDXL_VAE_SCALING
    }

    /// A copy with LoRAs merged (`strength_model` into the UNet, `strength_clip` into both
    /// text encoders), sharing every unpatched tensor with `self`: what a graph's LoraLoader
    /// gives, leaving the loaded checkpoint as it was.
    pub fn with_loras(
        &self,
        loras: &[(&LoraFile, f32)],
        clip_loras: &[(&LoraFile, f32)],
    ) -> Result<Self, Error> {
        let mut patched = self.clone();
        let patch = |i: usize, loras: &[(&LoraFile, f32)]| {
            LoraPatch::<B>::new(self.loaded_params[i].0, loras, &self.loaded_params[i].1)
        };
        patched.unet = patch(0, loras)?.apply(self.unet.clone());
        patched.clip_l = patch(1, clip_loras)?.apply(self.clip_l.clone());
        patched.clip_g = patch(2, clip_loras)?.apply(self.clip_g.clone());
        Ok(patched)
    }

    /// Merges `loras` (file, weight) into the UNet and both text encoders until
    /// [`Self::unmerge_loras`] takes them off again.
    pub fn merge_loras(&mut self, loras: &[(&LoraFile, f32)]) -> Result<MergedLoras<B>, Error> {
        let patch = |i: usize| {
            LoraPatch::<B>::new(self.loaded_params[i].0, loras, &self.loaded_params[i].1)
        };
        let [mut unet, mut clip_l, mut clip_g] = [patch(0)?, patch(1)?, patch(2)?];
        self.unet = unet.apply(self.unet.clone());
        self.clip_l = clip_l.apply(self.clip_l.clone());
        self.clip_g = clip_g.apply(self.clip_g.clone());
        Ok(MergedLoras(vec![unet, clip_l, clip_g]))
    }

    /// Puts back the weights [`Self::merge_loras`] replaced, bit for bit.
    pub fn unmerge_loras(&mut self, merged: MergedLoras<B>) {
        let [mut unet, mut clip_l, mut clip_g] =
            <[LoraPatch<B>; 3]>::try_from(merged.0).unwrap_or_else(|_| panic!("SDXL merges three"));
        self.unet = unet.restore(self.unet.clone());
        self.clip_l = clip_l.restore(self.clip_l.clone());
        self.clip_g = clip_g.restore(self.clip_g.clone());
    }

    /// Decodes scaled latents to the VAE's raw output [1, 3, H, W] (about [-1, 1]).
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        self.vae.forward(self.vae.unscale(latents))
    }

    /// Text to image.
    pub fn generate(
        &self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(StepProgress<B>) -> Flow,
    ) -> Result<image::RgbImage, Error> {
        self.run(params, None, on_step)
    }

    /// Image to image from `image` with `params.init_image`'s strength (diffusers
    /// `StableDiffusionXLImg2ImgPipeline` with `width`×`height` as the image's size).
    pub fn generate_from_image(
        &self,
        params: &GenerationParams,
        image: &image::RgbImage,
        on_step: &mut dyn FnMut(StepProgress<B>) -> Flow,
    ) -> Result<image::RgbImage, Error> {
        self.run(params, Some(image), on_step)
    }

    fn run(
        &self,
        params: &GenerationParams,
        init: Option<&image::RgbImage>,
        on_step: &mut dyn FnMut(StepProgress<B>) -> Flow,
    ) -> Result<image::RgbImage, Error> {
        check_size(params, VAE_SCALE)?;
        let cfg = params.guidance_scale > 1.0;

        let (cond, cond_pooled) = self.encode_prompt(&params.prompt, params.long_prompt)?;
        let uncond = match (&params.negative_prompt, cfg) {
            (_, false) => None,
            (None, true) if self.force_zeros_for_empty_prompt => {
                Some((cond.zeros_like(), cond_pooled.zeros_like()))
            }
            (negative, true) => {
                Some(self.encode_prompt(negative.as_deref().unwrap_or(""), params.long_prompt)?)
            }
        };
        // original_size = target_size = (H, W), crops (0, 0): diffusers' defaults (img2img's
        // too, for a model without `requires_aesthetics_score`).
        let (hh, ww) = (params.height as f32, params.width as f32);
        let time_ids = [hh, ww, 0.0, 0.0, hh, ww];

        let mut rng = TorchGenerator::new(params.seed);
        let (mut latents, mut sampler) = match init {
            None => {
                let (latents, schedule) = self.initial_latents(params, &mut rng)?;
                (
                    latents,
                    Sampler::new(params.sampler, self.prediction, schedule),
                )
            }
            Some(image) => self.image_latents(params, image, &mut rng)?,
        };

        let total = sampler.steps();
        for i in 0..total {
            let t = sampler.schedule().timesteps[i];
            let model_input = sampler.scale_model_input(latents.clone(), i);
            let noise_pred = match &uncond {
                None => {
                    self.unet
                        .forward(model_input, &[t], &cond, cond_pooled.clone(), &[time_ids])
                }
                Some((uc, up)) => self.guided(
                    model_input,
                    t,
                    (uc, up),
                    (&cond, &cond_pooled),
                    time_ids,
                    params.guidance_scale,
                ),
            };
            let step = sampler.step(latents, noise_pred, i, &mut rng);
            latents = step.next;
            report_step(
                on_step,
                StepProgress {
                    step: i + 1,
                    total_steps: total,
                    latents: &latents,
                    denoised: &step.denoised,
                },
            )?;
        }
        Ok(to_rgb(self.decode(latents)))
    }

    /// The schedule of a run and its starting latents: `randn([1, C, H/8, W/8])` from the
    /// run's generator, times the schedule's initial σ (diffusers `prepare_latents`).
    pub fn initial_latents(
        &self,
        params: &GenerationParams,
        rng: &mut TorchGenerator,
    ) -> Result<(Tensor<B, 4>, crate::sampling::Schedule), Error> {
        let schedule = self
            .scheduler
            .schedule(params.sampler, params.scheduler, params.steps)?;
        let latents = initial_noise(params, self.latent_channels, rng, &self.device)
            * schedule.init_noise_sigma;
        Ok((latents, schedule))
    }

    /// img2img's sampler and starting latents (diffusers `get_timesteps` and `prepare_latents`):
    /// the image encoded, a sample of the VAE's posterior (the generator's first draw) scaled,
    /// then noised (the second draw) to the σ of the first of the `int(steps · strength)`
    /// steps kept.
    pub fn image_latents(
        &self,
        params: &GenerationParams,
        image: &image::RgbImage,
        rng: &mut TorchGenerator,
    ) -> Result<(Tensor<B, 4>, Sampler<B>), Error> {
        let run = params.steps_run(Family::Sdxl);
        let schedule = self
            .scheduler
            .schedule(params.sampler, params.scheduler, params.steps)?
            .from_step(params.steps - run);
        let clean = image_sample(&self.vae_encoder, image, params, rng, &self.device);
        let noise = initial_noise(params, self.latent_channels, rng, &self.device);
        let sampler = Sampler::new(params.sampler, self.prediction, schedule);
        Ok((sampler.add_noise(clean, noise), sampler))
    }

    /// Classifier-free guidance: one UNet call on the batch [uncond, cond] (two calls when the
    /// prompts chunked to different lengths); `uncond + scale · (cond − uncond)`.
    fn guided(
        &self,
        x: Tensor<B, 4>,
        t: f32,
        (uc, up): (&Tensor<B, 3>, &Tensor<B, 2>),
        (cc, cp): (&Tensor<B, 3>, &Tensor<B, 2>),
        time_ids: [f32; 6],
        scale: f32,
    ) -> Tensor<B, 4> {
        let (eps_u, eps_c) = if uc.dims() == cc.dims() {
            let out = self.unet.forward(
                Tensor::cat(vec![x.clone(), x], 0),
                &[t, t],
                &Tensor::cat(vec![uc.clone(), cc.clone()], 0),
                Tensor::cat(vec![up.clone(), cp.clone()], 0),
                &[time_ids, time_ids],
            );
            let [u, c] = <[Tensor<B, 4>; 2]>::try_from(out.chunk(2, 0)).expect("batch of two");
            (u, c)
        } else {
            (
                self.unet
                    .forward(x.clone(), &[t], uc, up.clone(), &[time_ids]),
                self.unet.forward(x, &[t], cc, cp.clone(), &[time_ids]),
            )
        };
        eps_u.clone() + (eps_c - eps_u) * scale
    }
}

/// A1111 `EmphasisOriginal`: z·w per token, then z·(mean before / mean after).
fn apply_emphasis<B: Backend>(z: Tensor<B, 3>, chunk: &TokenChunk) -> Tensor<B, 3> {
    if !chunk.is_weighted() {
        return z;
    }
    let device = z.device();
    let [_, len, _] = z.dims();
    let weights =
        Tensor::<B, 3>::from_data(TensorData::new(chunk.weights.clone(), [1, len, 1]), &device);
    let original_mean = z.clone().mean();
    let weighted = z * weights;
    let new_mean = weighted.clone().mean();
    weighted * (original_mean / new_mean).unsqueeze::<3>()
}

/// VAE output [1, 3, H, W] → 8-bit RGB: `round(clamp(x/2 + 0.5, 0, 1) · 255)`, as diffusers'
/// `VaeImageProcessor.postprocess` + `numpy_to_pil`.
pub fn to_rgb<B: Backend>(decoded: Tensor<B, 4>) -> image::RgbImage {
    let [_, _, h, w] = decoded.dims();
    let pixels = (decoded / 2.0 + 0.5).clamp(0.0, 1.0).permute([0, 2, 3, 1]);
    let values: Vec<f32> = pixels
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 data");
    let bytes = values
        .iter()
        .map(|v| (v * 255.0).round_ties_even() as u8)
        .collect();
    image::RgbImage::from_raw(w as u32, h as u32, bytes).expect("w·h·3 bytes")
}
