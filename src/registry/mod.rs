//! Which models exist: manifests scanned from `model_manifests/` and any `--manifests` dirs,
//! and the files of ComfyUI models folders (`--models-dir`).

mod loras;
mod manifest;
pub mod models_dir;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use loras::{LoraEntry, LoraLibrary};
pub use manifest::{
    AnyManifest, Catalog, CheckerFiles, CheckerManifest, Family, Manifest, ManifestDefaults,
    ManifestFiles,
};
pub use models_dir::{ModelFile, Role};

use crate::Error;

#[derive(Clone, Debug, Default)]
pub struct Registry {
    models: BTreeMap<String, Manifest>,
    /// The usable files of the models folders, in the order they were given.
    files: Vec<ModelFile>,
    /// The models folders' textual-inversion embeddings: (name without extension, file).
    embeddings: Vec<(String, PathBuf)>,
    models_dirs: Vec<PathBuf>,
    /// The safety checker, when a manifest names one.
    checker: Option<CheckerManifest>,
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
                match AnyManifest::from_file(&path)? {
                    AnyManifest::Model(manifest) => registry.add(*manifest)?,
                    AnyManifest::Checker(checker) => registry.set_checker(checker)?,
                }
            }
        }
        Ok(registry)
    }

    /// Adds a ComfyUI models folder: its files, and the native models they make. A manifest
    /// keeps its id; a models-folder model whose id is taken is skipped with a warning.
    pub fn add_models_dir(&mut self, dir: &Path) -> Result<(), Error> {
        let files = models_dir::scan(dir)?;
        for manifest in models_dir::manifests(&files) {
            if let Some(existing) = self.models.get(&manifest.id) {
                tracing::warn!(
                    "model id `{}` of {} is taken by {}; skipped",
                    manifest.id,
                    manifest.dir.display(),
                    existing.dir.display()
                );
                continue;
            }
            self.models.insert(manifest.id.clone(), manifest);
        }
        self.files.extend(files);
        self.embeddings.extend(models_dir::embeddings(dir));
        self.models_dirs.push(dir.to_owned());
        Ok(())
    }

    /// The usable files of the models folders.
    pub fn model_files(&self) -> &[ModelFile] {
        &self.files
    }

    /// The models folders' embeddings, by name.
    pub fn embeddings(&self) -> &[(String, PathBuf)] {
        &self.embeddings
    }

    /// The LoRA folders of the models folders.
    pub fn models_dir_loras(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.models_dirs.iter().map(|d| models_dir::loras_folder(d))
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

    /// One safety checker serves the server: a second is a configuration error, not a choice
    /// made silently.
    pub fn set_checker(&mut self, checker: CheckerManifest) -> Result<(), Error> {
        if let Some(existing) = &self.checker {
            return Err(Error::config(format!(
                "two safety checkers: `{}` ({}) and `{}` ({}); keep one",
                existing.id,
                existing.dir.display(),
                checker.id,
                checker.dir.display()
            )));
        }
        self.checker = Some(checker);
        Ok(())
    }

    pub fn checker(&self) -> Option<&CheckerManifest> {
        self.checker.as_ref()
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
