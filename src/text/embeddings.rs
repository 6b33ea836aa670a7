//! Textual-inversion embeddings for ComfyUI prompts (`embedding:name`): the files of the
//! models folders' `embeddings/`, read as ComfyUI's `load_embed` reads a safetensors file
//! (the tensor under the encoder's key, `clip_l` / `clip_g`, else the first one), each row a
//! token's input embedding.

use std::path::PathBuf;

use crate::weights::{SafetensorsFile, TensorSlot};

/// The embeddings a prompt may name: (name as ComfyUI lists it, file).
#[derive(Clone, Debug, Default)]
pub struct Embeddings {
    files: Vec<(String, PathBuf)>,
}

impl Embeddings {
    pub fn new(files: Vec<(String, PathBuf)>) -> Self {
        Self { files }
    }

    /// The names `/embeddings` lists.
    pub fn names(&self) -> Vec<String> {
        self.files.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The vectors of embedding `name` for the encoder whose key is `key`, as rows of the
    /// tensor's last dimension; `None` when there is no such file or it cannot be read (as
    /// `load_embed`, which then lets the tokenizer drop the word).
    pub fn vectors(&self, name: &str, key: &str) -> Option<Vec<Vec<f32>>> {
        let stem = name.strip_suffix(".safetensors").unwrap_or(name);
        let path = &self.files.iter().find(|(n, _)| n == stem)?.1;
        let file = match SafetensorsFile::open(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("embedding {name}: {e}");
                return None;
            }
        };
        let mut names: Vec<&str> = file.tensors().iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let chosen = if names.contains(&key) {
            key
        } else if let Some(n) = names.iter().find(|n| n.starts_with("string_to_param.")) {
            n
        } else {
            names.first()?
        };
        let info = file.tensors().iter().find(|(n, _)| n == chosen)?.1.clone();
        let width = *info.shape.last()?;
        let values = TensorSlot::new(file.clone(), info).to_f32().ok()?;
        if width == 0 {
            return None;
        }
        Some(values.chunks(width).map(<[f32]>::to_vec).collect())
    }
}
