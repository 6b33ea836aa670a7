//! CLIP tokenization into 77-token sequences, with prompt emphasis and long prompts.
//!
//! Every sequence is laid out as diffusers' CLIPTokenizer lays it out: BOS, up to 75 prompt
//! tokens, EOS, then the pad token (EOS for CLIP-L, "!" for SDXL's bigG) to 77. The rules:
//! - `LongPrompt::Truncate` (diffusers): one sequence; tokens past the 75th are dropped and
//!   `BREAK` is ignored.
//! - `LongPrompt::Chunk` (A1111 / ComfyUI, the default): as many sequences as needed. A chunk
//!   ends after 75 tokens; if a comma lies within the last 20 tokens of a full chunk, the text
//!   after it moves to the next chunk (A1111 `comma_padding_backtrack`); `BREAK` ends a chunk.
//!   The encodings of the chunks are concatenated along the sequence (77·k tokens); the pooled
//!   embedding is the first chunk's.
//!
//! Reference: A1111 `modules/sd_hijack_clip.py::tokenize_line`.

use std::path::Path;

use tokenizers::Tokenizer;

use super::emphasis::{PromptPart, parse_prompt_attention};
use crate::Error;

pub const SEQUENCE_LEN: usize = 77;
const CHUNK_LEN: usize = SEQUENCE_LEN - 2;
const COMMA_BACKTRACK: usize = 20;

/// How prompts longer than one 77-token sequence are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongPrompt {
    #[default]
    Chunk,
    Truncate,
}

impl std::str::FromStr for LongPrompt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chunk" => Ok(LongPrompt::Chunk),
            "truncate" => Ok(LongPrompt::Truncate),
            _ => Err(format!(
                "unknown long_prompt `{s}`; expected chunk or truncate"
            )),
        }
    }
}

/// One 77-token sequence with the emphasis weight of each token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenChunk {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
    /// Index of the EOS token (where CLIP pools).
    pub eos_position: usize,
    /// Positions whose input embedding is an embedding's vector instead of a token's (their
    /// `ids` hold a placeholder).
    pub vectors: Vec<(usize, Vec<f32>)>,
}

impl TokenChunk {
    pub fn is_weighted(&self) -> bool {
        self.weights.iter().any(|&w| w != 1.0)
    }
}

#[derive(Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    comma: Option<u32>,
}

impl ClipTokenizer {
    /// CLIP's own BPE vocabulary (`bpe_simple_vocab_16e6.txt.gz`, MIT), built into the binary:
    /// SDXL single-file checkpoints carry no tokenizer.
    pub fn bundled(pad_token: Option<&str>) -> Result<Self, Error> {
        let tokenizer = super::bundled_tokenizer(
            include_bytes!("../../assets/clip_tokenizer.json.gz"),
            "CLIP",
        )?;
        Self::new(tokenizer, "bundled CLIP tokenizer", pad_token)
    }

    /// A `tokenizer.json`. `pad_token` fills each sequence after EOS; `None` pads with EOS.
    pub fn from_file(path: &Path, pad_token: Option<&str>) -> Result<Self, Error> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| Error::config(format!("cannot read tokenizer {}: {e}", path.display())))?;
        Self::new(tokenizer, &path.display().to_string(), pad_token)
    }

    fn new(tokenizer: Tokenizer, origin: &str, pad_token: Option<&str>) -> Result<Self, Error> {
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| Error::config(format!("tokenizer {origin} has no `{token}` token")))
        };
        let bos = id("<|startoftext|>")?;
        let eos = id("<|endoftext|>")?;
        let pad = match pad_token {
            Some(p) => id(p)?,
            None => eos,
        };
        let comma = tokenizer.token_to_id(",</w>");
        Ok(Self {
            tokenizer,
            bos,
            eos,
            pad,
            comma,
        })
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::request(format!("cannot tokenize prompt: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The prompt as one or more 77-token sequences (see the module docs for the rules).
    pub fn chunks(&self, prompt: &str, long_prompt: LongPrompt) -> Result<Vec<TokenChunk>, Error> {
        let mut chunks = Vec::new();
        let mut tokens: Vec<(u32, f32)> = Vec::new();
        let mut last_comma: Option<usize> = None;
        for part in parse_prompt_attention(prompt) {
            let (text, weight) = match part {
                PromptPart::Break if long_prompt == LongPrompt::Chunk => {
                    chunks.push(self.sequence(&std::mem::take(&mut tokens)));
                    last_comma = None;
                    continue;
                }
                PromptPart::Break => continue,
                PromptPart::Text(t, w) => (t, w),
            };
            for id in self.encode(&text)? {
                if long_prompt == LongPrompt::Chunk {
                    if Some(id) == self.comma {
                        last_comma = Some(tokens.len());
                    } else if let Some(comma) = last_comma
                        .filter(|&c| tokens.len() == CHUNK_LEN && CHUNK_LEN - c <= COMMA_BACKTRACK)
                    {
                        let moved = tokens.split_off(comma + 1);
                        chunks.push(self.sequence(&tokens));
                        tokens = moved;
                        last_comma = None;
                    }
                    if tokens.len() == CHUNK_LEN {
                        chunks.push(self.sequence(&tokens));
                        tokens.clear();
                        last_comma = None;
                    }
                }
                tokens.push((id, weight));
            }
        }
        if long_prompt == LongPrompt::Truncate {
            tokens.truncate(CHUNK_LEN);
        }
        if !tokens.is_empty() || chunks.is_empty() {
            chunks.push(self.sequence(&tokens));
        }
        Ok(chunks)
    }

    /// The prompt as ComfyUI's `SDTokenizer.tokenize_with_weights` lays it out, for graphs:
    /// each word of each weighted segment ([`comfy_words`](super::comfy_words)) is tokenized
    /// on its own; a word that does not fit in the
    /// chunk moves whole to the next one when shorter than 8 tokens (the chunk is closed and
    /// padded), else it is split at the boundary; chunks are BOS + ≤ 75 tokens + EOS, padded
    /// with `pad` (ComfyUI pads CLIP-L with EOS and bigG with id 0, from one tokenizer).
    pub fn comfy_chunks(
        &self,
        prompt: &str,
        pad: Option<u32>,
        embeddings: &dyn Fn(&str) -> Option<Vec<Vec<f32>>>,
    ) -> Result<Vec<TokenChunk>, Error> {
        const MAX_WORD_LENGTH: usize = 8;
        let pad = pad.unwrap_or(self.eos);
        // (token id, weight, an embedding's vector in place of the id's embedding)
        type Item = (u32, f32, Option<Vec<f32>>);
        let mut chunks: Vec<TokenChunk> = Vec::new();
        let start = || -> Vec<Item> { vec![(self.bos, 1.0, None)] };
        let mut batch = start();
        let close = |batch: &mut Vec<Item>, chunks: &mut Vec<TokenChunk>| {
            let eos_position = batch.len();
            batch.push((self.eos, 1.0, None));
            batch.resize(SEQUENCE_LEN.max(batch.len()), (pad, 1.0, None));
            chunks.push(TokenChunk {
                ids: batch.iter().map(|t| t.0).collect(),
                weights: batch.iter().map(|t| t.1).collect(),
                eos_position,
                vectors: batch
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, t)| t.2.take().map(|v| (i, v)))
                    .collect(),
            });
            *batch = start();
        };
        let mut words = Vec::new();
        for (segment, weight) in super::comfy_token_weights(prompt) {
            for word in super::comfy_words(&segment, embeddings) {
                words.push((word, weight as f32));
            }
        }
        for (word, weight) in words {
            let mut group: Vec<Item> = match word {
                super::Word::Text(text) => self
                    .encode(&text)?
                    .into_iter()
                    .map(|id| (id, weight, None))
                    .collect(),
                // The placeholder id is the pad's; the vector replaces its embedding.
                super::Word::Embedding(vectors) => vectors
                    .into_iter()
                    .map(|v| (pad, weight, Some(v)))
                    .collect(),
            };
            let is_large = group.len() >= MAX_WORD_LENGTH;
            while !group.is_empty() {
                if group.len() + batch.len() > SEQUENCE_LEN - 1 {
                    let remaining = SEQUENCE_LEN - 1 - batch.len();
                    if is_large {
                        batch.extend(group.drain(..remaining));
                    }
                    close(&mut batch, &mut chunks);
                } else {
                    batch.append(&mut group);
                }
            }
        }
        close(&mut batch, &mut chunks);
        Ok(chunks)
    }

    /// ComfyUI's "empty" sequence for weights (`gen_empty_tokens`): BOS, EOS, then `pad`.
    pub fn comfy_empty(&self, pad: Option<u32>) -> TokenChunk {
        let mut ids = vec![self.bos, self.eos];
        ids.resize(SEQUENCE_LEN, pad.unwrap_or(self.eos));
        TokenChunk {
            ids,
            weights: vec![1.0; SEQUENCE_LEN],
            eos_position: 1,
            vectors: Vec::new(),
        }
    }

    /// The prompt as written (no emphasis syntax), cut to one 77-token sequence: what the
    /// diffusers Flux pipeline gives CLIP-L.
    pub fn plain(&self, prompt: &str) -> Result<TokenChunk, Error> {
        let ids = self.encode(prompt)?;
        let tokens: Vec<(u32, f32)> = ids
            .into_iter()
            .take(CHUNK_LEN)
            .map(|id| (id, 1.0))
            .collect();
        Ok(self.sequence(&tokens))
    }

    /// BOS, tokens, EOS, pad… (77 tokens; BOS, EOS and padding weigh 1).
    fn sequence(&self, tokens: &[(u32, f32)]) -> TokenChunk {
        let mut ids = vec![self.bos];
        let mut weights = vec![1.0];
        ids.extend(tokens.iter().map(|t| t.0));
        weights.extend(tokens.iter().map(|t| t.1));
        let eos_position = ids.len();
        ids.push(self.eos);
        ids.resize(SEQUENCE_LEN, self.pad);
        weights.resize(SEQUENCE_LEN, 1.0);
        TokenChunk {
            ids,
            weights,
            eos_position,
            vectors: Vec::new(),
        }
    }
}
