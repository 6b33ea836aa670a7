//! FLUX.1 dev / schnell and Chroma text-to-image: T5 (+ CLIP-L pooled for Flux) → the Flux
//! trunk on packed 2×2 latent patches → flow-matching Euler → the 16-channel VAE.
//!
//! Reference: diffusers `pipelines/flux/pipeline_flux.py` and `pipelines/chroma/pipeline_chroma.py`
//! (`_get_t5_prompt_embeds`, `_get_clip_prompt_embeds`, `prepare_latents`, `_pack_latents`,
//! `_unpack_latents`, `calculate_shift`, the denoising loop).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;

use super::components::{
    ComponentFile, clip_model, folder_config, folder_scheduler, folder_store, manifest_scheduler,
    merged, open_checkpoint, read_json, with_text_model_prefix,
};
use super::sdxl::to_rgb;
use super::text_encoder::OnDemand;
use super::{
    Flow, GenerationParams, StepProgress, check_size, flow_start, initial_noise, report_step,
};
use crate::Error;
use crate::models::chroma::ChromaTransformer;
use crate::models::clip::{Activation, ClipTextModel};
use crate::models::flux::{
    AttentionMask, FluxConditioning, FluxConfig, FluxTransformer, ROPE_THETA, Rope, position_ids,
};
use crate::models::t5::{T5Config, T5Encoder};
use crate::models::vae::{Decoder, Encoder, VaeConfig};
use crate::models::weight_bytes;
use crate::registry::{Family, Manifest};
use crate::sampling::{FlowMatchConfig, Linspace, TorchGenerator, euler_step};
use crate::text::{ClipTokenizer, T5Tokenizer};
use crate::weights::{SafetensorsFile, TensorStore, bfl_prefix, flux_store, vae_store};

/// The Flux VAE's latent scale and shift (BFL `AutoEncoderParams`).
pub(super) const FLUX_VAE_SCALING: f32 = 0.3611;
pub(super) const FLUX_VAE_SHIFT: f32 = 0.1159;
/// Image pixels per packed token side: 8× VAE, 2×2 patches.
pub const TOKEN_PIXELS: usize = 16;

/// A Flux-family transformer: the stage both this pipeline and graphs' UNETLoader use.
// One denoiser per loaded model: boxing the smaller variant would save nothing.
#[allow(clippy::large_enum_variant)]
pub enum Denoiser<B: Backend> {
    Flux(FluxTransformer<B>),
    Chroma(ChromaTransformer<B>),
}

impl<B: Backend> Denoiser<B> {
    /// The velocity on packed latents [B, L, 64] with text states [B, T, D]: Flux takes σ,
    /// its guidance (dev) and the CLIP-L pooled vector; Chroma takes σ and a text mask.
    #[allow(clippy::too_many_arguments)]
    pub fn velocity(
        &self,
        img: Tensor<B, 3>,
        txt: Tensor<B, 3>,
        rope: &Rope<B>,
        timesteps: &[f32],
        guidance: &[f32],
        pooled: Option<Tensor<B, 2>>,
        mask: &AttentionMask<B>,
    ) -> Result<Tensor<B, 3>, Error> {
        Ok(match self {
            Denoiser::Flux(model) => {
                let pooled = pooled.ok_or_else(|| {
                    Error::request(
                        "a Flux model needs the CLIP-L pooled output in its conditioning",
                    )
                })?;
                let cond = FluxConditioning {
                    timesteps,
                    guidance: model.has_guidance().then_some(guidance),
                    pooled,
                };
                model.forward(img, txt, rope, &cond)
            }
            Denoiser::Chroma(model) => model.forward(img, txt, rope, timesteps, mask),
        })
    }
}

/// A Flux-family transformer file alone, with its RoPE axes (a graph's UNETLoader).
pub fn load_denoiser<B: Backend>(
    file: &ComponentFile,
    family: Family,
    device: &B::Device,
) -> Result<(Denoiser<B>, Vec<usize>), Error> {
    let store = transformer_store(&SafetensorsFile::open(&file.path)?)?;
    let (denoiser, cfg) = denoiser(&store, &file.config, family, device)?;
    Ok((denoiser, cfg.axes_dims_rope))
}

fn denoiser<B: Backend>(
    store: &TensorStore,
    config: &serde_json::Value,
    family: Family,
    device: &B::Device,
) -> Result<(Denoiser<B>, FluxConfig), Error> {
    let cfg = FluxConfig::detect(store, config)?;
    let denoiser = if family == Family::Chroma {
        Denoiser::Chroma(ChromaTransformer::load(store, &cfg, device)?)
    } else {
        Denoiser::Flux(FluxTransformer::load(store, &cfg, device)?)
    };
    Ok((denoiser, cfg))
}

/// A T5 encoder file and its tokenizer (a graph's CLIPLoader / DualCLIPLoader).
pub fn load_t5<B: Backend>(
    file: &ComponentFile,
    device: &B::Device,
) -> Result<(T5Tokenizer, T5Encoder<B>), Error> {
    let store = t5_store(TensorStore::from_file_prefix(
        &SafetensorsFile::open(&file.path)?,
        "",
    ));
    let cfg = T5Config::detect(&store, &file.config)?;
    Ok((
        t5_tokenizer(file.tokenizer.as_deref())?,
        T5Encoder::load(&store, &cfg, device)?,
    ))
}

/// A 16-channel VAE file (Flux, Chroma, Z-Image): (decoder, encoder).
pub fn load_vae<B: Backend>(
    file: &ComponentFile,
    device: &B::Device,
) -> Result<(Decoder<B>, Encoder<B>), Error> {
    let store = standalone_vae(&SafetensorsFile::open(&file.path)?, "");
    flux_vae(&store, &file.config, device)
}

/// The 16-channel VAE (Flux, Chroma, Z-Image) from its tensors: (decoder, encoder).
pub(super) fn flux_vae<B: Backend>(
    store: &TensorStore,
    config: &serde_json::Value,
    device: &B::Device,
) -> Result<(Decoder<B>, Encoder<B>), Error> {
    let cfg = VaeConfig::detect(store, config, FLUX_VAE_SCALING, FLUX_VAE_SHIFT)?;
    Ok((
        Decoder::load(store, &cfg, device)?,
        Encoder::load(store, &cfg, device)?,
    ))
}

fn t5_tokenizer(path: Option<&Path>) -> Result<T5Tokenizer, Error> {
    match path {
        Some(p) => T5Tokenizer::from_file(p),
        None => T5Tokenizer::bundled(),
    }
}

pub struct FluxPipeline<B: Backend> {
    family: Family,
    /// CLIP-L for the pooled vector (Flux; Chroma has none).
    clip: Option<(ClipTokenizer, ClipTextModel<B>)>,
    t5_tokenizer: T5Tokenizer,
    /// T5 states [1, L, D] and the transformer's text mask of each prompt.
    t5: OnDemand<B, T5Encoder<B>, (Tensor<B, 3>, Vec<f32>)>,
    /// T5 sequence length: 512 for dev and Chroma, 256 for schnell.
    max_sequence_length: usize,
    denoiser: Denoiser<B>,
    /// The transformer's RoPE axes (`axes_dims_rope`).
    rope_axes: Vec<usize>,
    vae: Decoder<B>,
    /// For image to image.
    vae_encoder: Encoder<B>,
    scheduler: FlowMatchConfig,
    latent_channels: usize,
    device: B::Device,
}

/// The tensors and settings of a Flux-family model, from whichever layout it came in.
struct FluxParts {
    transformer: TensorStore,
    vae: TensorStore,
    clip_l: Option<TensorStore>,
    t5: TensorStore,
    transformer_config: serde_json::Value,
    vae_config: serde_json::Value,
    clip_l_config: serde_json::Value,
    t5_config: serde_json::Value,
    /// The folder's scheduler config (else the family's).
    scheduler: Option<FlowMatchConfig>,
    tokenizer_clip_l: Option<PathBuf>,
    tokenizer_t5: Option<PathBuf>,
}

impl FluxParts {
    fn from_manifest(manifest: &Manifest) -> Result<Self, Error> {
        let files = &manifest.files;
        let needs_clip = manifest.family != Family::Chroma;
        let mut parts = match &files.diffusers {
            Some(dir) => Self::diffusers_folder(&manifest.resolve(dir), needs_clip)?,
            None => Self::files(manifest, needs_clip)?,
        };
        if let Some(t) = &files.tokenizer_t5 {
            parts.tokenizer_t5 = Some(manifest.resolve(t));
        }
        if let Some(t) = &files.tokenizer_clip_l {
            parts.tokenizer_clip_l = Some(manifest.resolve(t));
        }
        parts.transformer_config = merged(
            parts.transformer_config,
            &manifest.architecture("transformer"),
        );
        parts.vae_config = merged(parts.vae_config, &manifest.architecture("vae"));
        let (clip_name, t5_name) = if needs_clip {
            ("text_encoder", "text_encoder_2")
        } else {
            ("", "text_encoder")
        };
        parts.clip_l_config = merged(parts.clip_l_config, &manifest.architecture(clip_name));
        parts.t5_config = merged(parts.t5_config, &manifest.architecture(t5_name));
        Ok(parts)
    }

    /// A diffusers folder: FluxPipeline (`text_encoder` CLIP-L, `text_encoder_2` T5) or
    /// ChromaPipeline (`text_encoder` T5).
    fn diffusers_folder(dir: &Path, needs_clip: bool) -> Result<Self, Error> {
        read_json(&dir.join("model_index.json"))?;
        let (t5_dir, t5_tokenizer) = if needs_clip {
            ("text_encoder_2", "tokenizer_2")
        } else {
            ("text_encoder", "tokenizer")
        };
        let scheduler = folder_scheduler(dir)?;
        let tokenizer = |sub: &str| {
            let p = dir.join(sub).join("tokenizer.json");
            p.is_file().then_some(p)
        };
        let (clip_l, clip_l_config) = if needs_clip {
            (
                Some(with_text_model_prefix(folder_store(
                    &dir.join("text_encoder"),
                )?)),
                folder_config(&dir.join("text_encoder"))?,
            )
        } else {
            (None, serde_json::json!({}))
        };
        Ok(Self {
            transformer: folder_store(&dir.join("transformer"))?,
            vae: folder_store(&dir.join("vae"))?,
            clip_l,
            t5: t5_store(folder_store(&dir.join(t5_dir))?),
            transformer_config: folder_config(&dir.join("transformer"))?,
            vae_config: folder_config(&dir.join("vae"))?,
            clip_l_config,
            t5_config: folder_config(&dir.join(t5_dir))?,
            scheduler,
            tokenizer_clip_l: if needs_clip {
                tokenizer("tokenizer")
            } else {
                None
            },
            tokenizer_t5: tokenizer(t5_tokenizer),
        })
    }

    /// Files as BFL and ComfyUI distribute them: `transformer` (BFL or diffusers names, or a
    /// `checkpoint` holding everything), `vae` (`ae.safetensors`), `clip_l`, `t5`.
    fn files(manifest: &Manifest, needs_clip: bool) -> Result<Self, Error> {
        let files = &manifest.files;
        let missing = |what: &str| {
            Error::config(format!(
                "model `{}`: [files] needs `{what}` (or a `diffusers` folder)",
                manifest.id
            ))
        };
        let checkpoint = match &files.checkpoint {
            Some(path) => Some(open_checkpoint(&manifest.resolve(path), "a Flux", &[])?),
            None => None,
        };
        let transformer = match (&files.transformer, &checkpoint) {
            (Some(path), _) => transformer_store(&SafetensorsFile::open(&manifest.resolve(path))?)?,
            (None, Some(file)) => transformer_store(file)?,
            (None, None) => return Err(missing("transformer")),
        };
        // Each part from its own file, or from the all-in-one checkpoint, where ComfyUI puts
        // them under `vae.`, `text_encoders.clip_l.transformer.`, `text_encoders.t5xxl.transformer.`.
        let part = |path: &Option<PathBuf>, inside: &str, what: &str| {
            let file = match (path, &checkpoint) {
                (Some(path), _) => SafetensorsFile::open(&manifest.resolve(path))?,
                (None, Some(file)) => file.clone(),
                (None, None) => return Err(missing(what)),
            };
            let prefix = if file.tensors().iter().any(|(n, _)| n.starts_with(inside)) {
                inside
            } else if path.is_some() {
                ""
            } else {
                return Err(missing(what));
            };
            Ok((file, prefix.to_owned()))
        };
        let (vae_file, vae_prefix) = part(&files.vae, "vae.", "vae")?;
        let (t5_file, t5_prefix) = part(&files.t5, "text_encoders.t5xxl.transformer.", "t5")?;
        let clip_l = if needs_clip {
            let (file, prefix) =
                part(&files.clip_l, "text_encoders.clip_l.transformer.", "clip_l")?;
            Some(with_text_model_prefix(TensorStore::from_file_prefix(
                &file, &prefix,
            )))
        } else {
            None
        };
        let empty = serde_json::json!({});
        Ok(Self {
            transformer,
            vae: standalone_vae(&vae_file, &vae_prefix),
            clip_l,
            t5: t5_store(TensorStore::from_file_prefix(&t5_file, &t5_prefix)),
            transformer_config: empty.clone(),
            vae_config: empty.clone(),
            clip_l_config: empty.clone(),
            t5_config: empty,
            scheduler: None,
            tokenizer_clip_l: None,
            tokenizer_t5: None,
        })
    }
}

/// A transformer file: BFL / Chroma names (with or without `model.diffusion_model.`) or
/// diffusers names.
fn transformer_store(file: &std::sync::Arc<SafetensorsFile>) -> Result<TensorStore, Error> {
    if let Some(prefix) = bfl_prefix(file) {
        return Ok(flux_store(file, &prefix));
    }
    let store = TensorStore::from_file_prefix(file, "");
    if store.contains("x_embedder.weight") {
        return Ok(store);
    }
    Err(Error::weights(format!(
        "{} is not a Flux or Chroma transformer: found {}",
        file.path().display(),
        crate::weights::describe(file)
    )))
}

/// `ae.safetensors` (LDM names, no prefix or `vae.`) or a diffusers VAE file.
pub(super) fn standalone_vae(file: &std::sync::Arc<SafetensorsFile>, prefix: &str) -> TensorStore {
    let store = TensorStore::from_file_prefix(file, prefix);
    if store.has_prefix("decoder.up_blocks") {
        store
    } else {
        vae_store(file, prefix)
    }
}

/// transformers ties T5's `encoder.embed_tokens` to `shared`; files keep either.
fn t5_store(mut store: TensorStore) -> TensorStore {
    if !store.contains("shared.weight")
        && let Some(embed) = store.get("encoder.embed_tokens.weight").cloned()
    {
        store.insert("shared.weight".into(), embed);
    }
    store
}

impl<B: Backend> FluxPipeline<B> {
    pub fn load(manifest: &Manifest, device: &B::Device) -> Result<Self, Error> {
        let family = manifest.family;
        let parts = FluxParts::from_manifest(manifest)?;
        let (denoiser, transformer_cfg) = denoiser(
            &parts.transformer,
            &parts.transformer_config,
            family,
            device,
        )?;
        let t5_cfg = T5Config::detect(&parts.t5, &parts.t5_config)?;
        if t5_cfg.d_model != transformer_cfg.joint_attention_dim {
            return Err(Error::weights(format!(
                "the transformer takes {}-wide text states but the T5 encoder gives {}",
                transformer_cfg.joint_attention_dim, t5_cfg.d_model
            )));
        }
        let clip = match &parts.clip_l {
            Some(store) => Some(clip_model(
                store,
                &parts.clip_l_config,
                Activation::QuickGelu,
                parts.tokenizer_clip_l.as_deref(),
                device,
            )?),
            None => None,
        };
        let t5_tokenizer = t5_tokenizer(parts.tokenizer_t5.as_deref())?;
        let vae_cfg = VaeConfig::detect(
            &parts.vae,
            &parts.vae_config,
            FLUX_VAE_SCALING,
            FLUX_VAE_SHIFT,
        )?;
        let scheduler = parts.scheduler.unwrap_or_else(|| match family {
            Family::FluxSchnell => FlowMatchConfig::schnell(),
            _ => FlowMatchConfig::default(),
        });
        let (t5_store, t5_device) = (parts.t5, device.clone());
        let t5 = OnDemand::new(
            move || T5Encoder::load(&t5_store, &t5_cfg, &t5_device),
            manifest.keep_text_encoder,
            device,
        );
        Ok(Self {
            family,
            clip,
            t5_tokenizer,
            t5,
            // diffusers: schnell "cannot be more than 256"; dev and Chroma use 512.
            max_sequence_length: if family == Family::FluxSchnell {
                256
            } else {
                512
            },
            denoiser,
            rope_axes: transformer_cfg.axes_dims_rope.clone(),
            latent_channels: vae_cfg.latent_channels,
            vae: Decoder::load(&parts.vae, &vae_cfg, device)?,
            vae_encoder: Encoder::load(&parts.vae, &vae_cfg, device)?,
            scheduler: manifest_scheduler(scheduler, manifest)?,
            device: device.clone(),
        })
    }

    /// T5 states [1, L, D] and, for Chroma, the token mask: real tokens plus the first padding
    /// token (`ChromaPipeline._get_t5_prompt_embeds`).
    fn encode_t5(&mut self, prompt: &str) -> Result<(Tensor<B, 3>, Vec<f32>), Error> {
        let tokens = self.t5_tokenizer.encode(prompt, self.max_sequence_length)?;
        let (family, device) = (self.family, &self.device);
        self.t5.encode(prompt, |t5| {
            let len = tokens.ids.len();
            let ids: Vec<i64> = tokens.ids.iter().map(|&i| i as i64).collect();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), device);
            if family != Family::Chroma {
                // Flux runs T5 without a mask (diffusers `_get_t5_prompt_embeds`).
                return Ok((t5.forward(ids, None), vec![1.0; len]));
            }
            let mask: Vec<f32> = tokens.mask.iter().map(|&m| m as f32).collect();
            let valid = tokens.mask.iter().sum::<u32>() as usize;
            let mask_tensor = Tensor::<B, 2>::from_data(TensorData::new(mask, [1, len]), device);
            let states = t5.forward(ids, Some(mask_tensor));
            let attend = (0..len)
                .map(|i| if i <= valid { 1.0 } else { 0.0 })
                .collect();
            Ok((states, attend))
        })
    }

    /// Bytes of weights on the device now, per network (T5: 0 while released).
    pub fn weight_bytes(&self) -> Vec<(&'static str, u64)> {
        let mut parts = vec![
            (
                "transformer",
                match &self.denoiser {
                    Denoiser::Flux(model) => weight_bytes(model),
                    Denoiser::Chroma(model) => weight_bytes(model),
                },
            ),
            ("t5", self.t5.weight_bytes()),
            (
                "vae",
                weight_bytes(&self.vae) + weight_bytes(&self.vae_encoder),
            ),
        ];
        if let Some((_, clip)) = &self.clip {
            parts.push(("clip_l", weight_bytes(clip)));
        }
        parts
    }

    /// How many times T5's weights were loaded (once per prompt not seen lately, unless kept).
    pub fn t5_loads(&self) -> usize {
        self.t5.loads()
    }

    /// CLIP-L's pooled output [1, 768] (Flux), from the prompt as written, cut at 77 tokens.
    fn encode_clip(&self, prompt: &str) -> Result<Option<Tensor<B, 2>>, Error> {
        let Some((tokenizer, clip)) = &self.clip else {
            return Ok(None);
        };
        let chunk = tokenizer.plain(prompt)?;
        let ids: Vec<i64> = chunk.ids.iter().map(|&i| i as i64).collect();
        let len = ids.len();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), &self.device);
        Ok(Some(clip.forward(ids, &[chunk.eos_position]).pooled))
    }

    /// A run's starting latents [1, C, H/8, W/8] and the σ it steps through: noise and every
    /// σ, or for image to image the image noised to the first of the steps it keeps.
    pub fn start(
        &self,
        params: &GenerationParams,
        init: Option<&image::RgbImage>,
    ) -> Result<(Tensor<B, 4>, Vec<f32>), Error> {
        let sigmas = self.sigmas(params)?;
        let (encoder, channels) = (&self.vae_encoder, self.latent_channels);
        let start = flow_start(
            self.family,
            params,
            init,
            sigmas,
            encoder,
            channels,
            &self.device,
        );
        Ok(start)
    }

    /// `randn([1, 16, H/8, W/8])` from the run's CPU generator, unscaled (σ_max = 1;
    /// diffusers `FluxPipeline.prepare_latents` draws before packing).
    pub fn initial_latents(&self, params: &GenerationParams) -> Tensor<B, 4> {
        let mut rng = TorchGenerator::new(params.seed);
        initial_noise(params, self.latent_channels, &mut rng, &self.device)
    }

    /// σ of each step and the final 0, for this image size (Flux dev and Chroma shift by the
    /// packed token count).
    pub fn sigmas(&self, params: &GenerationParams) -> Result<Vec<f32>, Error> {
        let tokens = (params.height / TOKEN_PIXELS) * (params.width / TOKEN_PIXELS);
        self.scheduler.sigmas(params.steps, tokens, Linspace::Numpy)
    }

    /// Text to image, or image to image from `init` with `params.init_image`'s strength
    /// (diffusers `FluxImg2ImgPipeline` / `ChromaImg2ImgPipeline`).
    pub fn generate(
        &mut self,
        params: &GenerationParams,
        init: Option<&image::RgbImage>,
        on_step: &mut dyn FnMut(StepProgress<B>) -> Flow,
    ) -> Result<image::RgbImage, Error> {
        check_size(params, TOKEN_PIXELS)?;
        let (txt, txt_mask) = self.encode_t5(&params.prompt)?;
        let pooled = self.encode_clip(&params.prompt)?;
        // Chroma: real CFG with the negative prompt ("" when none), as `ChromaPipeline`.
        let negative = match &self.denoiser {
            Denoiser::Chroma(_) if params.guidance_scale > 1.0 => {
                Some(self.encode_t5(params.negative_prompt.as_deref().unwrap_or(""))?)
            }
            _ => None,
        };
        self.t5.release();

        let (h, w) = (params.height / 8, params.width / 8);
        let (x, sigmas) = self.start(params, init)?;
        let mut x = pack(x);
        let tokens = (h / 2) * (w / 2);
        let text_len = txt.dims()[1];
        let ids = position_ids(text_len, h / 2, w / 2);
        let rope = Rope::new(&ids, &self.rope_axes, ROPE_THETA, &self.device);
        let mask = |attend: &[f32]| {
            let mut m = attend.to_vec();
            m.extend(std::iter::repeat_n(1.0, tokens));
            let len = m.len();
            let m = Tensor::<B, 2>::from_data(TensorData::new(m, [1, len]), &self.device);
            AttentionMask::from_tokens(m, false)
        };
        let (cond_mask, uncond) = (
            mask(&txt_mask),
            negative
                .as_ref()
                .map(|(states, attend)| (states, mask(attend))),
        );

        let steps = sigmas.len() - 1;
        for i in 0..steps {
            let t = [self.scheduler.model_time(sigmas[i])];
            let guidance = [params.guidance_scale];
            let velocity = self.denoiser.velocity(
                x.clone(),
                txt.clone(),
                &rope,
                &t,
                &guidance,
                pooled.clone(),
                &cond_mask,
            )?;
            // Chroma: real CFG with the negative prompt.
            let velocity = match &uncond {
                Some((states, m)) => {
                    let v_neg = self.denoiser.velocity(
                        x.clone(),
                        (*states).clone(),
                        &rope,
                        &t,
                        &guidance,
                        None,
                        m,
                    )?;
                    v_neg.clone() + (velocity - v_neg) * params.guidance_scale
                }
                None => velocity,
            };
            let (next, denoised) = euler_step(x, velocity, sigmas[i], sigmas[i + 1]);
            x = next;
            let (latents, denoised) = (unpack(x.clone(), h, w), unpack(denoised, h, w));
            report_step(
                on_step,
                StepProgress {
                    step: i + 1,
                    total_steps: steps,
                    latents: &latents,
                    denoised: &denoised,
                },
            )?;
        }
        let latents = unpack(x, h, w);
        Ok(to_rgb(self.vae.forward(self.vae.unscale(latents))))
    }
}

/// [B, C, h, w] → [B, (h/2)(w/2), 4C]: 2×2 patches, channel-major features
/// (diffusers `_pack_latents`).
pub fn pack<B: Backend>(latents: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, c, h, w] = latents.dims();
    latents
        .reshape([b, c, h / 2, 2, w / 2, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, (h / 2) * (w / 2), c * 4])
}

/// The inverse of [`pack`] for an h×w latent (diffusers `_unpack_latents`).
pub fn unpack<B: Backend>(packed: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 4> {
    let [b, _, features] = packed.dims();
    let c = features / 4;
    packed
        .reshape([b, h / 2, w / 2, c, 2, 2])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([b, c, h, w])
}
