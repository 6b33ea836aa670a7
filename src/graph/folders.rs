//! ComfyUI's folders as this server lays them out: `input/`, `output/` and `temp/` under one
//! root in the data directory, and the model files graphs may name (each manifest's
//! checkpoint under its file name, each LoRA file under its file name).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde_json::{Map, Value};

use super::definitions::ComboLists;
use super::models::{GraphClip, GraphModel, GraphVae, T5Layout};
use super::nodes::Host;
use super::outputs::{SavedImage, save_images};
use crate::Error;
use crate::pipelines::{Flow, SdxlPipeline};
use crate::pipelines::{flux, zimage};
use crate::registry::{Family, LoraLibrary, Manifest, Registry};
use crate::sampling::comfy::ModelSampling;
use crate::weights::LoraFile;
use std::sync::Arc;

#[derive(Clone)]
pub struct ComfyFolders {
    root: PathBuf,
    /// (ComfyUI name, the manifest whose checkpoint it is)
    checkpoints: Vec<(String, Manifest)>,
    /// Flux-family transformers: (ComfyUI name, their manifest).
    diffusion_models: Vec<(String, Manifest)>,
    /// CLIP-L and T5 files: (ComfyUI name, role, a manifest naming the file).
    text_encoders: Vec<(String, TextEncoderRole, Manifest)>,
    /// VAE files of Flux-family manifests.
    vaes: Vec<(String, Manifest)>,
    /// (ComfyUI name, file)
    loras: Vec<(String, PathBuf)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TextEncoderRole {
    ClipL,
    T5,
    Qwen3,
}

/// A file's name as a loader lists it; the first manifest naming a file wins.
fn add_file<T>(list: &mut Vec<(String, T)>, path: Option<&PathBuf>, value: T) {
    if let Some(name) = path
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        && !list.iter().any(|(n, _)| *n == name)
    {
        list.push((name, value));
    }
}

/// The image files ComfyUI's LoadImage lists (`folder_paths.filter_files_content_types`).
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

impl ComfyFolders {
    pub fn new(root: &Path, registry: &Registry, loras: &LoraLibrary) -> Result<Self, Error> {
        for kind in ["input", "output", "temp"] {
            std::fs::create_dir_all(root.join(kind))?;
        }
        let (mut checkpoints, mut diffusion_models, mut vaes) = (vec![], vec![], vec![]);
        let mut encoders: Vec<(String, (TextEncoderRole, Manifest))> = vec![];
        for m in registry.models() {
            let files = &m.files;
            match m.family {
                Family::Sdxl => add_file(&mut checkpoints, files.checkpoint.as_ref(), m.clone()),
                Family::FluxDev | Family::FluxSchnell | Family::Chroma => {
                    add_file(&mut diffusion_models, files.transformer.as_ref(), m.clone());
                    add_file(&mut vaes, files.vae.as_ref(), m.clone());
                    add_file(
                        &mut encoders,
                        files.clip_l.as_ref(),
                        (TextEncoderRole::ClipL, m.clone()),
                    );
                    add_file(
                        &mut encoders,
                        files.t5.as_ref(),
                        (TextEncoderRole::T5, m.clone()),
                    );
                }
                Family::ZImageTurbo => {
                    add_file(&mut diffusion_models, files.transformer.as_ref(), m.clone());
                    add_file(&mut vaes, files.vae.as_ref(), m.clone());
                    add_file(
                        &mut encoders,
                        files.qwen3.as_ref(),
                        (TextEncoderRole::Qwen3, m.clone()),
                    );
                }
            }
        }
        let text_encoders = encoders
            .into_iter()
            .map(|(name, (role, m))| (name, role, m))
            .collect();
        let loras = loras
            .entries()
            .filter(|e| e.error.is_none())
            .filter_map(|e| {
                let name = e.path.file_name()?.to_string_lossy().into_owned();
                Some((name, e.path.clone()))
            })
            .collect();
        Ok(Self {
            root: root.to_owned(),
            checkpoints,
            diffusion_models,
            text_encoders,
            vaes,
            loras,
        })
    }

    /// The folder holding input/, output/ and temp/.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of a ComfyUI file `type` ("input", "output", "temp").
    pub fn dir(&self, kind: &str) -> Option<PathBuf> {
        matches!(kind, "input" | "output" | "temp").then(|| self.root.join(kind))
    }

    /// The input folder's images, sorted (LoadImage's list).
    pub fn input_images(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join("input"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.rsplit_once('.').is_some_and(|(_, ext)| {
                    IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
                })
            })
            .collect();
        names.sort();
        names
    }

    /// Each loader's file list, sorted as `folder_paths.get_filename_list` sorts.
    pub fn combo_lists(&self) -> ComboLists {
        let sorted = |names: Vec<String>| {
            let mut names = names;
            names.sort();
            names
        };
        let names =
            |list: &[(String, Manifest)]| sorted(list.iter().map(|(n, _)| n.clone()).collect());
        ComboLists {
            folders: vec![
                ("checkpoints".into(), names(&self.checkpoints)),
                ("diffusion_models".into(), names(&self.diffusion_models)),
                (
                    "text_encoders".into(),
                    sorted(self.text_encoders.iter().map(|(n, ..)| n.clone()).collect()),
                ),
                ("vae".into(), names(&self.vaes)),
                (
                    "loras".into(),
                    sorted(self.loras.iter().map(|(n, _)| n.clone()).collect()),
                ),
            ],
            input_images: self.input_images(),
        }
    }
}

fn find<'a>(list: &'a [(String, Manifest)], name: &str, what: &str) -> Result<&'a Manifest, Error> {
    list.iter()
        .find(|(n, _)| n == name)
        .map(|(_, m)| m)
        .ok_or_else(|| Error::request(format!("no {what} named {name}")))
}

/// What a running prompt tells the world.
pub enum GraphEvent<'a, B: Backend> {
    Cached(&'a [String]),
    Executing(&'a str),
    Executed(&'a str, &'a Value),
    /// An image for the prompt's socket (SaveImageWebsocket).
    ImageFrame {
        node: &'a str,
        value: usize,
        max: usize,
        png: Vec<u8>,
    },
    Progress {
        node: &'a str,
        value: usize,
        max: usize,
        denoised: &'a Tensor<B, 4>,
    },
}

/// The executor's [`Host`] over [`ComfyFolders`], loading networks onto `device`.
pub struct FolderHost<'a, B: Backend> {
    pub folders: &'a ComfyFolders,
    pub device: B::Device,
    pub on_event: &'a mut dyn FnMut(GraphEvent<B>) -> Flow,
}

impl<B: Backend> Host<B> for FolderHost<'_, B> {
    fn checkpoint(&mut self, name: &str) -> Result<SdxlPipeline<B>, Error> {
        let manifest = self
            .folders
            .checkpoints
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
            .ok_or_else(|| Error::request(format!("no checkpoint named {name}")))?;
        SdxlPipeline::load(manifest, &self.device)
    }

    fn diffusion_model(&mut self, name: &str) -> Result<(GraphModel<B>, ModelSampling), Error> {
        let manifest = find(&self.folders.diffusion_models, name, "diffusion model")?;
        if manifest.family == Family::ZImageTurbo {
            // supported_models.ZImage: ModelSamplingDiscreteFlow with shift 3.
            let transformer = zimage::load_transformer(manifest, &self.device)?;
            return Ok((
                GraphModel::ZImage(Arc::new(transformer)),
                ModelSampling::discrete_flow(3.0, 1.0),
            ));
        }
        let (denoiser, rope_axes) = flux::load_denoiser(manifest, &self.device)?;
        // supported_models: Flux and Chroma shift by a fixed 1.15, schnell samples unshifted.
        let sampling = match manifest.family {
            Family::FluxSchnell => ModelSampling::discrete_flow(1.0, 1.0),
            _ => ModelSampling::flux(1.15),
        };
        Ok((
            GraphModel::Flux {
                denoiser: Arc::new(denoiser),
                rope_axes,
            },
            sampling,
        ))
    }

    fn text_encoders(&mut self, names: &[String], kind: &str) -> Result<GraphClip<B>, Error> {
        let files: Vec<(TextEncoderRole, &Manifest)> = names
            .iter()
            .map(|name| {
                self.folders
                    .text_encoders
                    .iter()
                    .find(|(n, ..)| n == name)
                    .map(|(_, role, m)| (*role, m))
                    .ok_or_else(|| Error::request(format!("no text encoder named {name}")))
            })
            .collect::<Result<_, _>>()?;
        let of = |role: TextEncoderRole| files.iter().find(|(r, _)| *r == role).map(|(_, m)| *m);
        if kind == "lumina2" {
            let manifest = of(TextEncoderRole::Qwen3)
                .ok_or_else(|| Error::request("type lumina2 needs a Qwen3 file"))?;
            let (tokenizer, encoder) = zimage::load_text_encoder(manifest, &self.device)?;
            return Ok(GraphClip::Qwen3 {
                tokenizer,
                encoder,
                device: self.device.clone(),
            });
        }
        let (layout, wants_clip) = match kind {
            "flux" => (T5Layout::Flux, true),
            "chroma" => (T5Layout::Chroma, false),
            other => {
                return Err(Error::request(format!(
                    "text encoder type {other} is not supported in this build (flux, chroma, \
                     lumina2)"
                )));
            }
        };
        let t5_manifest = of(TextEncoderRole::T5)
            .ok_or_else(|| Error::request(format!("type {kind} needs a T5 file")))?;
        let clip_l = match (wants_clip, of(TextEncoderRole::ClipL)) {
            (true, Some(m)) => Some(flux::load_clip_l(m, &self.device)?),
            (true, None) => {
                return Err(Error::request(
                    "type flux needs a CLIP-L file and a T5 file",
                ));
            }
            (false, _) => None,
        };
        let (tokenizer, t5) = flux::load_t5(t5_manifest, &self.device)?;
        Ok(GraphClip::T5 {
            clip_l,
            tokenizer,
            t5,
            layout,
            device: self.device.clone(),
        })
    }

    fn vae(&mut self, name: &str) -> Result<GraphVae<B>, Error> {
        let manifest = find(&self.folders.vaes, name, "VAE")?;
        let (decoder, encoder) = match manifest.family {
            Family::ZImageTurbo => zimage::load_vae(manifest, &self.device)?,
            _ => flux::load_vae(manifest, &self.device)?,
        };
        Ok(GraphVae::Flux {
            decoder,
            encoder,
            device: self.device.clone(),
        })
    }

    fn device(&self) -> B::Device {
        self.device.clone()
    }

    fn lora(&mut self, name: &str) -> Result<LoraFile, Error> {
        let path = self
            .folders
            .loras
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
            .ok_or_else(|| Error::request(format!("no LoRA named {name}")))?;
        LoraFile::open(path)
    }

    fn input_image(&mut self, name: &str) -> Result<image::DynamicImage, Error> {
        if !super::outputs::is_inside(name) {
            return Err(Error::request(format!("Invalid image file: {name}")));
        }
        let path = self.folders.root.join("input").join(name);
        image::open(&path).map_err(|e| Error::request(format!("cannot read {name}: {e}")))
    }

    fn save_images(
        &mut self,
        kind: &'static str,
        prefix: &str,
        images: &[image::RgbImage],
        prompt: &Map<String, Value>,
    ) -> Result<Vec<SavedImage>, Error> {
        let dir = self.folders.root.join(kind);
        let prompt = Value::Object(prompt.clone());
        save_images(&dir, kind, prefix, images, Some(&prompt), None)
    }

    fn cached(&mut self, nodes: &[String]) {
        (self.on_event)(GraphEvent::Cached(nodes));
    }

    fn executing(&mut self, node: &str) {
        (self.on_event)(GraphEvent::Executing(node));
    }

    fn executed(&mut self, node: &str, ui: &Value) {
        (self.on_event)(GraphEvent::Executed(node, ui));
    }

    fn image_frame(&mut self, node: &str, value: usize, max: usize, png: Vec<u8>) {
        (self.on_event)(GraphEvent::ImageFrame {
            node,
            value,
            max,
            png,
        });
    }

    fn progress(&mut self, node: &str, value: usize, max: usize, denoised: &Tensor<B, 4>) -> Flow {
        (self.on_event)(GraphEvent::Progress {
            node,
            value,
            max,
            denoised,
        })
    }
}
