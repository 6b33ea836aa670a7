//! The T5 tokenizer (SentencePiece unigram, as a `tokenizer.json`), padded and truncated the way
//! the diffusers Flux and Chroma pipelines call it: `padding="max_length"`, `truncation=True`,
//! `</s>` appended by the tokenizer's post-processor.

use std::path::Path;

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::Error;

pub struct T5Tokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
    pad_token: String,
}

/// A prompt as T5 token ids, with the tokenizer's attention mask (1 = token, 0 = padding).
pub struct T5Tokens {
    pub ids: Vec<u32>,
    pub mask: Vec<u32>,
}

impl T5Tokenizer {
    /// The T5 v1.1 / T5-XXL tokenizer FLUX.1 and Chroma use (google/t5-v1_1-xxl, Apache-2.0,
    /// as ComfyUI ships it in `comfy/text_encoders/t5_tokenizer/`), built into the binary:
    /// split T5 files carry no tokenizer. Made by `assets/make_builtin_tokenizers.py`.
    pub fn bundled() -> Result<Self, Error> {
        let tokenizer =
            super::bundled_tokenizer(include_bytes!("../../assets/t5_tokenizer.json.gz"), "T5")?;
        Self::new(tokenizer, "the bundled T5 tokenizer")
    }

    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| Error::config(format!("cannot read tokenizer {}: {e}", path.display())))?;
        Self::new(tokenizer, &path.display().to_string())
    }

    fn new(tokenizer: Tokenizer, origin: &str) -> Result<Self, Error> {
        let pad_token = "<pad>".to_owned();
        let pad_id = tokenizer
            .token_to_id(&pad_token)
            .ok_or_else(|| Error::config(format!("{origin} is not a T5 tokenizer: no <pad>")))?;
        Ok(Self {
            tokenizer,
            pad_id,
            pad_token,
        })
    }

    /// A piece of text as its tokens alone, without `</s>` or padding (ComfyUI tokenizes each
    /// weighted segment so).
    pub fn segment_ids(&self, text: &str) -> Result<Vec<u32>, Error> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::request(format!("cannot tokenize prompt: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `prompt` as exactly `length` tokens.
    pub fn encode(&self, prompt: &str, length: usize) -> Result<T5Tokens, Error> {
        let mut tokenizer = self.tokenizer.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: length,
                ..Default::default()
            }))
            .map_err(|e| Error::config(format!("T5 tokenizer: {e}")))?
            .with_padding(Some(PaddingParams {
                strategy: PaddingStrategy::Fixed(length),
                pad_id: self.pad_id,
                pad_token: self.pad_token.clone(),
                ..Default::default()
            }));
        let encoding = tokenizer
            .encode(prompt, true)
            .map_err(|e| Error::request(format!("cannot tokenize prompt: {e}")))?;
        Ok(T5Tokens {
            ids: encoding.get_ids().to_vec(),
            mask: encoding.get_attention_mask().to_vec(),
        })
    }
}
