//! The gateway's JSON shapes: every answer is `{"success": true, "data", "request_id"}` or
//! `{"success": false, "error": {"code", "message", "details"}, "request_id"}`.

use std::borrow::Cow;

use poem_openapi::Object;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

use crate::queue::JobStatus;

/// A JSON string and nothing else: poem-openapi's `String` also takes numbers and booleans
/// (`{"message": 7}` would be the prompt "7"), where the gateway answers a wrong type with 400.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Text(pub String);

impl Type for Text {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new("string")))
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(Text(text)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

#[derive(Object)]
pub struct ErrorDetail {
    /// `INVALID_API_KEY`, `RATE_LIMIT_EXCEEDED`, `INVALID_REQUEST`, `INVALID_PROMPT`,
    /// `MODEL_NOT_FOUND`, `PROMPT_NOT_FOUND`, `ALREADY_FINISHED`, `QUEUE_FULL`,
    /// `GENERATION_FAILED`, ...
    pub code: String,
    pub message: String,
    /// What was wrong, where the code alone does not say (e.g. the field errors).
    #[oai(nullable)]
    pub details: Option<serde_json::Value>,
}

#[derive(Object)]
pub struct Failure {
    /// Always false.
    pub success: bool,
    pub error: ErrorDetail,
    pub request_id: String,
}

#[derive(Object)]
pub struct Envelope<T: ParseFromJSON + ToJSON> {
    /// Always true.
    pub success: bool,
    pub data: T,
    pub request_id: String,
}

#[derive(Object, Clone, Default)]
pub struct ChatOptions {
    /// `anime` or `realistic`: chooses the model as a style word in the message would.
    pub style: Option<Text>,
    /// `draft` (half the model's steps), `standard`, `high` (one and a half times).
    pub quality: Option<Text>,
    /// Check the images with the safety checker and keep filtered copies.
    pub nsfw_filter: Option<bool>,
    /// A model id, over what the message's words would choose.
    pub model: Option<Text>,
}

#[derive(Object)]
pub struct ChatRequest {
    /// What to make, in Japanese or English: 「横長の猫の写真を2枚」, "3 anime girls, portrait,
    /// without hats".
    pub message: Text,
    pub user_id: Option<Text>,
    /// Messages of one conversation share it; a new one is made when absent.
    pub session_id: Option<Text>,
    pub options: Option<ChatOptions>,
}

/// Why a parameter has its value: the words of the message (or the option) that chose it.
#[derive(Object, Clone)]
pub struct ParsedReason {
    pub parameter: String,
    pub words: String,
}

/// The generation parameters the message was read as.
#[derive(Object, Clone)]
pub struct Parsed {
    pub prompt: String,
    #[oai(nullable)]
    pub negative_prompt: Option<String>,
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub num_images: u32,
    #[oai(nullable)]
    pub seed: Option<u64>,
    #[oai(nullable)]
    pub style: Option<String>,
    #[oai(nullable)]
    pub quality: Option<String>,
    pub because: Vec<ParsedReason>,
}

#[derive(Object)]
pub struct ChatData {
    /// The job's id: `generation/status/{prompt_id}`, `/api/jobs/{prompt_id}`.
    pub prompt_id: String,
    pub status: JobStatus,
    pub session_id: String,
    /// A sentence saying what will be made.
    pub reply: String,
    pub parsed: Parsed,
}

#[derive(Object, Clone)]
pub struct ChatMessage {
    pub id: u64,
    #[oai(nullable)]
    pub user_id: Option<String>,
    pub session_id: String,
    pub message: String,
    pub reply: String,
    pub prompt_id: String,
    pub parsed: Parsed,
    /// Unix milliseconds.
    pub created_at: u64,
}

#[derive(Object)]
pub struct ChatHistory {
    /// Newest first.
    pub messages: Vec<ChatMessage>,
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
}

#[derive(Object)]
pub struct ResultMetadata {
    pub model: String,
    pub prompt: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
}

#[derive(Object)]
pub struct GenerationResult {
    pub filename: String,
    pub url: String,
    pub thumb_url: String,
    pub metadata: ResultMetadata,
}

#[derive(Object)]
pub struct GenerationStatus {
    pub prompt_id: String,
    pub status: JobStatus,
    /// 0–100.
    pub progress: f64,
    pub step: u32,
    pub total_steps: u32,
    /// While queued: jobs ahead.
    #[oai(nullable)]
    pub queue_position: Option<u32>,
    /// Seconds, from the step times measured on this server; null until there are some.
    #[oai(nullable)]
    pub estimated_remaining: Option<f64>,
    pub results: Vec<GenerationResult>,
    #[oai(nullable)]
    pub error: Option<String>,
}

#[derive(Object)]
pub struct Cancelled {
    pub prompt_id: String,
    pub status: JobStatus,
}

#[derive(Object)]
pub struct QueueSummary {
    pub pending: u32,
    pub running: u32,
    /// Jobs completed since 00:00 UTC.
    pub completed_today: u32,
    /// Seconds until a job queued now would start, from the measured step times; null until
    /// there are some.
    #[oai(nullable)]
    pub estimated_wait_time: Option<f64>,
}

#[derive(Object)]
pub struct ModelSummary {
    pub id: String,
    pub name: String,
    /// The family: `sdxl`, `flux-dev`, `flux-schnell`, `chroma`, `z-image-turbo`.
    #[oai(rename = "type")]
    pub kind: String,
    #[oai(nullable)]
    pub category: Option<String>,
    pub tags: Vec<String>,
    /// The model a request that names none gets.
    pub default: bool,
}

#[derive(Object)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
}

#[derive(Object)]
pub struct Recommended {
    pub steps: u32,
    pub cfg: f64,
    pub sampler: String,
    pub scheduler: String,
}

#[derive(Object)]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
    /// `square`, `portrait` or `landscape`.
    pub orientation: String,
}

#[derive(Object)]
pub struct ModelDetails {
    #[oai(flatten)]
    pub summary: ModelSummary,
    #[oai(nullable)]
    pub description: Option<String>,
    #[oai(nullable)]
    pub license: Option<String>,
    pub recommended: Recommended,
    /// The sizes chat requests choose for each orientation word.
    pub resolutions: Vec<Resolution>,
    /// The generate request's JSON Schema for this model (limits included), as /api/info has it.
    pub parameters: serde_json::Value,
}
