//! Prompts to token ids: emphasis syntax, CLIP tokenization, long-prompt chunking, T5.

mod clip_tokenizer;
mod emphasis;
mod t5_tokenizer;

pub use clip_tokenizer::{ClipTokenizer, LongPrompt, SEQUENCE_LEN, TokenChunk};
pub use emphasis::{PromptPart, parse_prompt_attention};
pub use t5_tokenizer::{T5Tokenizer, T5Tokens};
