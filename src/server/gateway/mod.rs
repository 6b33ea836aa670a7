//! The gateway under `/v1/api` on the native port: chat requests, generation status, cancel
//! and queue, model listing; its WebSocket at `/v1/ws` (ws.rs). Its own envelope and error format (views.rs); its jobs are the
//! same jobs as everywhere else (`submit.rs`), so they show in the gallery and `/api/jobs`.

mod views;
pub mod ws;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use poem::http::StatusCode;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::{ParseFromJSON, ToJSON};
use poem_openapi::{ApiResponse, OpenApi, Tags};
use serde_json::{Value, json};

use super::AppState;
use super::submit::{SubmitError, submit_generate};
use super::validation::{NO_CHECKER, ValidationErrors, model_defaults, parameter_schema};
use crate::chat::{self, Orientation, Reason};
use crate::queue::{Job, JobStatus, QueueError};
use crate::registry::Manifest;
use views::*;

pub struct GatewayApi(pub Arc<AppState>);

#[derive(Tags)]
enum Tag {
    /// The gateway: chat requests, generation status, models.
    Gateway,
}

pub fn request_id() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
}

/// The gateway's error body.
pub fn failure(code: &str, message: impl Into<String>, details: Option<Value>) -> Json<Failure> {
    Json(Failure {
        success: false,
        error: ErrorDetail {
            code: code.into(),
            message: message.into(),
            details,
        },
        request_id: request_id(),
    })
}

fn envelope<T: ParseFromJSON + ToJSON>(data: T) -> Json<Envelope<T>> {
    Json(Envelope {
        success: true,
        data,
        request_id: request_id(),
    })
}

/// A route's answers: its 200 payload, 400 for a request poem-openapi cannot parse
/// (`INVALID_REQUEST`), and the error answers named (variant = status: what).
macro_rules! gateway_response {
    ($name:ident, $data:ty $(, $variant:ident = $status:literal : $doc:literal)*) => {
        #[derive(ApiResponse)]
        #[oai(bad_request_handler = "bad_request")]
        // One answer per request, moved once: boxing the large payloads would buy nothing.
        #[allow(clippy::large_enum_variant)]
        enum $name {
            #[oai(status = 200)]
            Ok(Json<Envelope<$data>>),
            /// `INVALID_REQUEST`: a field is missing or of the wrong type, a parameter is out
            /// of range.
            #[oai(status = 400)]
            BadRequest(Json<Failure>),
            $(
                #[doc = $doc]
                #[oai(status = $status)]
                $variant(Json<Failure>),
            )*
        }

        impl From<Json<Failure>> for $name {
            fn from(f: Json<Failure>) -> Self {
                $name::BadRequest(f)
            }
        }
    };
}

gateway_response!(ChatResponse, ChatData,
    NotFound = 404: "`MODEL_NOT_FOUND`: `options.model` is not a model here.",
    Unprocessable = 422: "`INVALID_PROMPT`: the parameters the message asks for do not fit the model.",
    Busy = 429: "`QUEUE_FULL`.",
    Internal = 500: "`GENERATION_FAILED`: the job could not be queued.",
    Unavailable = 503: "`NSFW_CHECKER_UNAVAILABLE`: a filter was asked for and no checker is set up.");
gateway_response!(HistoryResponse, ChatHistory,
    Internal = 500: "`INTERNAL`: the history could not be read.");
gateway_response!(StatusResponse, GenerationStatus,
    NotFound = 404: "`PROMPT_NOT_FOUND`.");
gateway_response!(CancelResponse, Cancelled,
    NotFound = 404: "`PROMPT_NOT_FOUND`.",
    Conflict = 409: "`ALREADY_FINISHED`.",
    Internal = 500: "`GENERATION_FAILED`.");
gateway_response!(QueueResponse, QueueSummary);
gateway_response!(ModelListResponse, ModelList);
gateway_response!(ModelInfoResponse, ModelDetails,
    NotFound = 404: "`MODEL_NOT_FOUND`.",
    Internal = 500: "`GENERATION_FAILED`: the model's manifest defaults do not resolve.");

pub mod nsfw;
pub mod workflows;

/// What poem-openapi refused before a handler ran (a body that is not JSON or lacks a field,
/// a query parameter out of range), as the gateway's 400.
fn bad_request<R: From<Json<Failure>>>(error: poem::Error) -> R {
    let status = error.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "PAYLOAD_TOO_LARGE"
    } else {
        "INVALID_REQUEST"
    };
    R::from(failure(code, error.to_string(), None))
}

/// The details of a generate body that did not validate: the body, and FastAPI's detail list.
fn invalid_generate_details(body: &Value, errors: &ValidationErrors) -> Value {
    let detail: Vec<Value> = errors
        .detail
        .iter()
        .map(|e| json!({"loc": e.loc, "msg": e.msg}))
        .collect();
    json!({"parameters": body, "detail": detail})
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds per sampling step on this server: the mean over the finished jobs that measured one
/// (generate time over steps), newest 50.
fn seconds_per_step(state: &AppState) -> Option<f64> {
    let finished = state
        .shared
        .queue
        .list(Some(JobStatus::Completed), 50, None);
    let (ms, steps) = finished
        .iter()
        .filter_map(|(job, _)| Some((job.timings.generate_ms?, job.total_steps)))
        .filter(|(_, steps)| *steps > 0)
        .fold((0u64, 0u64), |(ms, steps), (m, s)| {
            (ms + m, steps + u64::from(s))
        });
    (steps > 0).then(|| ms as f64 / 1000.0 / steps as f64)
}

fn status_of(state: &AppState, job: &Job, position: Option<usize>) -> GenerationStatus {
    let total = job.total_steps.max(1);
    let done = matches!(job.status, JobStatus::Completed);
    let left_steps = if job.status.is_finished() {
        0
    } else {
        job.total_steps.saturating_sub(job.step)
    };
    let estimated_remaining = if job.status.is_finished() {
        Some(0.0)
    } else {
        seconds_per_step(state).map(|s| s * f64::from(left_steps))
    };
    let params = job.params.as_ref();
    let results = job
        .images
        .iter()
        .enumerate()
        .map(|(i, filename)| GenerationResult {
            filename: filename.clone(),
            url: format!("/api/images/{filename}"),
            thumb_url: format!("/api/thumbs/{filename}"),
            metadata: ResultMetadata {
                model: job.model.clone(),
                prompt: params.map(|p| p.prompt.clone()).unwrap_or_default(),
                seed: params.map_or(0, |p| p.seed + i as u64),
                width: params.map_or(0, |p| p.width as u32),
                height: params.map_or(0, |p| p.height as u32),
            },
        })
        .collect();
    GenerationStatus {
        prompt_id: job.job_id.clone(),
        status: job.status,
        progress: if done {
            100.0
        } else {
            (f64::from(job.step) * 100.0 / f64::from(total)).min(100.0)
        },
        step: job.step,
        total_steps: job.total_steps,
        queue_position: position.map(|p| p as u32),
        estimated_remaining,
        results,
        error: job.error.clone(),
    }
}

fn summary(state: &AppState, manifest: &Manifest) -> ModelSummary {
    ModelSummary {
        id: manifest.id.clone(),
        name: manifest.name.clone(),
        kind: manifest.family.name().into(),
        category: manifest.catalog.category.clone(),
        tags: manifest.catalog.tags.clone(),
        default: state.default_model.as_deref() == Some(manifest.id.as_str()),
    }
}

fn reason_view(r: &Reason) -> ParsedReason {
    parsed_reason(r.parameter, r.words.clone())
}

/// Why a parameter has its value: the words (or the option) that chose it.
fn parsed_reason(parameter: &str, words: String) -> ParsedReason {
    ParsedReason {
        parameter: parameter.into(),
        words,
    }
}

#[OpenApi(prefix_path = "/v1/api", tag = "Tag::Gateway")]
impl GatewayApi {
    /// Turn a chat message into a generation and queue it.
    ///
    /// The message is read by rules (README: "The gateway"): its subject is the prompt; counts
    /// (「3枚」, "three images"), orientation (縦長/portrait, 横長/landscape, 正方形/square, or
    /// `1024x768`), negatives (「〜なし」, "without ..."), a seed, and style words (anime,
    /// realistic) that choose a model by the manifests' catalog. `parsed` says what was
    /// understood and from which words.
    #[oai(path = "/chat/process", method = "post")]
    async fn chat_process(&self, body: Json<ChatRequest>) -> ChatResponse {
        let state = &self.0;
        let request = body.0;
        let options = request.options.clone().unwrap_or_default();
        let nsfw_filter = options.nsfw_filter == Some(true);
        if nsfw_filter && state.shared.registry.checker().is_none() {
            return ChatResponse::Unavailable(failure(
                "NSFW_CHECKER_UNAVAILABLE",
                NO_CHECKER,
                None,
            ));
        }
        let understood = chat::understand(&request.message.0);
        if understood.prompt.is_empty() {
            return ChatResponse::BadRequest(failure(
                "INVALID_PROMPT",
                "the message names nothing to draw once its instructions are read",
                Some(json!({"message": request.message.0})),
            ));
        }
        let mut because: Vec<ParsedReason> = understood.because.iter().map(reason_view).collect();
        let style = match options.style.as_ref().map(|t| t.0.as_str()) {
            Some(style) => {
                because.push(parsed_reason("style", format!("options.style = {style}")));
                Some(style.to_lowercase())
            }
            None => understood.style.map(str::to_owned),
        };
        let Some(default_model) = state.default_model.as_deref() else {
            return ChatResponse::NotFound(failure(
                "MODEL_NOT_FOUND",
                "the server has no model",
                None,
            ));
        };
        let model = match options.model.as_ref().map(|t| t.0.as_str()) {
            Some(id) => {
                if state.shared.registry.get(id).is_err() {
                    return ChatResponse::NotFound(failure(
                        "MODEL_NOT_FOUND",
                        format!("no model `{id}`; GET /v1/api/models/list lists them"),
                        None,
                    ));
                }
                because.push(parsed_reason("model", format!("options.model = {id}")));
                id.to_owned()
            }
            None => {
                let (id, why) =
                    chat::choose_model(style.as_deref(), &state.shared.registry, default_model);
                because.extend(why.as_ref().map(reason_view));
                id
            }
        };
        let manifest = state.shared.registry.get(&model).expect("a known model");
        let Some(base) = model_defaults(manifest) else {
            return ChatResponse::Internal(failure(
                "GENERATION_FAILED",
                format!("model `{model}`: its manifest's [defaults] do not resolve"),
                None,
            ));
        };
        let (width, height) = match (understood.size, understood.orientation) {
            (Some(size), _) => size,
            (None, Some(o)) => chat::dimensions(o, (base.width as u32, base.height as u32)),
            (None, None) => (base.width as u32, base.height as u32),
        };
        let steps = match options.quality.as_ref().map(|t| t.0.as_str()) {
            Some(quality) => match chat::preset_steps(quality, base.steps as u32) {
                Some(steps) => {
                    because.push(parsed_reason(
                        "steps",
                        format!("options.quality = {quality}"),
                    ));
                    steps
                }
                None => {
                    return ChatResponse::BadRequest(failure(
                        "INVALID_REQUEST",
                        format!("options.quality `{quality}` is not draft, standard or high"),
                        None,
                    ));
                }
            },
            None => base.steps as u32,
        };
        let num_images = understood.num_images.unwrap_or(1);
        let mut generate = json!({
            "prompt": understood.prompt, "model": model, "width": width, "height": height,
            "steps": steps, "num_images": num_images,
        });
        if let Some(negative) = &understood.negative_prompt {
            generate["negative_prompt"] = negative.clone().into();
        }
        if let Some(seed) = understood.seed {
            generate["seed"] = seed.into();
        }
        if nsfw_filter {
            generate["nsfw_filter"] = true.into();
        }
        let (job, _) = match submit_generate(state, &generate) {
            Ok(accepted) => accepted,
            Err(SubmitError::Invalid(errors)) => {
                return ChatResponse::Unprocessable(failure(
                    "INVALID_PROMPT",
                    "the parameters the message asks for do not fit the model",
                    Some(invalid_generate_details(&generate, &errors)),
                ));
            }
            Err(SubmitError::Full) => {
                return ChatResponse::Busy(failure(
                    "QUEUE_FULL",
                    "the queue is full; retry later",
                    None,
                ));
            }
            Err(SubmitError::Internal(e)) => {
                return ChatResponse::Internal(failure("GENERATION_FAILED", e, None));
            }
        };
        let parsed = Parsed {
            prompt: understood.prompt.clone(),
            negative_prompt: understood.negative_prompt.clone(),
            model: model.clone(),
            width,
            height,
            steps,
            num_images,
            seed: understood.seed,
            style,
            quality: options.quality.as_ref().map(|t| t.0.clone()),
            because,
        };
        let reply = format!(
            "Making {num_images} image{} of “{}” with {model} at {width}×{height}, {steps} steps{}.",
            if num_images == 1 { "" } else { "s" },
            parsed.prompt,
            parsed
                .negative_prompt
                .as_ref()
                .map_or(String::new(), |n| format!(", without {n}")),
        );
        let session_id = request
            .session_id
            .map(|s| s.0)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("sess_{}", uuid::Uuid::new_v4().simple()));
        let record = ChatMessage {
            id: 0,
            user_id: request.user_id.as_ref().map(|u| u.0.clone()),
            session_id: session_id.clone(),
            message: request.message.0.clone(),
            reply: reply.clone(),
            prompt_id: job.job_id.clone(),
            parsed: parsed.clone(),
            created_at: now_millis(),
        };
        let saved = state.shared.store.next_chat_id().and_then(|id| {
            let record = ChatMessage { id, ..record };
            state
                .shared
                .store
                .put_chat(id, &record.to_json().expect("a JSON object"))
        });
        if let Err(e) = saved {
            tracing::error!("chat message not saved: {e}");
        }
        ChatResponse::Ok(envelope(ChatData {
            prompt_id: job.job_id,
            status: job.status,
            session_id,
            reply,
            parsed,
        }))
    }

    /// Chat messages and what they were read as, newest first.
    #[oai(path = "/chat/history", method = "get")]
    async fn chat_history(
        &self,
        user_id: Query<Option<String>>,
        session_id: Query<Option<String>>,
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<u32>,
        #[oai(default, validator(minimum(value = "0"), maximum(value = "1000000")))] offset: Query<
            u32,
        >,
    ) -> HistoryResponse {
        let all = match self.0.shared.store.chat_messages() {
            Ok(all) => all,
            Err(e) => return HistoryResponse::Internal(failure("INTERNAL", e.to_string(), None)),
        };
        let matching: Vec<ChatMessage> = all
            .into_iter()
            .filter_map(|v| ChatMessage::parse_from_json(Some(v)).ok())
            .filter(|m| {
                user_id
                    .0
                    .as_ref()
                    .is_none_or(|u| m.user_id.as_ref() == Some(u))
            })
            .filter(|m| session_id.0.as_ref().is_none_or(|s| &m.session_id == s))
            .collect();
        let total = matching.len() as u64;
        let messages = matching
            .into_iter()
            .skip(offset.0 as usize)
            .take(limit.0 as usize)
            .collect();
        HistoryResponse::Ok(envelope(ChatHistory {
            messages,
            total,
            limit: limit.0,
            offset: offset.0,
        }))
    }

    /// A generation's progress, estimated time left and results.
    #[oai(path = "/generation/status/:prompt_id", method = "get")]
    async fn generation_status(&self, prompt_id: Path<String>) -> StatusResponse {
        match self.0.shared.queue.get(&prompt_id) {
            Some((job, position)) => {
                StatusResponse::Ok(envelope(status_of(&self.0, &job, position)))
            }
            None => StatusResponse::NotFound(failure(
                "PROMPT_NOT_FOUND",
                format!("no generation `{}`", prompt_id.0),
                None,
            )),
        }
    }

    /// Cancel a generation: queued, it leaves the queue; running, it stops after its step.
    #[oai(path = "/generation/cancel/:prompt_id", method = "post")]
    async fn generation_cancel(&self, prompt_id: Path<String>) -> CancelResponse {
        let queue = &self.0.shared.queue;
        match queue.cancel(&prompt_id) {
            Ok(job) => CancelResponse::Ok(envelope(Cancelled {
                prompt_id: job.job_id,
                status: job.status,
            })),
            Err(QueueError::NotFound) => CancelResponse::NotFound(failure(
                "PROMPT_NOT_FOUND",
                format!("no generation `{}`", prompt_id.0),
                None,
            )),
            Err(QueueError::AlreadyFinished(s)) => CancelResponse::Conflict(failure(
                "ALREADY_FINISHED",
                format!("generation `{}` is already {}", prompt_id.0, s.name()),
                None,
            )),
            Err(e) => {
                CancelResponse::Internal(failure("GENERATION_FAILED", format!("{e:?}"), None))
            }
        }
    }

    /// The queue: pending and running jobs, jobs completed today, the wait a new job faces.
    #[oai(path = "/generation/queue", method = "get")]
    async fn generation_queue(&self) -> QueueResponse {
        let state = &self.0;
        let (running, waiting) = state.shared.queue.running_and_waiting();
        let midnight = now_millis() / 86_400_000 * 86_400_000;
        let completed_today = state
            .shared
            .queue
            .list(Some(JobStatus::Completed), 10_000, None)
            .iter()
            .filter(|(job, _)| job.finished_at.is_some_and(|t| t >= midnight))
            .count();
        let steps_left: u64 = running
            .iter()
            .map(|j| u64::from(j.total_steps.saturating_sub(j.step)))
            .chain(waiting.iter().map(|j| u64::from(j.total_steps)))
            .sum();
        QueueResponse::Ok(envelope(QueueSummary {
            pending: waiting.len() as u32,
            running: running.is_some() as u32,
            completed_today: completed_today as u32,
            estimated_wait_time: seconds_per_step(state).map(|s| s * steps_left as f64),
        }))
    }

    /// The models, optionally of one type (family) or category.
    #[oai(path = "/models/list", method = "get")]
    async fn models_list(
        &self,
        /// A family: sdxl, flux-dev, flux-schnell, chroma, z-image-turbo.
        #[oai(name = "type")]
        kind: Query<Option<String>>,
        category: Query<Option<String>>,
    ) -> ModelListResponse {
        let state = &self.0;
        let models = state
            .shared
            .registry
            .models()
            .filter(|m| kind.0.as_ref().is_none_or(|k| m.family.name() == k))
            .filter(|m| {
                category.0.as_ref().is_none_or(|c| {
                    m.catalog
                        .category
                        .as_ref()
                        .is_some_and(|mc| mc.eq_ignore_ascii_case(c))
                })
            })
            .map(|m| summary(state, m))
            .collect();
        ModelListResponse::Ok(envelope(ModelList { models }))
    }

    /// One model: recommended settings, the sizes chat requests use, licence, parameter limits.
    #[oai(path = "/models/info/:model_id", method = "get")]
    async fn models_info(&self, model_id: Path<String>) -> ModelInfoResponse {
        let state = &self.0;
        let Ok(manifest) = state.shared.registry.get(&model_id) else {
            return ModelInfoResponse::NotFound(failure(
                "MODEL_NOT_FOUND",
                format!("no model `{}`", model_id.0),
                None,
            ));
        };
        let Some(base) = model_defaults(manifest) else {
            return ModelInfoResponse::Internal(failure(
                "GENERATION_FAILED",
                format!(
                    "model `{}`: its manifest's [defaults] do not resolve",
                    manifest.id
                ),
                None,
            ));
        };
        let default_size = (base.width as u32, base.height as u32);
        let resolutions = [
            ("square", Orientation::Square),
            ("portrait", Orientation::Portrait),
            ("landscape", Orientation::Landscape),
        ]
        .into_iter()
        .map(|(name, o)| {
            let (width, height) = chat::dimensions(o, default_size);
            Resolution {
                width,
                height,
                orientation: name.into(),
            }
        })
        .collect();
        let library = state.shared.loras.read().expect("loras lock");
        ModelInfoResponse::Ok(envelope(ModelDetails {
            summary: summary(state, manifest),
            description: manifest.description.clone(),
            license: manifest.catalog.license.clone(),
            recommended: Recommended {
                steps: base.steps as u32,
                cfg: f64::from(base.guidance_scale),
                sampler: base.sampler.name().into(),
                scheduler: base.scheduler.name().into(),
            },
            resolutions,
            parameters: parameter_schema(
                manifest,
                &library,
                state.shared.registry.checker().is_some(),
            ),
        }))
    }
}

fn default_limit() -> u32 {
    20
}
