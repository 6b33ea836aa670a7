//! A ComfyUI `models/` folder (`--models-dir`): the files of its loader folders, each one's
//! family and role read from its tensor names and shapes, with a `<stem>.toml` beside a file
//! for what tensors cannot tell (a tokenizer, `[architecture.*]` entries). The files fill
//! ComfyUI's loader lists and become models of the native API, so such a folder needs no
//! manifest (ComfyUI `folder_paths.py` for the folder names; `model_detection.py` for
//! telling files apart).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Catalog, Family, Manifest, ManifestDefaults, ManifestFiles};
use crate::Error;
use crate::weights::{FileKind, SafetensorsFile, TransformerKind, file_kind};

/// What a model file is to the loaders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An SDXL single-file checkpoint (CheckpointLoaderSimple).
    Checkpoint,
    /// A diffusion transformer (UNETLoader).
    Transformer(Family),
    /// A VAE of 4 (SD, SDXL) or 16 (Flux) latent channels (VAELoader).
    Vae(usize),
    ClipL,
    /// SDXL's second encoder (DualCLIPLoader `sdxl`).
    ClipG,
    T5,
    Qwen3,
}

impl Role {
    /// The role of a file of `kind`, if this build can load it alone.
    fn of(kind: FileKind) -> Option<Role> {
        Some(match kind {
            FileKind::SdxlCheckpoint => Role::Checkpoint,
            FileKind::Transformer(t) => Role::Transformer(match t {
                TransformerKind::FluxDev => Family::FluxDev,
                TransformerKind::FluxSchnell => Family::FluxSchnell,
                TransformerKind::Chroma => Family::Chroma,
                TransformerKind::ZImage => Family::ZImageTurbo,
            }),
            FileKind::Vae {
                latent_channels: c @ (4 | 16),
            } => Role::Vae(c),
            FileKind::ClipL => Role::ClipL,
            FileKind::ClipG => Role::ClipG,
            FileKind::T5 => Role::T5,
            FileKind::Qwen3 => Role::Qwen3,
            _ => return None,
        })
    }

    /// The `[architecture.*]` table a `<stem>.toml` beside a one-network file uses.
    fn sidecar_table(self) -> &'static str {
        match self {
            Role::Checkpoint => "",
            Role::Transformer(_) => "transformer",
            Role::Vae(_) => "vae",
            Role::ClipL => "clip_l",
            Role::ClipG => "clip_g",
            Role::T5 => "t5",
            Role::Qwen3 => "qwen3",
        }
    }
}

/// The `[architecture.*]` table of a manifest of `family` that configures its `role` network
/// (the names of the diffusers pipeline's components).
pub fn architecture_key(family: Family, role: Role) -> &'static str {
    match (family, role) {
        (_, Role::Transformer(_)) => "transformer",
        (_, Role::Vae(_)) => "vae",
        (Family::FluxDev | Family::FluxSchnell, Role::T5) | (_, Role::ClipG) => "text_encoder_2",
        (_, Role::ClipL | Role::T5 | Role::Qwen3) => "text_encoder",
        (_, Role::Checkpoint) => "",
    }
}

/// `<stem>.toml` beside a model file: what the file's tensors cannot tell.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Shown in /api/info for a model made from the file.
    pub name: Option<String>,
    pub description: Option<String>,
    /// Tokenizers, relative to the file's folder.
    #[serde(default)]
    pub files: SidecarFiles,
    #[serde(default)]
    pub defaults: ManifestDefaults,
    #[serde(default)]
    pub catalog: Catalog,
    /// A checkpoint's tables are a manifest's (`unet`, `vae`, `text_encoder`,
    /// `text_encoder_2`); a one-network file's table is named by its role (`transformer`,
    /// `vae`, `clip_l`, `t5`, `qwen3`).
    #[serde(default)]
    pub architecture: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub keep_text_encoder: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarFiles {
    pub tokenizer_clip_l: Option<PathBuf>,
    pub tokenizer_clip_g: Option<PathBuf>,
    pub tokenizer_t5: Option<PathBuf>,
    pub tokenizer_qwen3: Option<PathBuf>,
}

/// One usable file of a models folder.
#[derive(Clone, Debug)]
pub struct ModelFile {
    /// The name ComfyUI lists: the path under its loader folder, `/`-separated.
    pub name: String,
    pub path: PathBuf,
    pub role: Role,
    pub sidecar: Sidecar,
}

impl ModelFile {
    /// The file's stem: the id of a native model made from it.
    pub fn stem(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A sidecar path, resolved against the file's folder.
    fn beside(&self, path: &Option<PathBuf>) -> Option<PathBuf> {
        path.as_ref()
            .map(|p| self.path.parent().unwrap_or(Path::new(".")).join(p))
    }

    /// The tokenizer its sidecar names for its role.
    pub fn tokenizer(&self) -> Option<PathBuf> {
        let files = &self.sidecar.files;
        match self.role {
            Role::ClipL | Role::ClipG => self.beside(&files.tokenizer_clip_l),
            Role::T5 => self.beside(&files.tokenizer_t5),
            Role::Qwen3 => self.beside(&files.tokenizer_qwen3),
            _ => None,
        }
    }

    /// Its sidecar's `[architecture.<role>]` table, or `{}`.
    pub fn config(&self) -> serde_json::Value {
        self.sidecar
            .architecture
            .get(self.role.sidecar_table())
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}))
    }
}

/// ComfyUI's loader folders (and their older names) that hold what this build loads.
const FOLDERS: &[&str] = &[
    "checkpoints",
    "diffusion_models",
    "unet",
    "text_encoders",
    "clip",
    "vae",
];

/// The `embeddings/` files (safetensors) of a models folder, by their path there without
/// the extension, as `/embeddings` lists them and prompts name them.
pub fn embeddings(dir: &Path) -> Vec<(String, PathBuf)> {
    let root = dir.join("embeddings");
    let mut paths = Vec::new();
    walk(&root, &["safetensors"], &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = name_under(&root, &p);
            let name = name
                .strip_suffix(".safetensors")
                .unwrap_or(&name)
                .to_owned();
            (name, p)
        })
        .collect()
}

/// The LoRA folder of a models folder.
pub fn loras_folder(dir: &Path) -> PathBuf {
    dir.join("loras")
}

/// Every usable safetensors file under `dir`'s loader folders, sorted by folder then name.
/// Files this build cannot load are logged and left out, so the lists show what runs.
pub fn scan(dir: &Path) -> Result<Vec<ModelFile>, Error> {
    if !dir.is_dir() {
        return Err(Error::config(format!(
            "--models-dir {} is not a directory",
            dir.display()
        )));
    }
    let mut found = Vec::new();
    for folder in FOLDERS {
        let root = dir.join(folder);
        let mut paths = Vec::new();
        walk(&root, &["safetensors", "sft"], &mut paths);
        paths.sort();
        for path in paths {
            let name = name_under(&root, &path);
            let kind = match SafetensorsFile::open(&path) {
                Ok(file) => file_kind(&file),
                Err(e) => {
                    tracing::warn!("{}: skipped: {e}", path.display());
                    continue;
                }
            };
            let Some(role) = Role::of(kind) else {
                tracing::info!(
                    "{}: skipped: {kind:?} is not a file this build loads",
                    path.display()
                );
                continue;
            };
            found.push(ModelFile {
                sidecar: read_sidecar(&path)?,
                name,
                path,
                role,
            });
        }
    }
    Ok(found)
}

/// The files under `dir` with one of `extensions`, symlinks followed, hidden entries skipped.
pub(super) fn walk(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, extensions, out);
        } else if path
            .extension()
            .is_some_and(|x| extensions.iter().any(|e| x == *e))
        {
            out.push(path);
        }
    }
}

/// A file's name as ComfyUI lists it: its path under `root`, `/`-separated.
pub(super) fn name_under(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn read_sidecar(model: &Path) -> Result<Sidecar, Error> {
    let path = model.with_extension("toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| Error::config(format!("{}: {e}", path.display())))
        }
        Err(_) => Ok(Sidecar::default()),
    }
}

/// The native models a folder's files make: each SDXL checkpoint, and each transformer whose
/// text encoders and VAE the folder holds (the first of each by name).
pub fn manifests(files: &[ModelFile]) -> Vec<Manifest> {
    let first = |role: Role| files.iter().find(|f| f.role == role);
    let mut manifests = Vec::new();
    for file in files {
        let mut parts = vec![file];
        let family = match file.role {
            Role::Checkpoint => Family::Sdxl,
            Role::Transformer(family) => {
                let needs: &[Role] = match family {
                    Family::FluxDev | Family::FluxSchnell => {
                        &[Role::Vae(16), Role::T5, Role::ClipL]
                    }
                    Family::Chroma => &[Role::Vae(16), Role::T5],
                    Family::ZImageTurbo => &[Role::Vae(16), Role::Qwen3],
                    Family::Sdxl => &[],
                };
                let Some(companions) = needs.iter().map(|r| first(*r)).collect::<Option<Vec<_>>>()
                else {
                    tracing::info!(
                        "{}: no native model: the models folder lacks its text encoders or VAE",
                        file.path.display()
                    );
                    continue;
                };
                parts.extend(companions);
                family
            }
            _ => continue,
        };
        manifests.push(manifest(family, &parts));
    }
    manifests
}

/// The native model of an SDXL checkpoint file (also what CheckpointLoaderSimple loads).
pub fn checkpoint_manifest(file: &ModelFile) -> Manifest {
    manifest(Family::Sdxl, &[file])
}

/// A manifest over `parts` (the model's own file first): their paths, tokenizers and
/// architecture tables.
fn manifest(family: Family, parts: &[&ModelFile]) -> Manifest {
    let main = parts[0];
    let mut files = ManifestFiles::default();
    let mut architecture = BTreeMap::new();
    for part in parts {
        let path = Some(part.path.clone());
        match part.role {
            Role::Checkpoint => {
                let s = &part.sidecar.files;
                files.checkpoint = path;
                files.tokenizer_clip_l = part.beside(&s.tokenizer_clip_l);
                files.tokenizer_clip_g = part.beside(&s.tokenizer_clip_g);
                architecture.extend(part.sidecar.architecture.clone());
                continue;
            }
            Role::Transformer(_) => files.transformer = path,
            Role::Vae(_) => files.vae = path,
            Role::ClipL => {
                files.clip_l = path;
                files.tokenizer_clip_l = part.tokenizer();
            }
            Role::ClipG => files.clip_g = path,
            Role::T5 => {
                files.t5 = path;
                files.tokenizer_t5 = part.tokenizer();
            }
            Role::Qwen3 => {
                files.qwen3 = path;
                files.tokenizer_qwen3 = part.tokenizer();
            }
        }
        architecture.insert(
            architecture_key(family, part.role).to_owned(),
            part.config(),
        );
    }
    let companions: Vec<&str> = parts[1..].iter().map(|p| p.name.as_str()).collect();
    let made_of = if companions.is_empty() {
        format!("{} from a models folder", main.name)
    } else {
        format!(
            "{} with {} from a models folder",
            main.name,
            companions.join(", ")
        )
    };
    let sidecar = &main.sidecar;
    Manifest {
        id: main.stem(),
        name: sidecar.name.clone().unwrap_or_else(|| main.stem()),
        family,
        description: Some(sidecar.description.clone().unwrap_or(made_of)),
        files,
        loras: None,
        keep_text_encoder: sidecar.keep_text_encoder,
        defaults: sidecar.defaults.clone(),
        catalog: sidecar.catalog.clone(),
        architecture,
        dir: main.path.parent().unwrap_or(Path::new(".")).to_owned(),
        from_models_dir: true,
    }
}
