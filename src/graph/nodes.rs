//! The node classes: what each computes from its inputs, over the pipelines' stages
//! (ComfyUI `nodes.py`; numbers in ../shared/reference/comfyui/SEMANTICS.md).

use std::collections::HashMap;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::TensorData;
use serde_json::{Map, Value, json};

use super::image::{to_uint8, vae_output_to_image};
use super::ksampler::{
    CondEntry, Guider, KSamplerSettings, NoiseSource, guide, ksample, ksampler_node_sigmas,
};
use super::models::{GraphClip, GraphModel, GraphVae, SdxlSize, T5Padding};
use super::outputs::SavedImage;
use super::resize::{Planes, UpscaleMethod, common_upscale, python_round};
use crate::Error;
use crate::pipelines::{Flow, SdxlPipeline};
use crate::sampling::comfy::{
    DiscreteSigmas, KSamplerName, ModelSampling, Prediction, SchedulerName, karras,
};
use crate::text::Embeddings;
use crate::weights::LoraFile;

/// The node classes this build runs (the others of ComfyUI are refused at validation as
/// unknown nodes).
pub const IMPLEMENTED: &[&str] = &[
    "CheckpointLoaderSimple",
    "UNETLoader",
    "CLIPLoader",
    "DualCLIPLoader",
    "VAELoader",
    "LoraLoader",
    "LoraLoaderModelOnly",
    "CLIPSetLastLayer",
    "CLIPTextEncode",
    "CLIPTextEncodeSDXL",
    "CLIPTextEncodeFlux",
    "T5TokenizerOptions",
    "FluxGuidance",
    "ConditioningZeroOut",
    "ConditioningCombine",
    "EmptyLatentImage",
    "EmptySD3LatentImage",
    "LatentUpscale",
    "LatentUpscaleBy",
    "ModelSamplingDiscrete",
    "ModelSamplingFlux",
    "ModelSamplingAuraFlow",
    "KSampler",
    "KSamplerAdvanced",
    "SamplerCustom",
    "SamplerCustomAdvanced",
    "KSamplerSelect",
    "BasicScheduler",
    "KarrasScheduler",
    "BasicGuider",
    "CFGGuider",
    "RandomNoise",
    "DisableNoise",
    "VAEDecode",
    "VAEEncode",
    "LoadImage",
    "ImageScale",
    "ImageScaleBy",
    "SaveImage",
    "PreviewImage",
    "SaveImageWebsocket",
];

/// ComfyUI's `IS_CHANGED`: a value that differs whenever the node's result may, beyond its
/// inputs: the time for SaveImageWebsocket (it always runs), the file's bytes for LoadImage
/// (an image uploaded again under its name is read again).
pub fn is_changed<B: Backend>(class: &str, inputs: &Value, host: &mut dyn Host<B>) -> Option<u64> {
    match class {
        "SaveImageWebsocket" => Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        ),
        "LoadImage" => host.input_digest(inputs.get("image")?.as_str()?),
        _ => None,
    }
}

/// A value on a link.
#[derive(Clone)]
pub enum NodeValue<B: Backend> {
    /// MODEL: the denoiser and how it maps σ.
    Model(Arc<GraphModel<B>>, Arc<ModelSampling>),
    /// CLIP: the text encoders.
    Clip(Arc<GraphClip<B>>),
    Vae(Arc<GraphVae<B>>),
    Conditioning(Arc<Vec<CondEntry<B>>>),
    /// LATENT in VAE space [B, C, h, w].
    Latent(Tensor<B, 4>),
    /// IMAGE [B, H, W, 3] in [0, 1].
    Image(Tensor<B, 4>),
    /// MASK [B, H, W].
    Mask(Tensor<B, 3>),
    Noise(NoiseSource),
    Guider(Arc<Guider<B>>),
    Sampler(KSamplerName),
    Sigmas(Arc<Vec<f32>>),
}

/// What the executor needs from the server around it.
pub trait Host<B: Backend> {
    /// A checkpoint by its ComfyUI name (`ckpt_name`).
    fn checkpoint(&mut self, name: &str) -> Result<SdxlPipeline<B>, Error>;
    /// A diffusion model file (`unet_name`) and its model sampling.
    fn diffusion_model(&mut self, name: &str) -> Result<(GraphModel<B>, ModelSampling), Error>;
    /// Text encoder files (`clip_name`, or `clip_name1` and `clip_name2`) as one CLIP value
    /// laid out for `kind` ("flux", "chroma").
    fn text_encoders(&mut self, names: &[String], kind: &str) -> Result<GraphClip<B>, Error>;
    /// A VAE file (`vae_name`).
    fn vae(&mut self, name: &str) -> Result<GraphVae<B>, Error>;
    /// A LoRA by its ComfyUI name (`lora_name`).
    fn lora(&mut self, name: &str) -> Result<LoraFile, Error>;
    /// An image of the input folder.
    fn input_image(&mut self, name: &str) -> Result<image::DynamicImage, Error>;
    /// A digest of an input folder file's bytes (`None` when it cannot be read).
    fn input_digest(&mut self, name: &str) -> Option<u64>;
    /// The textual-inversion embeddings prompts may name.
    fn embeddings(&self) -> Arc<Embeddings>;
    /// Writes images to the output ("output") or temp ("temp") folder.
    fn save_images(
        &mut self,
        kind: &'static str,
        prefix: &str,
        images: &[image::RgbImage],
        prompt: &Map<String, Value>,
    ) -> Result<Vec<SavedImage>, Error>;
    /// The nodes whose cached outputs this prompt reuses.
    fn cached(&mut self, nodes: &[String]);
    /// A node starts.
    fn executing(&mut self, node: &str);
    /// A node with UI output finished (or was cached).
    fn executed(&mut self, node: &str, ui: &Value);
    /// The device the networks run on.
    fn device(&self) -> B::Device;
    /// SaveImageWebsocket: image `value` of `max` as PNG bytes, for the prompt's socket.
    fn image_frame(&mut self, node: &str, value: usize, max: usize, png: Vec<u8>);
    /// A sampler step of `node`; `Flow::Cancel` interrupts the prompt.
    fn progress(&mut self, node: &str, value: usize, max: usize, denoised: &Tensor<B, 4>) -> Flow;
}

/// A node's results: its output values, and its UI output (output nodes).
pub struct NodeRun<B: Backend> {
    pub values: Vec<NodeValue<B>>,
    pub ui: Option<Value>,
}

impl<B: Backend> NodeRun<B> {
    fn values(values: Vec<NodeValue<B>>) -> Self {
        Self { values, ui: None }
    }
}

/// Literal and linked inputs of one node, typed as validation left them.
struct Inputs<'a, B: Backend> {
    links: HashMap<String, NodeValue<B>>,
    literals: &'a Map<String, Value>,
}

impl<B: Backend> Inputs<'_, B> {
    fn link(&self, name: &str) -> Result<&NodeValue<B>, Error> {
        self.links
            .get(name)
            .ok_or_else(|| Error::request(format!("input `{name}` must be linked")))
    }

    fn literal(&self, name: &str) -> Result<&Value, Error> {
        self.literals
            .get(name)
            .ok_or_else(|| Error::request(format!("input `{name}` is missing")))
    }

    fn string(&self, name: &str) -> Result<String, Error> {
        Ok(match self.literal(name)? {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// INT inputs: `int(val)` as validation checked it.
    fn int(&self, name: &str) -> Result<u64, Error> {
        self.integer(name, Value::as_u64, |f| f as u64)
    }

    /// INT inputs that may be negative.
    fn signed(&self, name: &str) -> Result<i64, Error> {
        self.integer(name, Value::as_i64, |f| f as i64)
    }

    /// An integer given as a JSON integer, a float (truncated) or a numeric string.
    fn integer<T: std::str::FromStr>(
        &self,
        name: &str,
        exact: fn(&Value) -> Option<T>,
        truncated: fn(f64) -> T,
    ) -> Result<T, Error> {
        let v = self.literal(name)?;
        exact(v)
            .or_else(|| v.as_f64().map(|f| truncated(f.trunc())))
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| Error::request(format!("input `{name}` is not an integer")))
    }

    /// The size the upscale nodes resize a `w`×`h` input to, with its crop: `scale_by` times
    /// the input (the `By` nodes), or `width`×`height` in pixels (each at least `min`; a 0
    /// side from the input's aspect) divided by `unit` (8 for latents). `None`: both sides
    /// 0, the input is passed on.
    fn resize_target(
        &self,
        by: bool,
        w: usize,
        h: usize,
        min: usize,
        unit: usize,
    ) -> Result<Option<(usize, usize, bool)>, Error> {
        if by {
            let by = self.float("scale_by")?;
            let side = |n: usize| python_round(n as f64 * by);
            return Ok(Some((side(w), side(h), false)));
        }
        let crop = self.string("crop")? == "center";
        let aspect = |given: usize, of: usize, other: usize| {
            python_round((of * given) as f64 / other as f64).max(min)
        };
        let size = match (self.int("width")? as usize, self.int("height")? as usize) {
            (0, 0) => return Ok(None),
            (0, height) => (aspect(height.max(min), w, h), height.max(min)),
            (width, 0) => (width.max(min), aspect(width.max(min), h, w)),
            (width, height) => (width.max(min), height.max(min)),
        };
        Ok(Some((size.0 / unit, size.1 / unit, crop)))
    }

    /// BOOLEAN inputs: Python's `bool(val)`, as validation coerces them.
    fn boolean(&self, name: &str) -> Result<bool, Error> {
        Ok(super::validate::python_truthy(self.literal(name)?))
    }

    fn float(&self, name: &str) -> Result<f64, Error> {
        let v = self.literal(name)?;
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| Error::request(format!("input `{name}` is not a number")))
    }

    fn model(&self, name: &str) -> Result<(Arc<GraphModel<B>>, Arc<ModelSampling>), Error> {
        match self.link(name)? {
            NodeValue::Model(p, ms) => Ok((p.clone(), ms.clone())),
            _ => Err(type_error(name, "MODEL")),
        }
    }

    fn clip(&self, name: &str) -> Result<Arc<GraphClip<B>>, Error> {
        match self.link(name)? {
            NodeValue::Clip(p) => Ok(p.clone()),
            _ => Err(type_error(name, "CLIP")),
        }
    }

    fn vae(&self, name: &str) -> Result<Arc<GraphVae<B>>, Error> {
        match self.link(name)? {
            NodeValue::Vae(p) => Ok(p.clone()),
            _ => Err(type_error(name, "VAE")),
        }
    }

    fn conditioning(&self, name: &str) -> Result<Arc<Vec<CondEntry<B>>>, Error> {
        match self.link(name)? {
            NodeValue::Conditioning(c) => Ok(c.clone()),
            _ => Err(type_error(name, "CONDITIONING")),
        }
    }

    fn latent(&self, name: &str) -> Result<Tensor<B, 4>, Error> {
        match self.link(name)? {
            NodeValue::Latent(l) => Ok(l.clone()),
            _ => Err(type_error(name, "LATENT")),
        }
    }

    fn noise(&self, name: &str) -> Result<NoiseSource, Error> {
        match self.link(name)? {
            NodeValue::Noise(n) => Ok(*n),
            _ => Err(type_error(name, "NOISE")),
        }
    }

    fn guider(&self, name: &str) -> Result<Arc<Guider<B>>, Error> {
        match self.link(name)? {
            NodeValue::Guider(g) => Ok(g.clone()),
            _ => Err(type_error(name, "GUIDER")),
        }
    }

    fn sampler(&self, name: &str) -> Result<KSamplerName, Error> {
        match self.link(name)? {
            NodeValue::Sampler(s) => Ok(*s),
            _ => Err(type_error(name, "SAMPLER")),
        }
    }

    fn sigmas(&self, name: &str) -> Result<Arc<Vec<f32>>, Error> {
        match self.link(name)? {
            NodeValue::Sigmas(s) => Ok(s.clone()),
            _ => Err(type_error(name, "SIGMAS")),
        }
    }

    fn sampler_name(&self, name: &str) -> Result<KSamplerName, Error> {
        KSamplerName::parse(&self.string(name)?)
            .ok_or_else(|| Error::request(format!("unknown sampler in `{name}`")))
    }

    fn scheduler_name(&self, name: &str) -> Result<SchedulerName, Error> {
        SchedulerName::parse(&self.string(name)?)
            .ok_or_else(|| Error::request(format!("unknown scheduler in `{name}`")))
    }

    fn image(&self, name: &str) -> Result<Tensor<B, 4>, Error> {
        match self.link(name)? {
            NodeValue::Image(i) => Ok(i.clone()),
            _ => Err(type_error(name, "IMAGE")),
        }
    }
}

fn type_error(name: &str, expected: &str) -> Error {
    Error::request(format!("input `{name}` is not a {expected}"))
}

/// Runs node `id` of class `class`.
pub fn run<B: Backend>(
    class: &str,
    id: &str,
    links: HashMap<String, NodeValue<B>>,
    literals: &Map<String, Value>,
    prompt: &Map<String, Value>,
    host: &mut dyn Host<B>,
) -> Result<NodeRun<B>, Error> {
    let inputs = Inputs { links, literals };
    Ok(match class {
        "CheckpointLoaderSimple" => {
            let pipeline = Arc::new(host.checkpoint(&inputs.string("ckpt_name")?)?);
            NodeRun::values(vec![
                NodeValue::Model(
                    Arc::new(GraphModel::Sdxl(pipeline.clone())),
                    Arc::new(ModelSampling::sdxl()),
                ),
                NodeValue::Clip(Arc::new(GraphClip::sdxl(
                    pipeline.clone(),
                    host.embeddings(),
                ))),
                NodeValue::Vae(Arc::new({
                    let (decoder, encoder) = pipeline.vae();
                    GraphVae {
                        decoder,
                        encoder,
                        device: pipeline.device().clone(),
                    }
                })),
            ])
        }
        "UNETLoader" => {
            let (model, sampling) = host.diffusion_model(&inputs.string("unet_name")?)?;
            NodeRun::values(vec![NodeValue::Model(Arc::new(model), Arc::new(sampling))])
        }
        "CLIPLoader" | "DualCLIPLoader" => {
            let names = if class == "CLIPLoader" {
                vec![inputs.string("clip_name")?]
            } else {
                vec![inputs.string("clip_name1")?, inputs.string("clip_name2")?]
            };
            let clip = host.text_encoders(&names, &inputs.string("type")?)?;
            NodeRun::values(vec![NodeValue::Clip(Arc::new(clip))])
        }
        "VAELoader" => {
            let vae = host.vae(&inputs.string("vae_name")?)?;
            NodeRun::values(vec![NodeValue::Vae(Arc::new(vae))])
        }
        "LoraLoader" => {
            let (model, sampling) = inputs.model("model")?;
            let clip = inputs.clip("clip")?;
            let (
                GraphModel::Sdxl(model),
                GraphClip::Sdxl {
                    pipeline: clip,
                    clip_layer,
                    embeddings,
                },
            ) = (&*model, &*clip)
            else {
                return Err(Error::request(
                    "LoraLoader applies LoRAs to SDXL models only in this build",
                ));
            };
            let file = host.lora(&inputs.string("lora_name")?)?;
            let strength_model = inputs.float("strength_model")? as f32;
            let strength_clip = inputs.float("strength_clip")? as f32;
            // `load_lora_for_models`: the UNet patched by strength_model, both text encoders
            // by strength_clip; the inputs stay as they were.
            let model = model.with_loras(&[(&file, strength_model)], &[])?;
            let clip = clip.with_loras(&[], &[(&file, strength_clip)])?;
            NodeRun::values(vec![
                NodeValue::Model(Arc::new(GraphModel::Sdxl(Arc::new(model))), sampling),
                NodeValue::Clip(Arc::new(GraphClip::Sdxl {
                    pipeline: Arc::new(clip),
                    clip_layer: *clip_layer,
                    embeddings: embeddings.clone(),
                })),
            ])
        }
        "LoraLoaderModelOnly" => {
            let (model, sampling) = inputs.model("model")?;
            let GraphModel::Sdxl(model) = &*model else {
                return Err(Error::request(
                    "LoraLoaderModelOnly applies LoRAs to SDXL models only in this build",
                ));
            };
            let file = host.lora(&inputs.string("lora_name")?)?;
            let strength = inputs.float("strength_model")? as f32;
            let model = model.with_loras(&[(&file, strength)], &[])?;
            NodeRun::values(vec![NodeValue::Model(
                Arc::new(GraphModel::Sdxl(Arc::new(model))),
                sampling,
            )])
        }
        "CLIPSetLastLayer" => {
            let layer = inputs.signed("stop_at_clip_layer")?;
            let clip = inputs.clip("clip")?.with_clip_layer(layer)?;
            NodeRun::values(vec![NodeValue::Clip(Arc::new(clip))])
        }
        "T5TokenizerOptions" => {
            let padding = T5Padding {
                min_padding: inputs.int("min_padding")? as usize,
                min_length: inputs.int("min_length")? as usize,
            };
            let clip = inputs.clip("clip")?.with_t5_padding(padding);
            NodeRun::values(vec![NodeValue::Clip(Arc::new(clip))])
        }
        "CLIPTextEncode" => {
            let entry = inputs.clip("clip")?.encode(&inputs.string("text")?)?;
            NodeRun::values(vec![NodeValue::Conditioning(Arc::new(vec![entry]))])
        }
        "CLIPTextEncodeSDXL" => {
            let size = |name: &str| Ok::<_, Error>(inputs.int(name)? as f32);
            let size = SdxlSize {
                width: size("width")?,
                height: size("height")?,
                crop_w: size("crop_w")?,
                crop_h: size("crop_h")?,
                target_width: size("target_width")?,
                target_height: size("target_height")?,
            };
            let entry = inputs.clip("clip")?.encode_sdxl(
                &inputs.string("text_l")?,
                &inputs.string("text_g")?,
                Some(size),
            )?;
            NodeRun::values(vec![NodeValue::Conditioning(Arc::new(vec![entry]))])
        }
        "CLIPTextEncodeFlux" => {
            let entry = inputs.clip("clip")?.encode_flux(
                &inputs.string("clip_l")?,
                &inputs.string("t5xxl")?,
                Some(inputs.float("guidance")? as f32),
            )?;
            NodeRun::values(vec![NodeValue::Conditioning(Arc::new(vec![entry]))])
        }
        // `conditioning_set_values(cond, {"guidance": g})`.
        "FluxGuidance" => {
            let guidance = inputs.float("guidance")? as f32;
            let entries = inputs
                .conditioning("conditioning")?
                .iter()
                .cloned()
                .map(|mut e| {
                    e.guidance = Some(guidance);
                    e
                })
                .collect();
            NodeRun::values(vec![NodeValue::Conditioning(Arc::new(entries))])
        }
        // Zeros in place of the states and the pooled vector; other keys kept.
        "ConditioningZeroOut" => {
            let entries = inputs
                .conditioning("conditioning")?
                .iter()
                .map(|e| CondEntry {
                    context: e.context.zeros_like(),
                    pooled: e.pooled.as_ref().map(|p| p.zeros_like()),
                    ..e.clone()
                })
                .collect();
            NodeRun::values(vec![NodeValue::Conditioning(Arc::new(entries))])
        }
        // List concatenation: the sampler averages the entries' predictions.
        "ConditioningCombine" => {
            let mut entries = inputs.conditioning("conditioning_1")?.to_vec();
            entries.extend(inputs.conditioning("conditioning_2")?.iter().cloned());
            NodeRun::values(vec![NodeValue::Conditioning(Arc::new(entries))])
        }
        // `ModelSamplingDiscrete.patch`: the linear table (zero terminal SNR when `zsnr`)
        // with the chosen prediction.
        "ModelSamplingDiscrete" => {
            let (model, _) = inputs.model("model")?;
            if !matches!(&*model, GraphModel::Sdxl(_)) {
                return Err(Error::request(
                    "ModelSamplingDiscrete applies to SDXL models only in this build",
                ));
            }
            let prediction = match inputs.string("sampling")?.as_str() {
                "eps" => Prediction::Eps,
                "v_prediction" => Prediction::V,
                other => {
                    return Err(Error::request(format!(
                        "ModelSamplingDiscrete sampling {other} is not supported in this build \
                         (eps, v_prediction)"
                    )));
                }
            };
            let table = DiscreteSigmas::linear(inputs.boolean("zsnr")?);
            NodeRun::values(vec![NodeValue::Model(
                model,
                Arc::new(ModelSampling::Discrete(table, prediction)),
            )])
        }
        // `common_upscale` of the latent: by a factor, or to a size in pixels (at least 64,
        // a 0 side keeping the aspect).
        "LatentUpscale" | "LatentUpscaleBy" => {
            let latent = inputs.latent("samples")?;
            let [_, _, h, w] = latent.dims();
            let latent = match inputs.resize_target(class == "LatentUpscaleBy", w, h, 64, 8)? {
                Some((width, height, crop)) => resize(latent, width, height, &inputs, crop)?,
                None => latent,
            };
            NodeRun::values(vec![NodeValue::Latent(latent)])
        }
        "ModelSamplingFlux" => {
            let (model, _) = inputs.model("model")?;
            let mu = ModelSampling::flux_mu(
                inputs.float("max_shift")?,
                inputs.float("base_shift")?,
                inputs.float("width")?,
                inputs.float("height")?,
            );
            NodeRun::values(vec![NodeValue::Model(
                model,
                Arc::new(ModelSampling::flux(mu)),
            )])
        }
        // zeros [B, 4 | 16, H/8, W/8] on the intermediate device.
        "EmptyLatentImage" | "EmptySD3LatentImage" => {
            let (w, h) = (
                inputs.int("width")? as usize,
                inputs.int("height")? as usize,
            );
            let batch = inputs.int("batch_size")? as usize;
            let channels = if class == "EmptyLatentImage" { 4 } else { 16 };
            let device = Default::default();
            NodeRun::values(vec![NodeValue::Latent(Tensor::zeros(
                [batch, channels, h / 8, w / 8],
                &device,
            ))])
        }
        // `ModelSamplingSD3.patch(shift, multiplier=1.0)`: a discrete flow table.
        "ModelSamplingAuraFlow" => {
            let (model, _) = inputs.model("model")?;
            let shift = inputs.float("shift")?;
            NodeRun::values(vec![NodeValue::Model(
                model,
                Arc::new(ModelSampling::discrete_flow(shift, 1.0)),
            )])
        }
        "KSampler" => {
            let (model, sampling) = inputs.model("model")?;
            let settings = KSamplerSettings {
                seed: inputs.int("seed")?,
                steps: inputs.int("steps")? as usize,
                cfg: inputs.float("cfg")?,
                sampler: inputs.sampler_name("sampler_name")?,
                scheduler: inputs.scheduler_name("scheduler")?,
                denoise: inputs.float("denoise")?,
            };
            let positive = inputs.conditioning("positive")?;
            let negative = inputs.conditioning("negative")?;
            let latent = inputs.latent("latent_image")?.to_device(&host.device());
            let out = ksample(
                &model,
                &sampling,
                &settings,
                &positive,
                &negative,
                latent,
                &mut |step| host.progress(id, step.index + 1, step.total, step.denoised),
            )?;
            NodeRun::values(vec![NodeValue::Latent(out)])
        }
        // `common_ksampler` with start/end steps: the full schedule, cut to
        // [start_at_step, end_at_step]; the last σ forced to 0 unless the leftover noise is
        // returned; no noise added when `add_noise` is off.
        "KSamplerAdvanced" => {
            let (model, sampling) = inputs.model("model")?;
            let seed = inputs.int("noise_seed")?;
            let settings = KSamplerSettings {
                seed,
                steps: inputs.int("steps")? as usize,
                cfg: inputs.float("cfg")?,
                sampler: inputs.sampler_name("sampler_name")?,
                scheduler: inputs.scheduler_name("scheduler")?,
                denoise: 1.0,
            };
            let mut sigmas = ksampler_node_sigmas(&sampling, &settings)?;
            let (start, end) = (
                inputs.int("start_at_step")? as usize,
                inputs.int("end_at_step")? as usize,
            );
            if end + 1 < sigmas.len() {
                sigmas.truncate(end + 1);
                if inputs.string("return_with_leftover_noise")? == "disable" {
                    *sigmas.last_mut().expect("non-empty") = 0.0;
                }
            }
            let latent = inputs.latent("latent_image")?.to_device(&host.device());
            if start + 1 >= sigmas.len() {
                return Ok(NodeRun::values(vec![NodeValue::Latent(latent)]));
            }
            let sigmas = sigmas[start..].to_vec();
            let noise = match inputs.string("add_noise")?.as_str() {
                "disable" => NoiseSource::Disabled,
                _ => NoiseSource::Random(seed),
            };
            let positive = inputs.conditioning("positive")?;
            let negative = inputs.conditioning("negative")?;
            let sampled = guide(
                &model,
                &sampling,
                &positive,
                Some(&negative),
                settings.cfg,
                settings.sampler,
                &sigmas,
                noise,
                seed,
                latent,
                &mut |step| host.progress(id, step.index + 1, step.total, step.denoised),
            )?;
            NodeRun::values(vec![NodeValue::Latent(sampled.samples)])
        }
        "KSamplerSelect" => NodeRun::values(vec![NodeValue::Sampler(
            inputs.sampler_name("sampler_name")?,
        )]),
        // `calculate_sigmas` for int(steps / denoise) steps, the last steps + 1 kept (no σ
        // dropped for dpm_2 / uni_pc, unlike KSampler).
        "BasicScheduler" => {
            let (_, sampling) = inputs.model("model")?;
            let scheduler = inputs.scheduler_name("scheduler")?;
            let steps = inputs.int("steps")? as usize;
            let denoise = inputs.float("denoise")?;
            let sigmas = if denoise >= 1.0 {
                scheduler.sigmas(&sampling, steps)
            } else if denoise <= 0.0 {
                vec![]
            } else {
                let all = scheduler.sigmas(&sampling, (steps as f64 / denoise) as usize);
                all[all.len().saturating_sub(steps + 1)..].to_vec()
            };
            NodeRun::values(vec![NodeValue::Sigmas(Arc::new(sigmas))])
        }
        "KarrasScheduler" => {
            let sigmas = karras(
                inputs.int("steps")? as usize,
                inputs.float("sigma_min")?,
                inputs.float("sigma_max")?,
                inputs.float("rho")?,
            );
            NodeRun::values(vec![NodeValue::Sigmas(Arc::new(sigmas))])
        }
        "RandomNoise" => NodeRun::values(vec![NodeValue::Noise(NoiseSource::Random(
            inputs.int("noise_seed")?,
        ))]),
        "DisableNoise" => NodeRun::values(vec![NodeValue::Noise(NoiseSource::Disabled)]),
        "BasicGuider" | "CFGGuider" => {
            let (model, sampling) = inputs.model("model")?;
            let guider = if class == "BasicGuider" {
                Guider {
                    model,
                    sampling,
                    positive: inputs.conditioning("conditioning")?,
                    negative: None,
                    cfg: 1.0,
                }
            } else {
                Guider {
                    model,
                    sampling,
                    positive: inputs.conditioning("positive")?,
                    negative: Some(inputs.conditioning("negative")?),
                    cfg: inputs.float("cfg")?,
                }
            };
            NodeRun::values(vec![NodeValue::Guider(Arc::new(guider))])
        }
        "SamplerCustom" | "SamplerCustomAdvanced" => {
            let (guider, noise, seed) = if class == "SamplerCustomAdvanced" {
                let noise = inputs.noise("noise")?;
                let seed = match noise {
                    NoiseSource::Random(seed) => seed,
                    NoiseSource::Disabled => 0,
                };
                (inputs.guider("guider")?, noise, seed)
            } else {
                let (model, sampling) = inputs.model("model")?;
                let seed = inputs.int("noise_seed")?;
                let add_noise = inputs.boolean("add_noise")?;
                let guider = Guider {
                    model,
                    sampling,
                    positive: inputs.conditioning("positive")?,
                    negative: Some(inputs.conditioning("negative")?),
                    cfg: inputs.float("cfg")?,
                };
                let noise = if add_noise {
                    NoiseSource::Random(seed)
                } else {
                    NoiseSource::Disabled
                };
                (Arc::new(guider), noise, seed)
            };
            let latent = inputs.latent("latent_image")?.to_device(&host.device());
            let sampled = guide(
                &guider.model,
                &guider.sampling,
                &guider.positive,
                guider.negative.as_deref().map(|n| &n[..]),
                guider.cfg,
                inputs.sampler("sampler")?,
                &inputs.sigmas("sigmas")?,
                noise,
                seed,
                latent,
                &mut |step| host.progress(id, step.index + 1, step.total, step.denoised),
            )?;
            NodeRun::values(vec![
                NodeValue::Latent(sampled.samples),
                NodeValue::Latent(sampled.denoised),
            ])
        }
        "VAEDecode" => {
            let vae = inputs.vae("vae")?;
            let samples = inputs.latent("samples")?.to_device(&vae.device);
            NodeRun::values(vec![NodeValue::Image(vae_output_to_image(
                vae.decode_raw(samples),
            ))])
        }
        "VAEEncode" => {
            let vae = inputs.vae("vae")?;
            let pixels = crop_to_multiple(inputs.image("pixels")?, 8).to_device(&vae.device);
            let encoded = vae.encode_image(pixels.permute([0, 3, 1, 2]) * 2.0 - 1.0);
            NodeRun::values(vec![NodeValue::Latent(encoded)])
        }
        "LoadImage" => {
            let (image, mask) = load_image::<B>(&host.input_image(&inputs.string("image")?)?);
            NodeRun::values(vec![NodeValue::Image(image), NodeValue::Mask(mask)])
        }
        // `common_upscale` of [B, 3, H, W]: by a factor, or to a size (a 0 side keeping the
        // aspect).
        "ImageScale" | "ImageScaleBy" => {
            let image = inputs.image("image")?;
            let [_, h, w, _] = image.dims();
            let image = match inputs.resize_target(class == "ImageScaleBy", w, h, 1, 1)? {
                Some((width, height, crop)) => {
                    resize(image.permute([0, 3, 1, 2]), width, height, &inputs, crop)?
                        .permute([0, 2, 3, 1])
                }
                None => image,
            };
            NodeRun::values(vec![NodeValue::Image(image)])
        }
        "SaveImage" | "PreviewImage" => {
            let images = to_rgb_images(inputs.image("images")?);
            let saved = if class == "SaveImage" {
                host.save_images(
                    "output",
                    &inputs.string("filename_prefix")?,
                    &images,
                    prompt,
                )?
            } else {
                host.save_images("temp", &temp_prefix(), &images, prompt)?
            };
            let list: Vec<Value> = saved.iter().map(SavedImage::to_json).collect();
            NodeRun {
                values: vec![],
                ui: Some(json!({ "images": list })),
            }
        }
        // The example custom node some clients use: each image as a binary PNG frame
        // (`custom_nodes/websocket_image_save.py`), nothing written to disk.
        "SaveImageWebsocket" => {
            let images = to_rgb_images(inputs.image("images")?);
            for (i, image) in images.iter().enumerate() {
                let mut png = Vec::new();
                crate::output::png::encode_png_with_text(image, &[], &mut png)?;
                host.image_frame(id, i, images.len(), png);
            }
            NodeRun {
                values: vec![],
                ui: None,
            }
        }
        other => return Err(Error::request(format!("node {other} is not supported"))),
    })
}

/// `common_upscale(t, width, height, upscale_method, crop)` on [N, C, H, W], on `t`'s device.
fn resize<B: Backend>(
    t: Tensor<B, 4>,
    width: usize,
    height: usize,
    inputs: &Inputs<B>,
    crop_center: bool,
) -> Result<Tensor<B, 4>, Error> {
    let method = UpscaleMethod::parse(&inputs.string("upscale_method")?)
        .ok_or_else(|| Error::request("unknown upscale_method"))?;
    let device = t.device();
    let shape = t.dims();
    let planes = Planes {
        data: t.into_data().convert::<f32>().to_vec().expect("f32 data"),
        shape,
    };
    let out = common_upscale(&planes, width, height, method, crop_center)?;
    Ok(Tensor::from_data(
        TensorData::new(out.data, out.shape),
        &device,
    ))
}

/// `vae_encode_crop_pixels`: the centred region whose sides are multiples of `multiple`.
fn crop_to_multiple<B: Backend>(image: Tensor<B, 4>, multiple: usize) -> Tensor<B, 4> {
    let [b, h, w, c] = image.dims();
    let (nh, nw) = ((h / multiple) * multiple, (w / multiple) * multiple);
    if (nh, nw) == (h, w) {
        return image;
    }
    let (oy, ox) = ((h % multiple) / 2, (w % multiple) / 2);
    image.slice([0..b, oy..oy + nh, ox..ox + nw, 0..c])
}

/// LoadImage: RGB / 255 as [1, H, W, 3]; the mask is 1 − alpha / 255, or 64×64 zeros when
/// the image has no alpha (ComfyUI `LoadImage.load_image`).
fn load_image<B: Backend>(image: &image::DynamicImage) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let device = Default::default();
    let rgb = image.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let pixels: Vec<f32> = rgb.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
    let tensor = Tensor::from_data(TensorData::new(pixels, [1, h, w, 3]), &device);
    let mask = if image.color().has_alpha() {
        let alpha: Vec<f32> = image
            .to_rgba8()
            .pixels()
            .map(|p| 1.0 - p[3] as f32 / 255.0)
            .collect();
        Tensor::from_data(TensorData::new(alpha, [1, h, w]), &device)
    } else {
        Tensor::zeros([1, 64, 64], &device)
    };
    (tensor, mask)
}

/// IMAGE [B, H, W, 3] → one 8-bit image per batch row, truncated as SaveImage does.
fn to_rgb_images<B: Backend>(images: Tensor<B, 4>) -> Vec<image::RgbImage> {
    let [b, h, w, _] = images.dims();
    let values: Vec<f32> = images
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 data");
    values
        .chunks(h * w * 3)
        .take(b)
        .map(|row| {
            let bytes = row.iter().map(|&v| to_uint8(v)).collect();
            image::RgbImage::from_raw(w as u32, h as u32, bytes).expect("w·h·3 bytes")
        })
        .collect()
}

/// PreviewImage's prefix: `ComfyUI_temp_` and five random lowercase letters.
fn temp_prefix() -> String {
    use std::hash::{BuildHasher, RandomState};
    let mut bits = RandomState::new().hash_one(std::time::Instant::now());
    let letters: String = (0..5)
        .map(|_| {
            let c = (b'a' + (bits % 26) as u8) as char;
            bits /= 26;
            c
        })
        .collect();
    format!("ComfyUI_temp_{letters}")
}
