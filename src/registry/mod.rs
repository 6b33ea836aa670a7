//! Which models exist: manifests scanned from `model_manifests/` and any `--manifests` dirs.

mod loras;
mod manifest;

use std::collections::BTreeMap;
use std::path::Path;

pub use loras::{LoraEntry, LoraLibrary};
pub use manifest::{Family, Manifest, ManifestDefaults, ManifestFiles};

use crate::Error;

#[derive(Clone, Debug, Default)]
pub struct Registry {
    models: BTreeMap<String, Manifest>,
}

impl Registry {
    /// Reads every `*.toml` in `dirs` (not recursive). A manifest that cannot be read is an
    /// error naming the file: a model silently missing is worse than a refusal to start.
    pub fn scan<P: AsRef<Path>>(dirs: &[P]) -> Result<Self, Error> {
        let mut registry = Registry::default();
        for dir in dirs {
            let dir = dir.as_ref();
            let entries = std::fs::read_dir(dir).map_err(|e| {
                Error::config(format!(
                    "cannot read manifest directory {}: {e}",
                    dir.display()
                ))
            })?;
            let mut paths: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            paths.sort();
            for path in paths {
                registry.add(Manifest::from_file(&path)?)?;
            }
        }
        Ok(registry)
    }

    pub fn add(&mut self, manifest: Manifest) -> Result<(), Error> {
        if let Some(existing) = self.models.get(&manifest.id) {
            return Err(Error::config(format!(
                "model id `{}` is defined twice ({} and {})",
                manifest.id,
                existing.dir.display(),
                manifest.dir.display()
            )));
        }
        self.models.insert(manifest.id.clone(), manifest);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<&Manifest, Error> {
        self.models.get(id).ok_or_else(|| {
            let known: Vec<_> = self.models.keys().map(String::as_str).collect();
            Error::request(format!(
                "unknown model `{id}`; known models: {}",
                known.join(", ")
            ))
        })
    }

    pub fn models(&self) -> impl Iterator<Item = &Manifest> {
        self.models.values()
    }
}
