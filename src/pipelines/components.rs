//! Finding a model's components: a diffusers folder (`model_index.json` + one folder per
//! component) or files named in the manifest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use burn::prelude::Backend;

use crate::Error;
use crate::models::clip::{Activation, ClipConfig, ClipTextModel};
use crate::registry::Manifest;
use crate::text::ClipTokenizer;
use crate::weights::{SafetensorsFile, TensorStore, describe};

/// One file holding one network, as a ComfyUI loader names it (UNETLoader, CLIPLoader,
/// VAELoader), with what its manifest or `<stem>.toml` says of it.
#[derive(Clone, Debug)]
pub struct ComponentFile {
    pub path: PathBuf,
    /// Its `[architecture.<component>]` table (`{}` when none).
    pub config: serde_json::Value,
    /// Its tokenizer.json, for text encoders whose vocabulary is not the built-in one.
    pub tokenizer: Option<PathBuf>,
}

/// The tensors of one diffusers component folder (`unet/`, `vae/`, `text_encoder/`): the
/// unsharded default file, or every shard a `*.safetensors.index.json` lists.
pub fn folder_store(dir: &Path) -> Result<TensorStore, Error> {
    let mut store = TensorStore::default();
    for path in component_files(dir)? {
        store.extend(TensorStore::from_file_prefix(
            &SafetensorsFile::open(&path)?,
            "",
        ));
    }
    Ok(store)
}

fn component_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    for default in ["diffusion_pytorch_model.safetensors", "model.safetensors"] {
        let path = dir.join(default);
        if path.is_file() {
            return Ok(vec![path]);
        }
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::weights(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if let Some(index) = entries
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".safetensors.index.json"))
    {
        let json: serde_json::Value = read_json(index)?;
        let mut shards: Vec<PathBuf> = json["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str())
                    .map(|f| dir.join(f))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        return Ok(shards);
    }
    let mut candidates: Vec<PathBuf> = entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    candidates.sort();
    match candidates.len() {
        1 => Ok(candidates),
        0 => Err(Error::weights(format!(
            "no .safetensors file in {}",
            dir.display()
        ))),
        _ => Err(Error::weights(format!(
            "several .safetensors files in {} and no index; name one in the manifest",
            dir.display()
        ))),
    }
}

/// A diffusers folder's `scheduler/scheduler_config.json`, if it has one.
pub fn folder_scheduler<T: DeserializeOwned>(dir: &Path) -> Result<Option<T>, Error> {
    let path = dir.join("scheduler/scheduler_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    serde_json::from_value(read_json(&path)?)
        .map(Some)
        .map_err(|e| Error::config(format!("{}: {e}", path.display())))
}

/// `scheduler` with the manifest's `[architecture.scheduler]` keys set over it.
pub fn manifest_scheduler<T: Serialize + DeserializeOwned>(
    scheduler: T,
    manifest: &Manifest,
) -> Result<T, Error> {
    let Some(overrides) = manifest.architecture.get("scheduler") else {
        return Ok(scheduler);
    };
    let base = serde_json::to_value(&scheduler).expect("serializable");
    serde_json::from_value(merged(base, overrides))
        .map_err(|e| Error::config(format!("model `{}`: scheduler: {e}", manifest.id)))
}

pub fn read_json(path: &Path) -> Result<serde_json::Value, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::config(format!("{}: {e}", path.display())))
}

/// `dir/config.json` if it exists, else `{}`.
pub fn folder_config(dir: &Path) -> Result<serde_json::Value, Error> {
    let path = dir.join("config.json");
    if path.is_file() {
        read_json(&path)
    } else {
        Ok(serde_json::json!({}))
    }
}

/// `base` with the keys of `overrides` set over it (both JSON objects).
pub fn merged(mut base: serde_json::Value, overrides: &serde_json::Value) -> serde_json::Value {
    if let (Some(b), Some(o)) = (base.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// Opens a single-file checkpoint and checks it has the parts a family needs (`required`
/// key prefixes); otherwise says what the file is.
pub fn open_checkpoint(
    path: &Path,
    family: &str,
    required: &[&str],
) -> Result<Arc<SafetensorsFile>, Error> {
    let file = SafetensorsFile::open(path)?;
    let missing = required
        .iter()
        .find(|prefix| !file.tensors().iter().any(|(n, _)| n.starts_with(*prefix)));
    if let Some(prefix) = missing {
        return Err(Error::weights(format!(
            "{} is not {family} checkpoint (no `{prefix}*` tensors): found {}",
            path.display(),
            describe(&file)
        )));
    }
    Ok(file)
}

/// transformers 5 saves `CLIPTextModel` without the `text_model.` prefix; real checkpoints
/// have it. Accept both.
pub fn with_text_model_prefix(store: TensorStore) -> TensorStore {
    if store.has_prefix("text_model") {
        return store;
    }
    store.renamed(|n| {
        Some(if n.starts_with("text_projection") {
            n.to_owned()
        } else {
            format!("text_model.{n}")
        })
    })
}

/// A CLIP text encoder file (transformers names, with or without `text_model.`) and its
/// tokenizer (the file's own, else CLIP's built-in one): Flux's CLIP-L, SDXL's two encoders
/// in DualCLIPLoader. `activation` is the tower's default (`quick_gelu` for OpenAI's L,
/// `gelu` for bigG) when the config names none.
pub fn load_clip_file<B: Backend>(
    file: &ComponentFile,
    activation: Activation,
    device: &B::Device,
) -> Result<(ClipTokenizer, ClipTextModel<B>), Error> {
    let store = with_text_model_prefix(TensorStore::from_file_prefix(
        &SafetensorsFile::open(&file.path)?,
        "",
    ));
    clip_model(
        &store,
        &file.config,
        activation,
        file.tokenizer.as_deref(),
        device,
    )
}

/// A CLIP tower from its tensors and config, with its tokenizer.
pub fn clip_model<B: Backend>(
    store: &TensorStore,
    config: &serde_json::Value,
    activation: Activation,
    tokenizer: Option<&Path>,
    device: &B::Device,
) -> Result<(ClipTokenizer, ClipTextModel<B>), Error> {
    let cfg = ClipConfig::detect(store, config, activation)?;
    let tokenizer = match tokenizer {
        Some(p) => ClipTokenizer::from_file(p, None)?,
        None => ClipTokenizer::bundled(None)?,
    };
    Ok((tokenizer, ClipTextModel::load(store, &cfg, device)?))
}
