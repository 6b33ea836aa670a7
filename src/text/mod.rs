//! Prompts to token ids: emphasis syntax, CLIP tokenization, long-prompt chunking, T5, Qwen3.

mod clip_tokenizer;
mod comfy_weights;
mod embeddings;
mod emphasis;
mod qwen_tokenizer;
mod t5_tokenizer;

pub use clip_tokenizer::{ClipTokenizer, LongPrompt, SEQUENCE_LEN, TokenChunk};
pub use comfy_weights::{Word, comfy_token_weights, comfy_words};
pub use embeddings::Embeddings;
pub use emphasis::{PromptPart, parse_prompt_attention};
pub use qwen_tokenizer::Qwen3Tokenizer;
pub use t5_tokenizer::{T5Tokenizer, T5Tokens};

/// A tokenizer built into the binary: its `tokenizer.json`, gzipped in `assets/`.
fn bundled_tokenizer(gzipped: &[u8], what: &str) -> Result<tokenizers::Tokenizer, crate::Error> {
    use std::io::Read;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut json)
        .map_err(|e| crate::Error::config(format!("bundled {what} tokenizer: {e}")))?;
    tokenizers::Tokenizer::from_bytes(json)
        .map_err(|e| crate::Error::config(format!("bundled {what} tokenizer: {e}")))
}
