//! Model manifests (contract: ../shared/design.md): one TOML file per model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Sdxl,
    FluxDev,
    FluxSchnell,
    Chroma,
    ZImageTurbo,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Sdxl => "sdxl",
            Family::FluxDev => "flux-dev",
            Family::FluxSchnell => "flux-schnell",
            Family::Chroma => "chroma",
            Family::ZImageTurbo => "z-image-turbo",
        }
    }
}

/// `[files]`: a single-file checkpoint, a diffusers folder, or per-component files. Paths are
/// relative to the manifest's directory unless absolute.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFiles {
    pub checkpoint: Option<PathBuf>,
    pub diffusers: Option<PathBuf>,
    pub transformer: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub clip_l: Option<PathBuf>,
    pub clip_g: Option<PathBuf>,
    pub t5: Option<PathBuf>,
    pub qwen3: Option<PathBuf>,
    pub tokenizer_clip_l: Option<PathBuf>,
    pub tokenizer_clip_g: Option<PathBuf>,
    pub tokenizer_t5: Option<PathBuf>,
    pub tokenizer_qwen3: Option<PathBuf>,
}

/// `[defaults]`: what a request that leaves a field out gets.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDefaults {
    pub steps: Option<usize>,
    pub guidance_scale: Option<f32>,
    pub sampler: Option<String>,
    pub scheduler: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
}

/// `[catalog]`: what the gateway's model listing and chat requests read. A chat request that
/// asks for a style (anime, realistic) gets a model whose category or tags name it.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// The kind of images the model makes: `anime`, `realistic`, `general`, ...
    pub category: Option<String>,
    /// Free words (`illustrious`, `photo`, ...).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The weights' licence as their publisher names it (`openrail++`,
    /// `flux-1-dev-non-commercial-license`, ...).
    pub license: Option<String>,
}

impl Catalog {
    /// Whether the category or a tag is `word` (case aside).
    pub fn names(&self, word: &str) -> bool {
        self.category
            .iter()
            .chain(&self.tags)
            .any(|w| w.eq_ignore_ascii_case(word))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub id: String,
    pub name: String,
    pub family: Family,
    /// Free text shown in /api/info (e.g. that a demo model's weights are random).
    pub description: Option<String>,
    #[serde(default)]
    pub files: ManifestFiles,
    /// A directory of LoRAs to list beside the server's `--loras` directory (relative to the
    /// manifest's directory unless absolute).
    pub loras: Option<PathBuf>,
    /// Keep the text encoder (T5, Qwen3) loaded while sampling instead of releasing it after
    /// each encoding: faster new prompts for more device memory.
    #[serde(default)]
    pub keep_text_encoder: bool,
    #[serde(default)]
    pub defaults: ManifestDefaults,
    #[serde(default)]
    pub catalog: Catalog,
    /// `[architecture.<component>]`: hyper-parameters tensor shapes cannot tell, named as in
    /// that component's diffusers config.json.
    #[serde(default)]
    pub architecture: BTreeMap<String, serde_json::Value>,
    /// The directory the manifest was read from; relative paths start there.
    #[serde(skip)]
    pub dir: PathBuf,
    /// Made from the files of a `--models-dir` folder rather than read from a TOML file.
    #[serde(skip)]
    pub from_models_dir: bool,
}

/// A safety checker (`family = "safety-checker"`): the files of
/// CompVis/stable-diffusion-safety-checker, run on images by the gateway's NSFW routes and by
/// jobs that ask for `nsfw_filter`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckerManifest {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub files: CheckerFiles,
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckerFiles {
    /// `model.safetensors`
    pub weights: PathBuf,
    /// `config.json` (a `CLIPConfig`): the vision tower's head count and activation.
    pub config: Option<PathBuf>,
}

impl CheckerManifest {
    pub fn resolve(&self, path: &Path) -> PathBuf {
        resolve(&self.dir, path)
    }
}

fn resolve(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        dir.join(path)
    }
}

/// What a manifest file describes: an image model, or a safety checker.
pub enum AnyManifest {
    Model(Box<Manifest>),
    Checker(CheckerManifest),
}

impl AnyManifest {
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        let is_checker = table.get("family").and_then(|f| f.as_str()) == Some("safety-checker");
        let parsed = if is_checker {
            let mut table = table;
            table.remove("family");
            table
                .try_into()
                .map(|m: CheckerManifest| AnyManifest::Checker(CheckerManifest { dir, ..m }))
        } else {
            table
                .try_into()
                .map(|m: Manifest| AnyManifest::Model(Box::new(Manifest { dir, ..m })))
        };
        let manifest = parsed.map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
        let id = match &manifest {
            AnyManifest::Model(m) => &m.id,
            AnyManifest::Checker(m) => &m.id,
        };
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::config(format!(
                "{}: id `{id}` must be non-empty and use only letters, digits, '-', '_' and '.'",
                path.display()
            )));
        }
        Ok(manifest)
    }
}

impl Manifest {
    /// An image model's manifest file; a safety checker's is an error here.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        match AnyManifest::from_file(path)? {
            AnyManifest::Model(manifest) => Ok(*manifest),
            AnyManifest::Checker(_) => Err(Error::config(format!(
                "{} describes a safety checker, not an image model",
                path.display()
            ))),
        }
    }

    /// A path from `[files]`, resolved against the manifest's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        resolve(&self.dir, path)
    }

    /// The `[architecture.<component>]` table, or an empty object.
    pub fn architecture(&self, component: &str) -> serde_json::Value {
        self.architecture
            .get(component)
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}))
    }
}
