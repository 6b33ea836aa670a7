//! Text encoders are needed only before sampling. T5-XXL (9.5 GB in bf16) and Qwen3-4B (8 GB)
//! would otherwise sit beside the denoiser through every step, so a pipeline holds them
//! through an [`OnDemand`]: loaded when a prompt must be encoded, released before the
//! denoiser runs (unless the manifest sets `keep_text_encoder = true`), with what they gave
//! kept per prompt, so a job's further images and a repeated prompt skip them.

use burn::module::Module;
use burn::prelude::*;

use crate::Error;
use crate::models::weight_bytes;

/// Encodings kept: a job's prompt and negative prompt, and a few recent others.
const CACHED_PROMPTS: usize = 8;

type Loader<M> = Box<dyn Fn() -> Result<M, Error> + Send>;

pub struct OnDemand<B: Backend, M, V> {
    load: Loader<M>,
    encoder: Option<M>,
    keep_loaded: bool,
    /// (prompt, encoding), least recently used first.
    cache: Vec<(String, V)>,
    loads: usize,
    device: B::Device,
}

impl<B: Backend, M: Module<B>, V: Clone> OnDemand<B, M, V> {
    /// `load` builds the encoder from its (memory-mapped) weights; it runs at the first
    /// encoding, and again after each release.
    pub fn new(
        load: impl Fn() -> Result<M, Error> + Send + 'static,
        keep_loaded: bool,
        device: &B::Device,
    ) -> Self {
        Self {
            load: Box::new(load),
            encoder: None,
            keep_loaded,
            cache: Vec::new(),
            loads: 0,
            device: device.clone(),
        }
    }

    /// The encoding of `prompt`, from the cache or from `encode` run on the encoder (loaded
    /// first if it is not).
    pub fn encode(
        &mut self,
        prompt: &str,
        encode: impl FnOnce(&M) -> Result<V, Error>,
    ) -> Result<V, Error> {
        if let Some(i) = self.cache.iter().position(|(p, _)| p == prompt) {
            let hit = self.cache.remove(i);
            self.cache.push(hit);
            return Ok(self.cache.last().expect("just pushed").1.clone());
        }
        let encoder = match &mut self.encoder {
            Some(encoder) => encoder,
            slot => {
                self.loads += 1;
                slot.insert((self.load)()?)
            }
        };
        let encoding = encode(encoder)?;
        if self.cache.len() == CACHED_PROMPTS {
            self.cache.remove(0);
        }
        self.cache.push((prompt.to_owned(), encoding.clone()));
        Ok(encoding)
    }

    /// Frees the encoder's weights before sampling (unless kept loaded), and hands the memory
    /// back to the device.
    pub fn release(&mut self) {
        if !self.keep_loaded && self.encoder.take().is_some() {
            B::memory_cleanup(&self.device);
        }
    }

    /// Bytes of weights held on the device now (0 while released).
    pub fn weight_bytes(&self) -> u64 {
        self.encoder.as_ref().map_or(0, weight_bytes)
    }

    /// How many times the weights were loaded.
    pub fn loads(&self) -> usize {
        self.loads
    }
}
