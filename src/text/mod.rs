//! Prompts to token ids: emphasis syntax, CLIP tokenization, long-prompt chunking.

mod clip_tokenizer;
mod emphasis;

pub use clip_tokenizer::{ClipTokenizer, LongPrompt, SEQUENCE_LEN, TokenChunk};
pub use emphasis::{PromptPart, parse_prompt_attention};
