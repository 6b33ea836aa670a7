//! AUTOMATIC1111's API under `/sdapi/v1` on the native port, for the clients that speak it
//! (webuiapi, Open WebUI's `automatic1111` engine, SillyTavern, Krita plugins): `txt2img`,
//! `img2img`, the model list and `options` (whose `sd_model_checkpoint` is the model A1111 requests get),
//! samplers, schedulers, LoRAs, `progress`, `interrupt`, `skip`. Shapes as A1111's
//! `modules/api/models.py` has them; 422 as FastAPI's `detail` list (which A1111 answers
//! too). A request becomes a generate body through the same submission as `POST
//! /api/generate`; A1111's `<lora:name:weight>` prompt syntax names the job's LoRAs.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use serde_json::{Value, json};

use super::AppState;
use super::schemas::ErrorBody;
use super::submit::{SubmitError, completed_job, submit_generate};
use super::validation::{ValidationErrors, ValidationItem};
use crate::output::png::read_parameters;
use crate::pipelines::FamilyOptions;
use crate::queue::Job;
use crate::sampling::{SamplerKind, ScheduleKind};

/// How long a request waits for its images.
const WAIT: Duration = Duration::from_secs(600);

pub struct A1111Api {
    state: Arc<AppState>,
    /// `options.sd_model_checkpoint`: the model A1111 requests get (the server's default
    /// model until a client sets it).
    checkpoint: RwLock<Option<String>>,
}

impl A1111Api {
    pub fn new(state: Arc<AppState>) -> Self {
        let checkpoint = RwLock::new(state.default_model.clone());
        Self { state, checkpoint }
    }
}

#[derive(Tags)]
enum Tag {
    /// AUTOMATIC1111's API (`/sdapi/v1`), for webuiapi, Open WebUI and SillyTavern.
    A1111,
}

/// The fields of A1111's `StableDiffusionTxt2ImgProcessingAPI` that hanga reads; the others
/// (hires fix, scripts, restore_faces, ...) are accepted and ignored, and `null` means absent.
#[derive(Object)]
#[oai(rename = "A1111Txt2ImgRequest")]
pub struct Txt2ImgRequest {
    /// `<lora:name:weight>` in the prompt applies that LoRA (`GET /sdapi/v1/loras`).
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub steps: Option<i64>,
    pub cfg_scale: Option<f64>,
    /// A1111's sampler names (`GET /sdapi/v1/samplers`); a scheduler's label after it
    /// ("DPM++ 2M Karras") picks the scheduler as A1111 1.9+ reads it.
    pub sampler_name: Option<String>,
    /// The older field for `sampler_name`.
    pub sampler_index: Option<String>,
    /// `automatic` (the model's own schedule) or `karras`.
    pub scheduler: Option<String>,
    /// −1 or absent: random.
    pub seed: Option<i64>,
    pub batch_size: Option<i64>,
    pub n_iter: Option<i64>,
    /// `sd_model_checkpoint` runs this request on that model.
    pub override_settings: Option<BTreeMap<String, Value>>,
}

/// A1111's `StableDiffusionImg2ImgProcessingAPI`: txt2img's fields and the image.
#[derive(Object)]
#[oai(rename = "A1111Img2ImgRequest")]
pub struct Img2ImgRequest {
    #[oai(flatten)]
    pub txt2img: Txt2ImgRequest,
    /// The image to start from, base64 or a `data:` URL (the first is used). Resized to
    /// `width`×`height` where those are given (Lanczos, A1111's "Just resize").
    #[oai(validator(min_items = 1))]
    pub init_images: Vec<String>,
    /// How far the image is noised: the last `int(steps × strength)` steps run, at least one
    /// (default 0.75, A1111's).
    #[oai(validator(minimum(value = "0.01"), maximum(value = "1")))]
    pub denoising_strength: Option<f64>,
    /// Inpainting masks are refused: this server does not inpaint.
    pub mask: Option<String>,
}

/// A1111's default `denoising_strength`.
const A1111_STRENGTH: f64 = 0.75;

#[derive(Object)]
#[oai(rename = "A1111TextToImageResponse")]
pub struct TextToImageResponse {
    /// PNGs as plain base64 (no `data:` prefix), as A1111 sends them.
    pub images: Vec<String>,
    /// The request as read.
    pub parameters: Value,
    /// A JSON string: prompt, seed, all_seeds, sampler_name, infotexts, ...
    pub info: String,
}

#[derive(Object)]
#[oai(rename = "A1111SDModelItem")]
pub struct SdModelItem {
    /// What `sd_model_checkpoint` takes: the model id.
    pub title: String,
    pub model_name: String,
    #[oai(nullable)]
    pub hash: Option<String>,
    #[oai(nullable)]
    pub sha256: Option<String>,
    pub filename: String,
    #[oai(nullable)]
    pub config: Option<String>,
}

#[derive(Object)]
#[oai(rename = "A1111SamplerItem")]
pub struct SamplerItem {
    pub name: String,
    pub aliases: Vec<String>,
    pub options: BTreeMap<String, String>,
}

#[derive(Object)]
#[oai(rename = "A1111SchedulerItem")]
pub struct SchedulerItem {
    pub name: String,
    pub label: String,
    #[oai(nullable)]
    pub aliases: Option<Vec<String>>,
    #[oai(nullable)]
    pub default_rho: Option<f64>,
    #[oai(nullable)]
    pub need_inner_model: Option<bool>,
}

#[derive(Object)]
#[oai(rename = "A1111LoraItem")]
pub struct LoraItem {
    /// What `<lora:name:weight>` takes.
    pub name: String,
    pub alias: String,
    pub path: String,
    pub metadata: BTreeMap<String, Value>,
}

/// A1111's `shared.state.dict()`.
#[derive(Object)]
#[oai(rename = "A1111ProgressState")]
pub struct ProgressState {
    pub skipped: bool,
    pub interrupted: bool,
    pub job: String,
    pub job_count: u32,
    pub job_timestamp: String,
    pub job_no: u32,
    pub sampling_step: u32,
    pub sampling_steps: u32,
}

#[derive(Object)]
#[oai(rename = "A1111ProgressResponse")]
pub struct ProgressResponse {
    /// 0 to 1 over the running job.
    pub progress: f64,
    /// Seconds left, estimated from the time so far.
    pub eta_relative: f64,
    pub state: ProgressState,
    /// The running job's latest preview, JPEG as plain base64.
    #[oai(nullable)]
    pub current_image: Option<String>,
    #[oai(nullable)]
    pub textinfo: Option<String>,
}

#[derive(Object)]
#[oai(rename = "A1111Options")]
pub struct Options {
    /// The model A1111 requests run on.
    pub sd_model_checkpoint: String,
    /// The format of `images`.
    pub samples_format: String,
}

/// What `txt2img` and `img2img` answer.
#[derive(ApiResponse)]
#[oai(bad_request_handler = "refused")]
pub enum ImagesAnswer {
    #[oai(status = 200)]
    Ok(Json<TextToImageResponse>),
    /// A field is missing or invalid (FastAPI's `detail` list, with A1111's field names).
    #[oai(status = 422)]
    Invalid(Json<ValidationErrors>),
    /// The queue is full.
    #[oai(status = 429)]
    Busy(Json<ErrorBody>),
    /// The generation failed.
    #[oai(status = 500)]
    Failed(Json<ErrorBody>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "refused_options")]
pub enum SetOptionsResponse {
    /// A1111 answers `null`.
    #[oai(status = 200)]
    Ok(Json<Value>),
    /// The body is not an object, or names a model this server does not have.
    #[oai(status = 422)]
    Invalid(Json<ValidationErrors>),
}

/// What poem-openapi refused before a handler ran, FastAPI-style: at the field its message
/// names (its validators say "field `name` verification failed").
fn unprocessable(error: &poem::Error) -> Json<ValidationErrors> {
    let message = error.to_string();
    let field = message
        .split_once("field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name.to_owned());
    let loc = std::iter::once("body".to_owned()).chain(field).collect();
    Json(ValidationErrors::one(loc, message, "value_error"))
}

fn refused(error: poem::Error) -> ImagesAnswer {
    ImagesAnswer::Invalid(unprocessable(&error))
}

fn refused_options(error: poem::Error) -> SetOptionsResponse {
    SetOptionsResponse::Invalid(unprocessable(&error))
}

fn invalid(field: &str, msg: String, input: Option<Value>) -> ImagesAnswer {
    ImagesAnswer::Invalid(Json(ValidationErrors {
        detail: vec![ValidationItem {
            loc: vec!["body".into(), field.into()],
            msg,
            kind: "value_error".into(),
            input,
        }],
    }))
}

fn error(message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        detail: message.into(),
    })
}

/// A1111's name of a generate field, for `loc`.
fn a1111_field(field: &str) -> &str {
    match field {
        "guidance_scale" => "cfg_scale",
        "num_images" => "batch_size",
        "sampler" => "sampler_name",
        "model" => "override_settings",
        "loras" => "prompt",
        "init_image" => "init_images",
        "strength" => "denoising_strength",
        other => other,
    }
}

/// The `<lora:name:weight>` tags of a prompt, and the prompt without them (A1111's
/// `extra_networks.parse_prompt`; the weight defaults to 1).
fn lora_tags(prompt: &str) -> (String, Vec<(String, f64)>) {
    let mut loras = Vec::new();
    let mut text = String::with_capacity(prompt.len());
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        let Some(end) = rest[start..].find('>').map(|e| start + e) else {
            break;
        };
        text.push_str(&rest[..start]);
        let mut fields = rest[start + 6..end].split(':');
        let name = fields.next().unwrap_or_default().trim().to_owned();
        let weight = fields
            .next()
            .and_then(|w| w.trim().parse().ok())
            .unwrap_or(1.0);
        loras.push((name, weight));
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    (text.trim().to_owned(), loras)
}

/// A1111's sampler name and scheduler as hanga's: the name's scheduler suffix ("DPM++ 2M
/// Karras") counts only where `scheduler` is absent or automatic, as A1111 1.9+ reads them
/// (`sd_samplers.get_sampler_and_scheduler`).
fn sampler_and_scheduler(
    sampler: &str,
    scheduler: Option<&str>,
) -> Result<(SamplerKind, Option<ScheduleKind>), (&'static str, String)> {
    let (name, suffix) = match sampler.strip_suffix(" Karras") {
        Some(name) => (name, Some(ScheduleKind::Karras)),
        None => (sampler, None),
    };
    let kind = SamplerKind::ALL
        .into_iter()
        .find(|k| k.a1111_name() == name || k.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.a1111_name()).collect();
            (
                "sampler_name",
                format!("sampler `{sampler}` is not one of: {}", names.join(", ")),
            )
        })?;
    let schedule = match scheduler.map(str::to_lowercase).as_deref() {
        None | Some("automatic") => suffix,
        Some("karras") => Some(ScheduleKind::Karras),
        Some("normal") => Some(ScheduleKind::Normal),
        Some(other) => {
            return Err((
                "scheduler",
                format!("scheduler `{other}` is not automatic or karras"),
            ));
        }
    };
    Ok((kind, schedule))
}

/// A checkpoint as clients name it: the title, or the title with A1111's ` [hash]`.
fn model_of(name: &str) -> &str {
    match name.rsplit_once(" [") {
        Some((title, hash)) if hash.ends_with(']') => title,
        _ => name,
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[OpenApi(prefix_path = "/sdapi/v1", tag = "Tag::A1111")]
impl A1111Api {
    /// Text to image, as A1111's `txt2img` (answers once the images are made).
    #[oai(path = "/txt2img", method = "post")]
    async fn txt2img(&self, body: Json<Txt2ImgRequest>) -> ImagesAnswer {
        let parameters = body.0.to_json().unwrap_or_default();
        match self.generate_body(&body.0) {
            Ok(generate) => self.run(&generate, parameters).await,
            Err(refusal) => refusal,
        }
    }

    /// Image to image, as A1111's `img2img` (answers once the images are made).
    #[oai(path = "/img2img", method = "post")]
    async fn img2img(&self, body: Json<Img2ImgRequest>) -> ImagesAnswer {
        let request = body.0;
        if request.mask.as_deref().is_some_and(|m| !m.is_empty()) {
            let msg = "inpainting is not available on this server; send the image without a mask";
            return invalid("mask", msg.into(), None);
        }
        let image = &request.init_images[0];
        let mut generate = match self.generate_body(&request.txt2img) {
            Ok(generate) => generate,
            Err(refusal) => return refusal,
        };
        generate["init_image"] = image.as_str().into();
        generate["strength"] = request.denoising_strength.unwrap_or(A1111_STRENGTH).into();
        // A1111 leaves the images out of `parameters` (`include_init_images` off).
        let mut parameters = request.to_json().unwrap_or_default();
        parameters["init_images"] = Value::Null;
        self.run(&generate, parameters).await
    }

    /// The models, as A1111 lists its checkpoints.
    #[oai(path = "/sd-models", method = "get")]
    async fn sd_models(&self) -> Json<Vec<SdModelItem>> {
        let models = self
            .state
            .shared
            .registry
            .models()
            .map(|m| SdModelItem {
                title: m.id.clone(),
                model_name: m.id.clone(),
                hash: None,
                sha256: None,
                filename: m
                    .files
                    .checkpoint
                    .as_ref()
                    .or(m.files.diffusers.as_ref())
                    .or(m.files.transformer.as_ref())
                    .map_or_else(|| m.dir.clone(), |p| m.resolve(p))
                    .display()
                    .to_string(),
                config: None,
            })
            .collect();
        Json(models)
    }

    /// The options A1111 clients read: `sd_model_checkpoint`.
    #[oai(path = "/options", method = "get")]
    async fn options(&self) -> Json<Options> {
        Json(Options {
            sd_model_checkpoint: self
                .checkpoint
                .read()
                .expect("checkpoint lock")
                .clone()
                .unwrap_or_default(),
            samples_format: "png".into(),
        })
    }

    /// Set options: `sd_model_checkpoint` chooses the model of later A1111 requests; the
    /// other options A1111 has are accepted and have no effect here.
    #[oai(path = "/options", method = "post")]
    async fn set_options(&self, body: Json<BTreeMap<String, Value>>) -> SetOptionsResponse {
        if let Some(name) = body.0.get("sd_model_checkpoint") {
            let id = name.as_str().map(model_of).unwrap_or_default();
            if self.state.shared.registry.get(id).is_err() {
                return SetOptionsResponse::Invalid(Json(ValidationErrors {
                    detail: vec![ValidationItem {
                        loc: vec!["body".into(), "sd_model_checkpoint".into()],
                        msg: format!("model {name} not found; GET /sdapi/v1/sd-models lists them"),
                        kind: "value_error".into(),
                        input: Some(name.clone()),
                    }],
                }));
            }
            *self.checkpoint.write().expect("checkpoint lock") = Some(id.to_owned());
        }
        SetOptionsResponse::Ok(Json(Value::Null))
    }

    /// The samplers, by A1111's names.
    #[oai(path = "/samplers", method = "get")]
    async fn samplers(&self) -> Json<Vec<SamplerItem>> {
        Json(
            SamplerKind::ALL
                .iter()
                .map(|k| SamplerItem {
                    name: k.a1111_name().into(),
                    aliases: vec![k.name().into()],
                    options: BTreeMap::new(),
                })
                .collect(),
        )
    }

    /// The schedulers: `automatic` (the model's own) and `karras`.
    #[oai(path = "/schedulers", method = "get")]
    async fn schedulers(&self) -> Json<Vec<SchedulerItem>> {
        let item = |name: &str, label: &str, rho: Option<f64>| SchedulerItem {
            name: name.into(),
            label: label.into(),
            aliases: None,
            default_rho: rho,
            need_inner_model: Some(false),
        };
        Json(vec![
            item("automatic", "Automatic", None),
            item("karras", "Karras", Some(7.0)),
        ])
    }

    /// The LoRAs `<lora:name:weight>` can name.
    #[oai(path = "/loras", method = "get")]
    async fn loras(&self) -> Json<Vec<LoraItem>> {
        let library = self.state.shared.loras.read().expect("loras lock");
        Json(
            library
                .entries()
                .map(|l| LoraItem {
                    name: l.id.clone(),
                    alias: l.id.clone(),
                    path: l.path.display().to_string(),
                    metadata: BTreeMap::new(),
                })
                .collect(),
        )
    }

    /// The running job's progress and latest preview.
    #[oai(path = "/progress", method = "get")]
    async fn progress(&self) -> Json<ProgressResponse> {
        let shared = &self.state.shared;
        let (running, waiting) = shared.queue.running_and_waiting();
        let job_count = running.is_some() as u32 + waiting.len() as u32;
        let (progress, eta, steps, job) = match &running {
            Some(job) if job.total_steps > 0 => {
                let done = f64::from(job.step) / f64::from(job.total_steps);
                let elapsed = job.started_at.map_or(0.0, |t| {
                    crate::queue::now_ms().saturating_sub(t) as f64 / 1000.0
                });
                let eta = if done > 0.0 {
                    elapsed / done - elapsed
                } else {
                    0.0
                };
                (done, eta, (job.step, job.total_steps), job.job_id.clone())
            }
            _ => (0.0, 0.0, (0, 0), String::new()),
        };
        let current_image = running
            .as_ref()
            .and_then(|j| shared.events.last_preview(&j.job_id))
            .and_then(|p| p.split_once(";base64,").map(|(_, b)| b.to_owned()));
        Json(ProgressResponse {
            progress,
            eta_relative: eta,
            state: ProgressState {
                skipped: false,
                interrupted: false,
                job,
                job_count,
                job_timestamp: unix_seconds().to_string(),
                job_no: 0,
                sampling_step: steps.0,
                sampling_steps: steps.1,
            },
            current_image,
            textinfo: None,
        })
    }

    /// Stop the running job (it ends `cancelled`); A1111 answers `{}`.
    #[oai(path = "/interrupt", method = "post")]
    async fn interrupt(&self) -> Json<Value> {
        self.cancel_running();
        Json(json!({}))
    }

    /// A1111 skips the current image of a batch; a hanga job stops whole, so this stops the
    /// running job as `interrupt` does. A1111 answers `null`.
    #[oai(path = "/skip", method = "post")]
    async fn skip(&self) -> Json<Value> {
        self.cancel_running();
        Json(Value::Null)
    }
}

impl A1111Api {
    /// An A1111 request as a generate body: its model (`override_settings` or the options'
    /// checkpoint), prompt without `<lora:...>` tags and those LoRAs, sizes, sampler names.
    fn generate_body(&self, request: &Txt2ImgRequest) -> Result<Value, ImagesAnswer> {
        let state = &self.state;
        let model = match request
            .override_settings
            .as_ref()
            .and_then(|o| o.get("sd_model_checkpoint"))
            .and_then(Value::as_str)
        {
            Some(name) => model_of(name).to_owned(),
            None => match self.checkpoint.read().expect("checkpoint lock").clone() {
                Some(id) => id,
                None => {
                    return Err(invalid(
                        "override_settings",
                        "the server has no model".into(),
                        None,
                    ));
                }
            },
        };
        let Ok(manifest) = state.shared.registry.get(&model) else {
            let msg = format!("model `{model}` not found; GET /sdapi/v1/sd-models lists them");
            return Err(invalid("override_settings", msg, Some(json!(model))));
        };
        let options = FamilyOptions::of(manifest.family);
        let (prompt, tags) = lora_tags(request.prompt.as_deref().unwrap_or_default());
        let mut generate = json!({"prompt": prompt, "model": model});
        let batch = request.batch_size.unwrap_or(1).max(1) * request.n_iter.unwrap_or(1).max(1);
        generate["num_images"] = batch.into();
        for (field, value) in [
            ("width", request.width),
            ("height", request.height),
            ("steps", request.steps),
        ] {
            if let Some(value) = value {
                generate[field] = value.into();
            }
        }
        // A1111 clients send every field; a family that takes no CFG or negative prompt
        // (Flux, Z-Image) leaves them out rather than refusing the request.
        if let Some(cfg) = request.cfg_scale.filter(|_| options.guidance) {
            generate["guidance_scale"] = cfg.into();
        }
        if let Some(negative) = request
            .negative_prompt
            .as_ref()
            .filter(|n| options.negative_prompt && !n.is_empty())
        {
            generate["negative_prompt"] = negative.clone().into();
        }
        if let Some(seed) = request.seed.filter(|&s| s >= 0) {
            generate["seed"] = seed.into();
        }
        if !tags.is_empty() {
            generate["loras"] = tags
                .iter()
                .map(|(id, weight)| json!({"id": id, "weight": weight}))
                .collect();
        }
        let sampler = request
            .sampler_name
            .as_deref()
            .or(request.sampler_index.as_deref());
        if let Some(sampler) = sampler {
            match sampler_and_scheduler(sampler, request.scheduler.as_deref()) {
                Ok((kind, schedule)) => {
                    generate["sampler"] = kind.name().into();
                    if let Some(schedule) = schedule {
                        generate["scheduler"] = schedule.name().into();
                    }
                }
                Err((field, msg)) => return Err(invalid(field, msg, Some(json!(sampler)))),
            }
        }
        Ok(generate)
    }

    /// Submits a generate body and answers with its images once made; `parameters` is the
    /// request as A1111 echoes it.
    async fn run(&self, generate: &Value, parameters: Value) -> ImagesAnswer {
        let state = &self.state;
        let (job, _) = match submit_generate(state, generate) {
            Ok(accepted) => accepted,
            Err(SubmitError::Invalid(errors)) => {
                let detail = errors
                    .detail
                    .into_iter()
                    .map(|mut item| {
                        if let Some(field) = item.loc.get_mut(1) {
                            *field = a1111_field(field).to_owned();
                        }
                        item
                    })
                    .collect();
                return ImagesAnswer::Invalid(Json(ValidationErrors { detail }));
            }
            Err(SubmitError::Full) => {
                return ImagesAnswer::Busy(error("the queue is full; retry later"));
            }
            Err(SubmitError::Internal(e)) => return ImagesAnswer::Failed(error(e)),
        };
        let job = match completed_job(state, &job.job_id, WAIT).await {
            Ok(job) => job,
            Err(why) => return ImagesAnswer::Failed(error(why)),
        };
        match answer(state, &job, parameters) {
            Ok(answer) => ImagesAnswer::Ok(Json(answer)),
            Err(e) => ImagesAnswer::Failed(error(e)),
        }
    }

    fn cancel_running(&self) {
        let queue = &self.state.shared.queue;
        if let Some(id) = queue.running_id() {
            let _ = queue.cancel(&id);
        }
    }
}

/// A finished job as A1111's answer: the PNGs, the request, and `info` with each image's
/// parameters text.
fn answer(state: &AppState, job: &Job, parameters: Value) -> Result<TextToImageResponse, String> {
    let mut images = Vec::new();
    let mut infotexts = Vec::new();
    for name in &job.images {
        let bytes = state
            .shared
            .store
            .read_image(name)
            .map_err(|e| e.to_string())?;
        infotexts.push(read_parameters(&bytes).unwrap_or_default());
        images.push(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    let params = job
        .params
        .as_ref()
        .ok_or("a generate job without parameters")?;
    let count = job.images.len() as u64;
    let seeds: Vec<u64> = (0..count).map(|i| params.seed.wrapping_add(i)).collect();
    let negative = params.negative_prompt.clone().unwrap_or_default();
    let info = json!({
        "prompt": params.prompt, "all_prompts": vec![&params.prompt; count as usize],
        "negative_prompt": negative, "all_negative_prompts": vec![&negative; count as usize],
        "seed": params.seed, "all_seeds": seeds, "subseed": -1, "all_subseeds": vec![-1; count as usize],
        "subseed_strength": 0, "width": params.width, "height": params.height,
        "sampler_name": params.sampler.a1111_name(), "scheduler": params.scheduler.name(),
        "cfg_scale": params.guidance_scale, "steps": params.steps, "batch_size": count,
        "denoising_strength": params.init_image.as_ref().map(|i| i.strength),
        "sd_model_name": job.model, "infotexts": infotexts, "job_id": job.job_id,
        "job_timestamp": unix_seconds().to_string(),
    });
    Ok(TextToImageResponse {
        images,
        parameters,
        info: info.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_tags_leave_the_prompt() {
        let (prompt, loras) = lora_tags("a cat <lora:kohya_style:0.8>, sitting <lora:other>");
        assert_eq!(prompt, "a cat , sitting");
        assert_eq!(loras, [("kohya_style".into(), 0.8), ("other".into(), 1.0)]);
    }

    #[test]
    fn samplers_and_schedulers_by_a1111_names() {
        let read = |s: &str, sch: Option<&str>| sampler_and_scheduler(s, sch).ok();
        assert_eq!(
            read("Euler a", None),
            Some((SamplerKind::EulerAncestral, None))
        );
        assert_eq!(
            read("DPM++ 2M Karras", Some("automatic")),
            Some((SamplerKind::DpmPp2m, Some(ScheduleKind::Karras)))
        );
        assert_eq!(
            read("DPM++ 2M", Some("Karras")),
            Some((SamplerKind::DpmPp2m, Some(ScheduleKind::Karras)))
        );
        assert!(read("LMS", None).is_none());
        assert!(read("Euler", Some("exponential")).is_none());
        assert_eq!(model_of("sdxl-tiny-demo [0123abcd]"), "sdxl-tiny-demo");
    }
}
