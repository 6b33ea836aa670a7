//! The Qwen3 tokenizer (byte-level BPE, a `tokenizer.json`) with the chat template Z-Image
//! wraps every prompt in: `apply_chat_template([{"role": "user", "content": prompt}],
//! add_generation_prompt=True, enable_thinking=True)`, which renders as
//! `<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n` (diffusers
//! `ZImagePipeline._encode_prompt`; ComfyUI and candle hard-code the same string).

use std::path::Path;

use tokenizers::Tokenizer;

use crate::Error;

pub struct Qwen3Tokenizer {
    tokenizer: Tokenizer,
}

impl Qwen3Tokenizer {
    /// Qwen's byte-level BPE (Qwen/Qwen2.5, Apache-2.0, the `qwen25_tokenizer` ComfyUI ships
    /// and tokenizes Qwen3 prompts with), built into the binary: split Qwen3 files carry no
    /// tokenizer. Made by `assets/make_builtin_tokenizers.py` with transformers'
    /// `Qwen2Tokenizer`. Its added tokens end with `<|img|>` ... where Qwen3's own tokenizer
    /// has `<think>` ...; the chat template uses neither.
    pub fn bundled() -> Result<Self, Error> {
        let tokenizer = super::bundled_tokenizer(
            include_bytes!("../../assets/qwen_tokenizer.json.gz"),
            "Qwen",
        )?;
        Self::new(tokenizer, "the bundled Qwen tokenizer")
    }

    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| Error::config(format!("cannot read tokenizer {}: {e}", path.display())))?;
        Self::new(tokenizer, &path.display().to_string())
    }

    fn new(tokenizer: Tokenizer, origin: &str) -> Result<Self, Error> {
        if tokenizer.token_to_id("<|im_start|>").is_none() {
            return Err(Error::config(format!(
                "{origin} is not a Qwen tokenizer: no <|im_start|>"
            )));
        }
        Ok(Self { tokenizer })
    }

    /// The prompt in the chat template, as at most `max_len` token ids (the pipeline's
    /// `max_sequence_length` truncation; its right padding never reaches the transformer).
    pub fn encode_chat(&self, prompt: &str, max_len: usize) -> Result<Vec<u32>, Error> {
        let text = format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n");
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::request(format!("cannot tokenize prompt: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        ids.truncate(max_len);
        Ok(ids)
    }
}
