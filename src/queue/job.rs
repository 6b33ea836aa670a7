//! The job record (contract: ../shared/design.md "job").

use serde::{Deserialize, Serialize};

use crate::output::nsfw_filter::NsfwFilter;
use crate::pipelines::GenerationParams;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, poem_openapi::Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];
}

/// A LoRA applied to a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobLora {
    pub id: String,
    pub weight: f32,
    pub trigger_weight: f32,
}

/// Where a job's time went, in milliseconds; a phase the job did not reach or need is absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, poem_openapi::Object)]
#[oai(skip_serializing_if_is_none)]
pub struct JobTimings {
    /// Loading the model, when this job had to (a different model was loaded before it).
    pub model_load_ms: Option<u64>,
    /// Merging the job's LoRAs into the loaded weights and taking them off afterwards.
    pub lora_merge_ms: Option<u64>,
    /// Encoding, sampling and decoding all of the job's images.
    pub generate_ms: Option<u64>,
}

/// The safety checker's verdict on one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, poem_openapi::Object)]
pub struct NsfwVerdict {
    pub is_nsfw: bool,
    /// The highest concept score: cosine similarity to a concept less that concept's
    /// threshold (plus 0.01 after a special-care hit), rounded to thousandths as diffusers
    /// rounds it. Above 0 means flagged; the further from 0, the clearer the verdict.
    pub confidence: f32,
    /// What was found: `concept_<i>` for each concept above its threshold and
    /// `special_care_<i>` for each special-care concept (the checker's concepts are unnamed).
    pub labels: Vec<String>,
    /// Every concept's score (17 for CompVis' checker).
    pub concept_scores: Vec<f32>,
    /// Every special-care concept's score (3).
    pub special_scores: Vec<f32>,
}

/// An NSFW check of one stored image: the gateway's `nsfw/analyze`, and `nsfw/filter` with a
/// filter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SafetyCheck {
    /// The image, relative to the data directory.
    pub image: std::path::PathBuf,
    /// The gallery file name, when the image is one of this server's.
    pub source: Option<String>,
    /// Write a copy of the image, hidden this way where the checker flags it.
    pub filter: Option<NsfwFilter>,
    /// Once run.
    pub verdict: Option<NsfwVerdict>,
}

/// One accepted request: what to make, and how far it got. Persisted on every status change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub status: JobStatus,
    pub priority: i32,
    /// Acceptance order (FIFO within a priority); also the listing cursor.
    pub seq: u64,
    /// A generate request's model id, or "comfyui" for a graph.
    pub model: String,
    /// A generate request's resolved parameters (image i uses `seed + i`); None for a graph.
    pub params: Option<GenerationParams>,
    /// A ComfyUI prompt, for a graph job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Workflow>,
    /// An NSFW check, for a check job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<SafetyCheck>,
    /// A generate job's `nsfw_filter`: each image goes through the safety checker after
    /// decoding, and a flagged one is stored black (diffusers' behaviour) and marked.
    #[serde(default)]
    pub nsfw_filter: bool,
    pub num_images: u32,
    #[serde(default)]
    pub loras: Vec<JobLora>,
    pub step: u32,
    pub total_steps: u32,
    pub images: Vec<String>,
    pub error: Option<String>,
    /// Unix time in milliseconds.
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    #[serde(default)]
    pub timings: JobTimings,
}

/// A ComfyUI prompt as `POST /prompt` accepted it, and what it left in ComfyUI's history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Workflow {
    /// The API-format graph.
    pub prompt: serde_json::Map<String, serde_json::Value>,
    /// `extra_data` (client_id, extra_pnginfo, ...).
    pub extra_data: serde_json::Value,
    /// The output nodes to run.
    pub outputs: Vec<String>,
    /// The prompt's `number`, which orders ComfyUI prompts among the jobs of their priority:
    /// the client's, else the job's acceptance order (`seq`, negated for `front`), set when
    /// the queue accepts it.
    pub number: serde_json::Value,
    /// ComfyUI's `front`: numbered ahead of every job accepted before.
    #[serde(default)]
    pub front: bool,
    pub client_id: Option<String>,
    /// Each output node's UI output (`{"images": [...]}`), once run.
    #[serde(default)]
    pub ui_outputs: serde_json::Map<String, serde_json::Value>,
    /// ComfyUI's history `status.messages`: `[event, data]` pairs.
    #[serde(default)]
    pub messages: Vec<serde_json::Value>,
}

impl Job {
    /// A job about to be submitted, with nothing run yet; callers set what it makes.
    pub fn new(job_id: String, model: String, priority: i32) -> Self {
        Self {
            job_id,
            status: JobStatus::Queued,
            priority,
            seq: 0,
            model,
            params: None,
            workflow: None,
            check: None,
            nsfw_filter: false,
            num_images: 1,
            loras: Vec::new(),
            step: 0,
            total_steps: 0,
            images: Vec::new(),
            error: None,
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
            timings: JobTimings::default(),
        }
    }
}

impl Job {
    /// The file this job was handed (an img2img image, an image to check), which lives under
    /// the data directory's `uploads/` until the job ends; None for a gallery image it names.
    pub fn upload(&self) -> Option<&std::path::Path> {
        let init = self.params.as_ref().and_then(|p| p.init_image.as_ref());
        let check = self.check.as_ref().filter(|c| c.source.is_none());
        init.map(|i| i.path.as_path())
            .or(check.map(|c| c.image.as_path()))
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new job id: 128 random bits as hex (unguessable, and safe in file names).
pub fn new_job_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one(std::time::Instant::now());
    let b = RandomState::new().hash_one(now_ms());
    format!("{a:016x}{b:016x}")
}
