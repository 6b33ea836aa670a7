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

impl Manifest {
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
        let mut manifest: Manifest =
            toml::from_str(&text).map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
        manifest.dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        if manifest.id.is_empty()
            || !manifest
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::config(format!(
                "{}: id `{}` must be non-empty and use only letters, digits, '-', '_' and '.'",
                path.display(),
                manifest.id
            )));
        }
        Ok(manifest)
    }

    /// A path from `[files]`, resolved against the manifest's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.dir.join(path)
        }
    }

    /// The `[architecture.<component>]` table, or an empty object.
    pub fn architecture(&self, component: &str) -> serde_json::Value {
        self.architecture
            .get(component)
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}))
    }
}
