//! Z-Image Turbo text-to-image: Qwen3 (chat template, second-to-last hidden state of the real
//! tokens) → the Z-Image transformer → flow-matching Euler with static shift 3 → the Flux VAE.
//!
//! Reference: diffusers `pipelines/z_image/pipeline_z_image.py` (`_encode_prompt`,
//! `prepare_latents`, `get_default_z_image_sigmas`, the denoising loop): the model runs at time
//! `1 − σ` and its output is negated before the Euler step; with `guidance_scale > 0` it also
//! runs on the negative prompt and `pred = pos + g·(pos − neg)`.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;

use super::components::{
    ComponentFile, folder_config, folder_scheduler, folder_store, manifest_scheduler, merged,
    read_json,
};
use super::flux::{FLUX_VAE_SCALING, FLUX_VAE_SHIFT, TOKEN_PIXELS, standalone_vae};
use super::sdxl::to_rgb;
use super::text_encoder::OnDemand;
use super::{
    Flow, GenerationParams, StepProgress, check_size, flow_start, initial_noise, report_step,
};
use crate::Error;
use crate::models::qwen3::{Qwen3Config, Qwen3Encoder};
use crate::models::vae::{Decoder, Encoder, VaeConfig};
use crate::models::weight_bytes;
use crate::models::zimage::{ZImageConfig, ZImageTransformer};
use crate::registry::{Family, Manifest};
use crate::sampling::{FlowMatchConfig, Linspace, TorchGenerator, euler_step};
use crate::text::Qwen3Tokenizer;
use crate::weights::{SafetensorsFile, TensorStore, zimage_prefix, zimage_store};

/// diffusers `ZImagePipeline(max_sequence_length=512)`.
const MAX_SEQUENCE_LENGTH: usize = 512;

pub struct ZImagePipeline<B: Backend> {
    tokenizer: Qwen3Tokenizer,
    /// Caption states [L, D] of each prompt.
    text_encoder: OnDemand<B, Qwen3Encoder<B>, Tensor<B, 2>>,
    transformer: ZImageTransformer<B>,
    vae: Decoder<B>,
    /// For image to image.
    vae_encoder: Encoder<B>,
    scheduler: FlowMatchConfig,
    latent_channels: usize,
    device: B::Device,
}

/// The tensors and settings of a Z-Image model, from whichever layout it came in.
struct ZImageParts {
    transformer: TensorStore,
    vae: TensorStore,
    text_encoder: TensorStore,
    transformer_config: serde_json::Value,
    vae_config: serde_json::Value,
    text_encoder_config: serde_json::Value,
    /// The folder's scheduler config (else Z-Image Turbo's).
    scheduler: Option<FlowMatchConfig>,
    tokenizer: Option<PathBuf>,
}

impl ZImageParts {
    fn from_manifest(manifest: &Manifest) -> Result<Self, Error> {
        let files = &manifest.files;
        let mut parts = match &files.diffusers {
            Some(dir) => Self::diffusers_folder(&manifest.resolve(dir))?,
            None => Self::files(manifest)?,
        };
        if let Some(t) = &files.tokenizer_qwen3 {
            parts.tokenizer = Some(manifest.resolve(t));
        }
        parts.transformer_config = merged(
            parts.transformer_config,
            &manifest.architecture("transformer"),
        );
        parts.vae_config = merged(parts.vae_config, &manifest.architecture("vae"));
        parts.text_encoder_config = merged(
            parts.text_encoder_config,
            &manifest.architecture("text_encoder"),
        );
        Ok(parts)
    }

    fn diffusers_folder(dir: &Path) -> Result<Self, Error> {
        read_json(&dir.join("model_index.json"))?;
        let scheduler = folder_scheduler(dir)?;
        let tokenizer = dir.join("tokenizer/tokenizer.json");
        Ok(Self {
            transformer: folder_store(&dir.join("transformer"))?,
            vae: folder_store(&dir.join("vae"))?,
            text_encoder: qwen3_store(folder_store(&dir.join("text_encoder"))?),
            transformer_config: folder_config(&dir.join("transformer"))?,
            vae_config: folder_config(&dir.join("vae"))?,
            text_encoder_config: folder_config(&dir.join("text_encoder"))?,
            scheduler,
            tokenizer: tokenizer.is_file().then_some(tokenizer),
        })
    }

    /// Separate files, as ComfyUI users have them: `transformer` (original or diffusers
    /// names), `vae` (`ae.safetensors`), `qwen3` (the text encoder).
    fn files(manifest: &Manifest) -> Result<Self, Error> {
        let files = &manifest.files;
        let open = |path: &Option<PathBuf>, what: &str| match path {
            Some(p) => SafetensorsFile::open(&manifest.resolve(p)),
            None => Err(Error::config(format!(
                "model `{}`: [files] needs `{what}` (or a `diffusers` folder)",
                manifest.id
            ))),
        };
        let empty = serde_json::json!({});
        Ok(Self {
            transformer: transformer_store(&open(&files.transformer, "transformer")?)?,
            vae: standalone_vae(&open(&files.vae, "vae")?, ""),
            text_encoder: qwen3_store(TensorStore::from_file_prefix(
                &open(&files.qwen3, "qwen3")?,
                "",
            )),
            transformer_config: empty.clone(),
            vae_config: empty.clone(),
            text_encoder_config: empty,
            scheduler: None,
            tokenizer: None,
        })
    }
}

/// A transformer file in Z-Image's original names (with or without a ComfyUI prefix).
fn transformer_store(file: &std::sync::Arc<SafetensorsFile>) -> Result<TensorStore, Error> {
    let prefix = zimage_prefix(file).ok_or_else(|| {
        Error::weights(format!(
            "{} is not a Z-Image transformer: found {}",
            file.path().display(),
            crate::weights::describe(file)
        ))
    })?;
    Ok(zimage_store(file, &prefix))
}

/// Qwen3ForCausalLM files keep the network under `model.`; `Qwen3Model` files do not.
fn qwen3_store(store: TensorStore) -> TensorStore {
    if store.has_prefix("model") {
        store.sub("model")
    } else {
        store
    }
}

/// Z-Image Turbo's `scheduler/scheduler_config.json`: static shift 3.
fn default_scheduler() -> FlowMatchConfig {
    FlowMatchConfig {
        shift: 3.0,
        use_dynamic_shifting: false,
        ..FlowMatchConfig::default()
    }
}

/// A Z-Image transformer file alone (a graph's UNETLoader).
pub fn load_transformer<B: Backend>(
    file: &ComponentFile,
    device: &B::Device,
) -> Result<ZImageTransformer<B>, Error> {
    let store = transformer_store(&SafetensorsFile::open(&file.path)?)?;
    let cfg = ZImageConfig::detect(&store, &file.config)?;
    ZImageTransformer::load(&store, &cfg, device)
}

/// A Qwen3 text encoder file and its tokenizer (a graph's CLIPLoader, type lumina2).
pub fn load_text_encoder<B: Backend>(
    file: &ComponentFile,
    device: &B::Device,
) -> Result<(Qwen3Tokenizer, Qwen3Encoder<B>), Error> {
    let store = qwen3_store(TensorStore::from_file_prefix(
        &SafetensorsFile::open(&file.path)?,
        "",
    ));
    let cfg = Qwen3Config::detect(&store, &file.config)?;
    Ok((
        tokenizer(file.tokenizer.as_deref())?,
        Qwen3Encoder::load(&store, &cfg, device)?,
    ))
}

fn tokenizer(path: Option<&Path>) -> Result<Qwen3Tokenizer, Error> {
    match path {
        Some(p) => Qwen3Tokenizer::from_file(p),
        None => Qwen3Tokenizer::bundled(),
    }
}

/// The Qwen3 states of a prompt's chat-template tokens [L, D] (the stage the pipeline and
/// graphs share): causal attention makes the right padding the reference adds irrelevant to
/// the real tokens, so none is added.
pub fn encode_caption<B: Backend>(
    tokenizer: &Qwen3Tokenizer,
    encoder: &Qwen3Encoder<B>,
    prompt: &str,
    max_len: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2>, Error> {
    let ids = tokenizer.encode_chat(prompt, max_len)?;
    let len = ids.len();
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), device);
    let mask = Tensor::<B, 2>::ones([1, len], device);
    let states = encoder.forward(ids, mask);
    let d = states.dims()[2];
    Ok(states.reshape([len, d]))
}

impl<B: Backend> ZImagePipeline<B> {
    pub fn load(manifest: &Manifest, device: &B::Device) -> Result<Self, Error> {
        let parts = ZImageParts::from_manifest(manifest)?;
        let transformer_cfg = ZImageConfig::detect(&parts.transformer, &parts.transformer_config)?;
        let text_cfg = Qwen3Config::detect(&parts.text_encoder, &parts.text_encoder_config)?;
        if text_cfg.hidden_size != transformer_cfg.cap_feat_dim {
            return Err(Error::weights(format!(
                "the transformer takes {}-wide caption states but the text encoder gives {}",
                transformer_cfg.cap_feat_dim, text_cfg.hidden_size
            )));
        }
        let tokenizer = tokenizer(parts.tokenizer.as_deref())?;
        let vae_cfg = VaeConfig::detect(
            &parts.vae,
            &parts.vae_config,
            FLUX_VAE_SCALING,
            FLUX_VAE_SHIFT,
        )?;
        let (text_store, text_device) = (parts.text_encoder, device.clone());
        let text_encoder = OnDemand::new(
            move || Qwen3Encoder::load(&text_store, &text_cfg, &text_device),
            manifest.keep_text_encoder,
            device,
        );
        Ok(Self {
            tokenizer,
            text_encoder,
            transformer: ZImageTransformer::load(&parts.transformer, &transformer_cfg, device)?,
            latent_channels: vae_cfg.latent_channels,
            vae: Decoder::load(&parts.vae, &vae_cfg, device)?,
            vae_encoder: Encoder::load(&parts.vae, &vae_cfg, device)?,
            scheduler: manifest_scheduler(
                parts.scheduler.unwrap_or_else(default_scheduler),
                manifest,
            )?,
            device: device.clone(),
        })
    }

    /// The Qwen3 states of the prompt's real tokens [L, D] ([`encode_caption`]), kept per
    /// prompt.
    pub fn encode_prompt(&mut self, prompt: &str) -> Result<Tensor<B, 2>, Error> {
        let (tokenizer, device) = (&self.tokenizer, &self.device);
        self.text_encoder.encode(prompt, |encoder| {
            encode_caption(tokenizer, encoder, prompt, MAX_SEQUENCE_LENGTH, device)
        })
    }

    /// Bytes of weights on the device now, per network (Qwen3: 0 while released).
    pub fn weight_bytes(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("transformer", weight_bytes(&self.transformer)),
            ("qwen3", self.text_encoder.weight_bytes()),
            (
                "vae",
                weight_bytes(&self.vae) + weight_bytes(&self.vae_encoder),
            ),
        ]
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
            Family::ZImageTurbo,
            params,
            init,
            sigmas,
            encoder,
            channels,
            &self.device,
        );
        Ok(start)
    }

    /// `randn([1, 16, H/8, W/8])` from the run's CPU generator (σ_max = 1).
    pub fn initial_latents(&self, params: &GenerationParams) -> Tensor<B, 4> {
        let mut rng = TorchGenerator::new(params.seed);
        initial_noise(params, self.latent_channels, &mut rng, &self.device)
    }

    /// σ of each step and the final 0: `torch.linspace(1, 1/N, N)` shifted by 3.
    pub fn sigmas(&self, params: &GenerationParams) -> Result<Vec<f32>, Error> {
        let tokens = (params.height / TOKEN_PIXELS) * (params.width / TOKEN_PIXELS);
        self.scheduler.sigmas(params.steps, tokens, Linspace::Torch)
    }

    /// Text to image, or image to image from `init` with `params.init_image`'s strength
    /// (diffusers `ZImageImg2ImgPipeline`).
    pub fn generate(
        &mut self,
        params: &GenerationParams,
        init: Option<&image::RgbImage>,
        on_step: &mut dyn FnMut(StepProgress<B>) -> Flow,
    ) -> Result<image::RgbImage, Error> {
        check_size(params, TOKEN_PIXELS)?;
        let caption = self.encode_prompt(&params.prompt)?;
        // CFG when the scale is positive, with "" when there is no negative prompt.
        let negative = if params.guidance_scale > 0.0 {
            Some(self.encode_prompt(params.negative_prompt.as_deref().unwrap_or(""))?)
        } else {
            None
        };
        self.text_encoder.release();
        let (mut latents, sigmas) = self.start(params, init)?;
        let [_, c, h, w] = latents.dims();
        let steps = sigmas.len() - 1;
        for i in 0..steps {
            // diffusers: t = σ·1000, then the model time (1000 − t)/1000, in f32.
            let t = sigmas[i] * self.scheduler.num_train_timesteps as f32;
            let model_time = (1000.0 - t) / 1000.0;
            let x = latents.clone().reshape([c, h, w]);
            let pos = self
                .transformer
                .forward(x.clone(), model_time, caption.clone());
            let pred = match &negative {
                Some(neg) => {
                    let neg = self.transformer.forward(x, model_time, neg.clone());
                    pos.clone() + (pos - neg) * params.guidance_scale
                }
                None => pos,
            };
            // The model predicts x0 − noise: negated, it is the velocity the step expects.
            let velocity = pred.neg().reshape([1, c, h, w]);
            let (next, denoised) = euler_step(latents, velocity, sigmas[i], sigmas[i + 1]);
            latents = next;
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
        Ok(to_rgb(self.vae.forward(self.vae.unscale(latents))))
    }
}
