//! The shapes of requests and responses, as the OpenAPI document shows them.

use poem_openapi::Object;

use crate::queue::{Job, JobStatus, JobTimings};
use crate::store::ImageRecord;

/// A LoRA for one job, e.g. `{"id": "civitai_1963644", "weight": 0.8, "trigger_weight": 0.5}`.
#[derive(Object)]
pub struct LoraRef {
    /// A LoRA id from /api/info.
    pub id: String,
    /// Strength on the UNet and both text encoders (default 1.0; 0 leaves the model as is).
    #[oai(nullable)]
    pub weight: Option<f64>,
    /// 0 (default): no trigger words; otherwise the LoRA's trigger words are appended to the
    /// prompt with this emphasis, e.g. `(trigger words:0.5)`.
    #[oai(nullable)]
    pub trigger_weight: Option<f64>,
}

#[derive(Object)]
pub struct Accepted {
    pub job_id: String,
    pub status: JobStatus,
    /// 0: next to run.
    pub position: u32,
}

#[derive(Object)]
pub struct ErrorBody {
    pub detail: String,
}

/// The resolved parameters of a job (with the seed it used).
#[derive(Object)]
pub struct JobParams {
    pub model: String,
    pub prompt: String,
    #[oai(nullable)]
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance_scale: f64,
    pub sampler: String,
    pub scheduler: String,
    pub seed: u64,
    pub long_prompt: String,
    pub num_images: u32,
    pub priority: i32,
    pub loras: Vec<LoraRef>,
    /// Whether each image went through the safety checker.
    pub nsfw_filter: bool,
    /// Image-to-image: the strength its image was noised with (null: text-to-image).
    #[oai(nullable)]
    pub strength: Option<f64>,
}

/// Where a job came from.
#[derive(poem_openapi::Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum JobKind {
    /// `POST /api/generate`.
    Generate,
    /// A ComfyUI prompt (`POST /prompt` on the ComfyUI port).
    Comfyui,
    /// An NSFW check (the gateway's `nsfw/analyze` and `nsfw/filter`).
    NsfwCheck,
}

/// Contract: ../shared/design.md "job". Times are Unix milliseconds.
#[derive(Object)]
pub struct JobView {
    pub job_id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    /// Queue position while queued (0: next).
    #[oai(nullable)]
    pub position: Option<u32>,
    pub step: u32,
    pub total_steps: u32,
    /// The resolved request of a `generate` job; null for a ComfyUI graph (see its history at
    /// the ComfyUI API's `/history/{job_id}`).
    #[oai(nullable)]
    pub params: Option<JobParams>,
    pub images: Vec<String>,
    #[oai(nullable)]
    pub error: Option<String>,
    pub created_at: u64,
    #[oai(nullable)]
    pub started_at: Option<u64>,
    #[oai(nullable)]
    pub finished_at: Option<u64>,
    pub timings: JobTimings,
}

impl JobView {
    pub fn new(job: &Job, position: Option<usize>) -> Self {
        Self {
            job_id: job.job_id.clone(),
            kind: match (&job.workflow, &job.check) {
                (Some(_), _) => JobKind::Comfyui,
                (_, Some(_)) => JobKind::NsfwCheck,
                _ => JobKind::Generate,
            },
            status: job.status,
            position: position.map(|p| p as u32),
            step: job.step,
            total_steps: match (&job.params, job.total_steps) {
                (Some(p), 0) => p.steps as u32 * job.num_images,
                _ => job.total_steps,
            },
            params: job.params.as_ref().map(|p| JobParams {
                model: job.model.clone(),
                prompt: p.prompt.clone(),
                negative_prompt: p.negative_prompt.clone(),
                width: p.width as u32,
                height: p.height as u32,
                steps: p.steps as u32,
                guidance_scale: decimal(p.guidance_scale),
                sampler: p.sampler.name().into(),
                scheduler: p.scheduler.name().into(),
                seed: p.seed,
                long_prompt: match p.long_prompt {
                    crate::text::LongPrompt::Chunk => "chunk".into(),
                    crate::text::LongPrompt::Truncate => "truncate".into(),
                },
                num_images: job.num_images,
                priority: job.priority,
                loras: job
                    .loras
                    .iter()
                    .map(|l| LoraRef {
                        id: l.id.clone(),
                        weight: Some(decimal(l.weight)),
                        trigger_weight: Some(decimal(l.trigger_weight)),
                    })
                    .collect(),
                nsfw_filter: job.nsfw_filter,
                strength: p.init_image.as_ref().map(|i| i.strength),
            }),
            images: job.images.clone(),
            error: job.error.clone(),
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            timings: job.timings.clone(),
        }
    }
}

/// The f64 a client wrote for an f32 we keep: `0.3`, not `0.30000001192092896`.
fn decimal(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(value as f64)
}

#[derive(Object)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

#[derive(Object)]
pub struct ImageView {
    /// The SSE event id (the image's index id); not part of the JSON.
    #[oai(skip)]
    pub event_id: u64,
    pub filename: String,
    pub url: String,
    pub thumb_url: String,
    pub width: u32,
    pub height: u32,
    pub job_id: String,
    pub model: String,
    pub prompt: String,
    pub seed: u64,
    pub created_at: u64,
    /// Whether the safety checker flagged the image (what is stored is then hidden); null
    /// where it did not look at it.
    #[oai(nullable)]
    pub nsfw: Option<bool>,
}

impl From<&ImageRecord> for ImageView {
    fn from(r: &ImageRecord) -> Self {
        Self {
            event_id: r.id,
            filename: r.filename.clone(),
            url: format!("/api/images/{}", r.filename),
            thumb_url: format!("/api/thumbs/{}", r.filename),
            width: r.width,
            height: r.height,
            job_id: r.job_id.clone(),
            model: r.model.clone(),
            prompt: r.prompt.clone(),
            seed: r.seed,
            created_at: r.created_at,
            nsfw: r.nsfw,
        }
    }
}

#[derive(Object)]
pub struct ImageList {
    pub images: Vec<ImageView>,
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// One SSE event of a job stream. `status` is always there; the other fields depend on it:
/// `queued` → position; `processing` → step, total_steps, preview (sometimes);
/// `completed` → images; `failed` → error; `snapshot` → job (the whole job, sent first on a
/// reconnect that cannot be replayed).
#[derive(Object, Default)]
pub struct JobStreamEvent {
    /// The SSE event id; not part of the JSON.
    #[oai(skip)]
    pub event_id: u64,
    pub status: String,
    #[oai(skip_serializing_if_is_none)]
    pub position: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub step: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub total_steps: Option<u32>,
    /// `data:image/jpeg;base64,...`
    #[oai(skip_serializing_if_is_none)]
    pub preview: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub images: Option<Vec<String>>,
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub job: Option<JobView>,
}

#[derive(Object)]
pub struct ModelInfo {
    pub id: String,
    pub name: String,
    pub family: String,
    #[oai(nullable)]
    pub description: Option<String>,
    /// Whether its pipeline is in memory now.
    pub loaded: bool,
    /// JSON Schema of the body of `POST /api/generate` for this model, with its defaults and
    /// limits.
    pub parameters: serde_json::Value,
}

#[derive(Object)]
pub struct LoraInfo {
    /// What requests name in `loras[].id`: the file stem.
    pub id: String,
    /// The model family the file fits.
    #[oai(nullable)]
    pub family: Option<String>,
    #[oai(nullable)]
    pub rank: Option<u32>,
    /// Appended to the prompt with `trigger_weight` as emphasis when that is not 0.
    pub trigger_words: Vec<String>,
    /// Whether the file could be read; `error` says why not.
    pub loaded: bool,
    #[oai(nullable)]
    pub error: Option<String>,
}

#[derive(Object)]
pub struct Info {
    pub version: String,
    pub device: String,
    /// The float type weights are kept in and the networks compute in (`--dtype`).
    pub dtype: String,
    #[oai(nullable)]
    pub default_model: Option<String>,
    pub models: Vec<ModelInfo>,
    pub loras: Vec<LoraInfo>,
}
