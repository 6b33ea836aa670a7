//! ComfyUI's folders as this server lays them out: `input/`, `output/` and `temp/` under one
//! root in the data directory, and the model files graphs may name: each manifest's files
//! under their file names, the files of `--models-dir` folders and LoRA directories under
//! their paths there.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde_json::{Map, Value};

use super::definitions::ComboLists;
use super::models::{GraphClip, GraphModel, GraphVae, SdxlClipFiles, T5Layout};
use super::nodes::Host;
use super::outputs::{SavedImage, save_images};
use crate::Error;
use crate::models::clip::Activation;
use crate::pipelines::{ComponentFile, Flow, SdxlPipeline, load_clip_file};
use crate::pipelines::{flux, sdxl, zimage};
use crate::registry::models_dir::{self, architecture_key};
use crate::registry::{Family, LoraLibrary, Manifest, Registry, Role};
use crate::sampling::comfy::ModelSampling;
use crate::text::Embeddings;
use crate::weights::LoraFile;
use std::sync::Arc;

#[derive(Clone)]
pub struct ComfyFolders {
    root: PathBuf,
    /// (ComfyUI name, a manifest whose checkpoint it is)
    checkpoints: Vec<(String, Manifest)>,
    /// Diffusion transformers: (ComfyUI name, (family, file)).
    diffusion_models: Vec<(String, (Family, ComponentFile))>,
    /// CLIP-L, T5 and Qwen3 files: (ComfyUI name, (role, file)).
    text_encoders: Vec<(String, (Role, ComponentFile))>,
    /// VAE files: (ComfyUI name, (latent channels, file)).
    vaes: Vec<(String, (usize, ComponentFile))>,
    /// (ComfyUI name, file)
    loras: Vec<(String, PathBuf)>,
    /// The models folders' `embeddings/`.
    embeddings: Arc<Embeddings>,
}

/// Adds `entry` under `name` unless the name is listed already: the first source of a name
/// wins (manifests come before models folders).
fn add<T>(list: &mut Vec<(String, T)>, name: String, entry: T) {
    if !list.iter().any(|(n, _)| *n == name) {
        list.push((name, entry));
    }
}

/// A manifest's file as loaders list it (by file name), with the manifest's table for it.
fn manifest_file(
    manifest: &Manifest,
    path: Option<&PathBuf>,
    role: Role,
    tokenizer: Option<&PathBuf>,
) -> Option<(String, ComponentFile)> {
    let path = manifest.resolve(path?);
    let name = path.file_name()?.to_string_lossy().into_owned();
    let file = ComponentFile {
        config: manifest.architecture(architecture_key(manifest.family, role)),
        tokenizer: tokenizer.map(|t| manifest.resolve(t)),
        path,
    };
    Some((name, file))
}

/// The image files ComfyUI's LoadImage lists (`folder_paths.filter_files_content_types`).
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

impl ComfyFolders {
    pub fn new(root: &Path, registry: &Registry, loras: &LoraLibrary) -> Result<Self, Error> {
        for kind in ["input", "output", "temp"] {
            std::fs::create_dir_all(root.join(kind))?;
        }
        let mut folders = Self {
            root: root.to_owned(),
            checkpoints: vec![],
            diffusion_models: vec![],
            text_encoders: vec![],
            vaes: vec![],
            loras: vec![],
            embeddings: Arc::new(Embeddings::new(registry.embeddings().to_vec())),
        };
        for m in registry.models().filter(|m| !m.from_models_dir) {
            let files = &m.files;
            if m.family == Family::Sdxl {
                if let Some(name) = files.checkpoint.as_ref().and_then(|p| p.file_name()) {
                    let name = name.to_string_lossy().into_owned();
                    add(&mut folders.checkpoints, name, m.clone());
                }
            } else {
                let role = Role::Transformer(m.family);
                if let Some((name, file)) = manifest_file(m, files.transformer.as_ref(), role, None)
                {
                    add(&mut folders.diffusion_models, name, (m.family, file));
                }
            }
            let channels = if m.family == Family::Sdxl { 4 } else { 16 };
            if let Some((name, file)) =
                manifest_file(m, files.vae.as_ref(), Role::Vae(channels), None)
            {
                add(&mut folders.vaes, name, (channels, file));
            }
            // Both SDXL encoders tokenize with CLIP-L's tokenizer, as in ComfyUI.
            for (path, role, tokenizer) in [
                (&files.clip_l, Role::ClipL, &files.tokenizer_clip_l),
                (&files.clip_g, Role::ClipG, &files.tokenizer_clip_l),
                (&files.t5, Role::T5, &files.tokenizer_t5),
                (&files.qwen3, Role::Qwen3, &files.tokenizer_qwen3),
            ] {
                if let Some((name, file)) =
                    manifest_file(m, path.as_ref(), role, tokenizer.as_ref())
                {
                    add(&mut folders.text_encoders, name, (role, file));
                }
            }
        }
        for f in registry.model_files() {
            let name = f.name.clone();
            let file = ComponentFile {
                path: f.path.clone(),
                config: f.config(),
                tokenizer: f.tokenizer(),
            };
            match f.role {
                Role::Checkpoint => add(
                    &mut folders.checkpoints,
                    name,
                    models_dir::checkpoint_manifest(f),
                ),
                Role::Transformer(family) => {
                    add(&mut folders.diffusion_models, name, (family, file))
                }
                Role::Vae(channels) => add(&mut folders.vaes, name, (channels, file)),
                role => add(&mut folders.text_encoders, name, (role, file)),
            }
        }
        for e in loras.entries().filter(|e| e.error.is_none()) {
            add(&mut folders.loras, e.name.clone(), e.path.clone());
        }
        Ok(folders)
    }

    /// The embedding names `/embeddings` lists.
    pub fn embedding_names(&self) -> Vec<String> {
        self.embeddings.names()
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
        fn names<T>(list: &[(String, T)]) -> Vec<String> {
            let mut names: Vec<String> = list.iter().map(|(n, _)| n.clone()).collect();
            names.sort();
            names
        }
        ComboLists {
            folders: vec![
                ("checkpoints".into(), names(&self.checkpoints)),
                ("diffusion_models".into(), names(&self.diffusion_models)),
                ("text_encoders".into(), names(&self.text_encoders)),
                ("vae".into(), names(&self.vaes)),
                ("loras".into(), names(&self.loras)),
            ],
            input_images: self.input_images(),
        }
    }
}

/// The entry listed as `name`, or "no such file" as a request error.
fn find<'a, T>(list: &'a [(String, T)], name: &str, what: &str) -> Result<&'a T, Error> {
    list.iter()
        .find(|(n, _)| n == name)
        .map(|(_, entry)| entry)
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
        let manifest = find(&self.folders.checkpoints, name, "checkpoint")?;
        SdxlPipeline::load(manifest, &self.device)
    }

    fn diffusion_model(&mut self, name: &str) -> Result<(GraphModel<B>, ModelSampling), Error> {
        let (family, file) = find(&self.folders.diffusion_models, name, "diffusion model")?;
        if *family == Family::ZImageTurbo {
            // supported_models.ZImage: ModelSamplingDiscreteFlow with shift 3.
            let transformer = zimage::load_transformer(file, &self.device)?;
            return Ok((
                GraphModel::ZImage(Arc::new(transformer)),
                ModelSampling::discrete_flow(3.0, 1.0),
            ));
        }
        let (denoiser, rope_axes) = flux::load_denoiser(file, *family, &self.device)?;
        // supported_models: Flux and Chroma shift by a fixed 1.15, schnell samples unshifted.
        let sampling = match family {
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
        let files: Vec<&(Role, ComponentFile)> = names
            .iter()
            .map(|name| find(&self.folders.text_encoders, name, "text encoder"))
            .collect::<Result<_, _>>()?;
        let of = |role: Role| files.iter().find(|(r, _)| *r == role).map(|(_, f)| f);
        if kind == "lumina2" {
            let file =
                of(Role::Qwen3).ok_or_else(|| Error::request("type lumina2 needs a Qwen3 file"))?;
            return Ok(GraphClip::Qwen3 {
                encoder: Arc::new(zimage::load_text_encoder(file, &self.device)?),
                device: self.device.clone(),
            });
        }
        if kind == "sdxl" {
            let (Some(l), Some(g)) = (of(Role::ClipL), of(Role::ClipG)) else {
                return Err(Error::request(
                    "type sdxl needs a CLIP-L file and a CLIP-G file",
                ));
            };
            let (tokenizer, clip_l) = load_clip_file(l, Activation::QuickGelu, &self.device)?;
            let (_, clip_g) = load_clip_file(g, Activation::Gelu, &self.device)?;
            return Ok(GraphClip::SdxlFiles {
                files: Arc::new(SdxlClipFiles {
                    tokenizer,
                    clip_l,
                    clip_g,
                    device: self.device.clone(),
                }),
                clip_layer: -2,
                embeddings: self.folders.embeddings.clone(),
            });
        }
        let (layout, wants_clip) = match kind {
            "flux" => (T5Layout::Flux, true),
            "chroma" => (T5Layout::Chroma, false),
            other => {
                return Err(Error::request(format!(
                    "text encoder type {other} is not supported in this build (sdxl, flux, \
                     chroma, lumina2)"
                )));
            }
        };
        let t5_file =
            of(Role::T5).ok_or_else(|| Error::request(format!("type {kind} needs a T5 file")))?;
        let clip_l = match (wants_clip, of(Role::ClipL)) {
            (true, Some(file)) => Some(Arc::new(load_clip_file(
                file,
                Activation::QuickGelu,
                &self.device,
            )?)),
            (true, None) => {
                return Err(Error::request(
                    "type flux needs a CLIP-L file and a T5 file",
                ));
            }
            (false, _) => None,
        };
        Ok(GraphClip::T5 {
            clip_l,
            t5: Arc::new(flux::load_t5(t5_file, &self.device)?),
            layout,
            padding: layout.padding(),
            embeddings: self.folders.embeddings.clone(),
            device: self.device.clone(),
        })
    }

    fn vae(&mut self, name: &str) -> Result<GraphVae<B>, Error> {
        let (channels, file) = find(&self.folders.vaes, name, "VAE")?;
        let (decoder, encoder) = match channels {
            4 => sdxl::load_vae(file, &self.device)?,
            _ => flux::load_vae(file, &self.device)?,
        };
        Ok(GraphVae {
            decoder,
            encoder,
            device: self.device.clone(),
        })
    }

    fn device(&self) -> B::Device {
        self.device.clone()
    }

    fn lora(&mut self, name: &str) -> Result<LoraFile, Error> {
        LoraFile::open(find(&self.folders.loras, name, "LoRA")?)
    }

    fn input_image(&mut self, name: &str) -> Result<image::DynamicImage, Error> {
        if !super::outputs::is_inside(name) {
            return Err(Error::request(format!("Invalid image file: {name}")));
        }
        let path = self.folders.root.join("input").join(name);
        image::open(&path).map_err(|e| Error::request(format!("cannot read {name}: {e}")))
    }

    fn embeddings(&self) -> Arc<Embeddings> {
        self.folders.embeddings.clone()
    }

    fn input_digest(&mut self, name: &str) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        if !super::outputs::is_inside(name) {
            return None;
        }
        let bytes = std::fs::read(self.folders.root.join("input").join(name)).ok()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        Some(hasher.finish())
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
