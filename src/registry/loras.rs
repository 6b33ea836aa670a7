//! The LoRA directories: every `*.safetensors` in them and their subfolders, with a stable id
//! (the file stem), its ComfyUI name (the path under the directory), the family it fits, its
//! rank and trigger words. A file that cannot be read is listed as not
//! loaded, with the reason; the rest still load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Family;
use super::models_dir::{name_under, walk};
use crate::weights::LoraFile;

#[derive(Clone, Debug)]
pub struct LoraEntry {
    pub id: String,
    /// LoraLoader's `lora_name`: the path under its directory, `/`-separated.
    pub name: String,
    pub path: PathBuf,
    /// The family the file's keys fit (`None` when it could not be read).
    pub family: Option<Family>,
    pub rank: Option<usize>,
    pub trigger_words: Vec<String>,
    /// Why the file cannot be used.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct LoraLibrary {
    entries: BTreeMap<String, LoraEntry>,
}

impl LoraLibrary {
    /// Scans `dirs` in order (a missing one adds nothing); when two files share a stem, the
    /// first directory's keeps the id.
    pub fn scan(dirs: &[PathBuf]) -> Self {
        let mut entries = BTreeMap::new();
        for dir in dirs {
            let mut paths = Vec::new();
            walk(dir, &["safetensors"], &mut paths);
            paths.sort();
            for path in paths {
                let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                    continue;
                };
                if let Some(first) = entries.get(&id).map(|e: &LoraEntry| e.path.clone()) {
                    tracing::warn!(
                        "LoRA id `{id}` of {} is taken by {}; skipped",
                        path.display(),
                        first.display()
                    );
                    continue;
                }
                let name = name_under(dir, &path);
                entries.insert(id.clone(), entry(id, name, path));
            }
        }
        Self { entries }
    }

    pub fn get(&self, id: &str) -> Option<&LoraEntry> {
        self.entries.get(id)
    }

    pub fn entries(&self) -> impl Iterator<Item = &LoraEntry> {
        self.entries.values()
    }
}

/// What the file at `path` is and whether it can be used.
fn entry(id: String, name: String, path: PathBuf) -> LoraEntry {
    if let Some(family) = other_family(&path) {
        let error = format!(
            "a {} LoRA; this build applies SDXL LoRAs only",
            family.name()
        );
        return LoraEntry {
            id,
            name,
            path,
            family: Some(family),
            rank: None,
            trigger_words: Vec::new(),
            error: Some(error),
        };
    }
    match LoraFile::open(&path) {
        Ok(file) => LoraEntry {
            id,
            name,
            family: Some(Family::Sdxl),
            rank: file.modules.iter().filter_map(|m| m.rank()).max(),
            trigger_words: trigger_words(&path, &file),
            error: None,
            path,
        },
        Err(e) => LoraEntry {
            id,
            name,
            path,
            family: None,
            rank: None,
            trigger_words: Vec::new(),
            error: Some(e.to_string()),
        },
    }
}

/// The family of a LoRA made for a transformer model, from its key names (ComfyUI's and
/// diffusers' Flux/Chroma/Z-Image LoRA layouts; models.md §3.6, §5.5).
fn other_family(path: &Path) -> Option<Family> {
    let file = crate::weights::SafetensorsFile::open(path).ok()?;
    let has = |needle: &str| file.tensors().iter().any(|(n, _)| n.contains(needle));
    if has("double_blocks")
        || has("single_blocks")
        || has("single_transformer_blocks")
        || has("lora_transformer_")
    {
        Some(Family::FluxDev)
    } else if has("noise_refiner") || has("context_refiner") || has("diffusion_model.layers.") {
        Some(Family::ZImageTurbo)
    } else {
        None
    }
}

/// Trigger words: a sidecar (`<stem>.json` or civitai's `<stem>.civitai.info`, field
/// `trainedWords`), else the five most frequent training tags of kohya's `ss_tag_frequency`.
fn trigger_words(path: &Path, file: &LoraFile) -> Vec<String> {
    for sidecar in [
        path.with_extension("json"),
        path.with_extension("civitai.info"),
    ] {
        let words = std::fs::read_to_string(&sidecar)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|j| j["trainedWords"].as_array().cloned());
        if let Some(words) = words {
            return words
                .iter()
                .filter_map(|w| w.as_str().map(str::to_owned))
                .collect();
        }
    }
    let Some(frequencies) = file
        .metadata
        .get("ss_tag_frequency")
        .and_then(|t| serde_json::from_str::<BTreeMap<String, BTreeMap<String, u64>>>(t).ok())
    else {
        return Vec::new();
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for tags in frequencies.values() {
        for (tag, n) in tags {
            *counts.entry(tag.trim().to_owned()).or_default() += n;
        }
    }
    let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.into_iter().take(5).map(|(tag, _)| tag).collect()
}
