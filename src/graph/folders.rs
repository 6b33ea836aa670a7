//! ComfyUI's folders as this server lays them out: `input/`, `output/` and `temp/` under one
//! root in the data directory, and the model files graphs may name (each manifest's
//! checkpoint under its file name, each LoRA file under its file name).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde_json::{Map, Value};

use super::definitions::ComboLists;
use super::nodes::Host;
use super::outputs::{SavedImage, save_images};
use crate::Error;
use crate::pipelines::{Flow, SdxlPipeline};
use crate::registry::{Family, LoraLibrary, Registry};
use crate::weights::LoraFile;

pub struct ComfyFolders {
    root: PathBuf,
    /// (ComfyUI name, the manifest whose checkpoint it is)
    checkpoints: Vec<(String, crate::registry::Manifest)>,
    /// (ComfyUI name, file)
    loras: Vec<(String, PathBuf)>,
}

/// The image files ComfyUI's LoadImage lists (`folder_paths.filter_files_content_types`).
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

impl ComfyFolders {
    pub fn new(root: &Path, registry: &Registry, loras: &LoraLibrary) -> Result<Self, Error> {
        for kind in ["input", "output", "temp"] {
            std::fs::create_dir_all(root.join(kind))?;
        }
        let checkpoints = registry
            .models()
            .filter(|m| m.family == Family::Sdxl)
            .filter_map(|m| {
                let file = m.files.checkpoint.as_ref()?;
                let name = file.file_name()?.to_string_lossy().into_owned();
                Some((name, m.clone()))
            })
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

    pub fn combo_lists(&self) -> ComboLists {
        ComboLists {
            folders: vec![
                (
                    "checkpoints".into(),
                    self.checkpoints.iter().map(|(n, _)| n.clone()).collect(),
                ),
                (
                    "loras".into(),
                    self.loras.iter().map(|(n, _)| n.clone()).collect(),
                ),
            ],
            input_images: self.input_images(),
        }
    }
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
