//! OpenAI's images API on the native port: `POST /v1/images/generations` and `GET /v1/models`,
//! so the official SDKs and the front-ends built on them (Open WebUI's `openai` engine) drive
//! hanga. Shapes as the `openai` Python SDK types them (`types/images_response.py`,
//! `types/model.py`), errors as its `{"error": {"message", "type", "param", "code"}}`. A request
//! becomes a generate body and goes through the same submission as `POST /api/generate`; the
//! answer waits for the job, as OpenAI's does.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use poem::Request;
use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use serde_json::json;

use super::AppState;
use super::submit::{SubmitError, job_end, submit_generate};
use super::validation::{ValidationErrors, model_defaults};
use crate::chat::preset_steps;
use crate::queue::{Job, JobStatus};

/// How long a request waits for its images.
const WAIT: Duration = Duration::from_secs(600);

pub struct OpenAiApi(pub Arc<AppState>);

#[derive(Tags)]
enum Tag {
    /// OpenAI's images API (`/v1/images`, `/v1/models`), for the OpenAI SDKs and Open WebUI.
    OpenAi,
}

#[derive(Object)]
#[oai(rename = "OpenAIError")]
pub struct OpenAiError {
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error`, `server_error`.
    #[oai(rename = "type")]
    pub kind: String,
    /// The request field at fault.
    #[oai(nullable)]
    pub param: Option<String>,
    #[oai(nullable)]
    pub code: Option<String>,
}

/// OpenAI's error body.
#[derive(Object)]
#[oai(rename = "OpenAIErrorResponse")]
pub struct ErrorBody {
    pub error: OpenAiError,
}

/// The `type` OpenAI's API gives an error of `status`.
pub fn error_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "rate_limit_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    }
}

/// An OpenAI error body; `code` as the other faces name it, lower-cased as OpenAI's are.
pub fn error_body(
    status: StatusCode,
    message: String,
    param: Option<String>,
    code: &str,
) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: OpenAiError {
            message,
            kind: error_kind(status).into(),
            param,
            code: Some(code.to_lowercase()),
        },
    })
}

#[derive(Object)]
#[oai(rename = "OpenAIImageGenerationRequest")]
pub struct ImageGenerationRequest {
    /// What to draw.
    pub prompt: String,
    /// A model id of this server (`GET /v1/models`); OpenAI's names (`dall-e-2`, `dall-e-3`,
    /// `gpt-image-1`, ...) and absent mean the default model.
    pub model: Option<String>,
    /// How many images, 1 to 8.
    pub n: Option<i64>,
    /// `WIDTHxHEIGHT` within the model's limits (multiples of 8 for SDXL, 16 for the
    /// transformer families, 64 to 2048), or `auto`: the model's default size.
    pub size: Option<String>,
    /// `low` (half the model's steps), `medium` / `standard` / `auto` (its steps), `high` /
    /// `hd` (one and a half times).
    pub quality: Option<String>,
    /// `b64_json` (default) or `url`: a gallery URL on this server's address (or
    /// `--public-url`).
    pub response_format: Option<String>,
    /// `png` (default, with A1111's parameters text), `jpeg` or `webp` (lossless), for
    /// `b64_json`.
    pub output_format: Option<String>,
    /// Who asked, as the client names them; logged with the job.
    pub user: Option<String>,
}

#[derive(Object)]
#[oai(rename = "OpenAIImage")]
pub struct ImageData {
    #[oai(skip_serializing_if_is_none)]
    pub b64_json: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub url: Option<String>,
    /// The prompt the image was made from (with a LoRA's trigger words, where added).
    pub revised_prompt: String,
}

/// `ImagesResponse`.
#[derive(Object)]
#[oai(rename = "OpenAIImagesResponse")]
pub struct ImagesResponse {
    /// Unix seconds.
    pub created: i64,
    pub data: Vec<ImageData>,
    /// The format of `b64_json` (`png` for URLs, which are the gallery's PNGs).
    pub output_format: String,
}

#[derive(Object)]
#[oai(rename = "OpenAIModel")]
pub struct ModelObject {
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds: when the model's manifest or folder last changed.
    pub created: i64,
    pub owned_by: String,
}

#[derive(Object)]
#[oai(rename = "OpenAIModelList")]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelObject>,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
pub enum GenerationResponse {
    #[oai(status = 200)]
    Ok(Json<ImagesResponse>),
    /// A field is missing or of the wrong type, or a value does not fit the model.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The queue is full.
    #[oai(status = 429)]
    Busy(Json<ErrorBody>),
    /// The generation failed.
    #[oai(status = 500)]
    Failed(Json<ErrorBody>),
}

/// What poem-openapi refused before the handler ran, in OpenAI's shape.
fn bad_request(error: poem::Error) -> GenerationResponse {
    let status = error.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "payload_too_large"
    } else {
        "invalid_request"
    };
    GenerationResponse::BadRequest(error_body(
        StatusCode::BAD_REQUEST,
        error.to_string(),
        None,
        code,
    ))
}

fn invalid(message: impl Into<String>, param: &str) -> GenerationResponse {
    GenerationResponse::BadRequest(error_body(
        StatusCode::BAD_REQUEST,
        message.into(),
        Some(param.into()),
        "invalid_value",
    ))
}

/// OpenAI's name of a generate field, for `param`.
fn openai_param(field: &str) -> &str {
    match field {
        "width" | "height" => "size",
        "num_images" => "n",
        "steps" => "quality",
        other => other,
    }
}

fn validation_error(errors: &ValidationErrors) -> GenerationResponse {
    let first = errors.detail.first();
    let param = first
        .and_then(|e| e.loc.get(1))
        .map(|f| openai_param(f).to_owned());
    let message = errors
        .detail
        .iter()
        .map(|e| format!("{}: {}", e.loc.last().map_or("body", String::as_str), e.msg))
        .collect::<Vec<_>>()
        .join("; ");
    GenerationResponse::BadRequest(error_body(
        StatusCode::BAD_REQUEST,
        message,
        param,
        first.map_or("invalid_value", |e| e.kind.as_str()),
    ))
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// OpenAI's own model names: they mean "the default model" here.
fn is_openai_name(model: &str) -> bool {
    model.starts_with("dall-e") || model.starts_with("gpt-image")
}

/// The origin gallery URLs start with: `--public-url`, else the address the request was sent
/// to.
fn origin(state: &AppState, request: &Request) -> String {
    match &state.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let host = request
                .header(poem::http::header::HOST)
                .unwrap_or("127.0.0.1");
            format!("http://{host}")
        }
    }
}

/// An image file of the gallery in `format` (`png`: the stored file).
fn encoded(bytes: Vec<u8>, format: &str) -> Result<Vec<u8>, String> {
    if format == "png" {
        return Ok(bytes);
    }
    let image = image::load_from_memory(&bytes)
        .map_err(|e| e.to_string())?
        .to_rgb8();
    Ok(match format {
        "jpeg" => crate::output::preview::jpeg(&image, 95),
        _ => {
            let mut out = Cursor::new(Vec::new());
            image
                .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut out))
                .map_err(|e| e.to_string())?;
            out.into_inner()
        }
    })
}

#[OpenApi(prefix_path = "/v1", tag = "Tag::OpenAi")]
impl OpenAiApi {
    /// Create images from a prompt (OpenAI's `images.generate`).
    #[oai(path = "/images/generations", method = "post")]
    async fn generations(
        &self,
        request: &Request,
        body: Json<ImageGenerationRequest>,
    ) -> GenerationResponse {
        let state = &self.0;
        let body = body.0;
        let model = match body.model.as_deref().filter(|m| !is_openai_name(m)) {
            Some(id) => id.to_owned(),
            None => match &state.default_model {
                Some(id) => id.clone(),
                None => return invalid("the server has no model", "model"),
            },
        };
        let Ok(manifest) = state.shared.registry.get(&model) else {
            return GenerationResponse::BadRequest(error_body(
                StatusCode::BAD_REQUEST,
                format!("The model `{model}` does not exist; GET /v1/models lists them"),
                Some("model".into()),
                "model_not_found",
            ));
        };
        let Some(defaults) = model_defaults(manifest) else {
            return GenerationResponse::Failed(error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("model `{model}`: its manifest's [defaults] do not resolve"),
                None,
                "server_error",
            ));
        };
        let mut generate = json!({"prompt": body.prompt, "model": model,
                                  "num_images": body.n.unwrap_or(1)});
        match body.size.as_deref() {
            None | Some("auto") => {}
            Some(size) => match size
                .split_once('x')
                .map(|(w, h)| (w.parse::<u32>(), h.parse::<u32>()))
            {
                Some((Ok(w), Ok(h))) => {
                    generate["width"] = w.into();
                    generate["height"] = h.into();
                }
                _ => return invalid(format!("size `{size}` is not WIDTHxHEIGHT or auto"), "size"),
            },
        }
        if let Some(quality) = body.quality.as_deref() {
            match preset_steps(quality, defaults.steps as u32) {
                Some(steps) => generate["steps"] = steps.into(),
                None => {
                    return invalid(
                        format!(
                            "quality `{quality}` is not low, medium, high, standard, hd or auto"
                        ),
                        "quality",
                    );
                }
            }
        }
        let as_url = match body.response_format.as_deref() {
            None | Some("b64_json") => false,
            Some("url") => true,
            Some(other) => {
                return invalid(
                    format!("response_format `{other}` is not b64_json or url"),
                    "response_format",
                );
            }
        };
        let format = match body.output_format.as_deref() {
            None | Some("png") => "png",
            Some("jpeg") => "jpeg",
            Some("webp") => "webp",
            Some(other) => {
                return invalid(
                    format!("output_format `{other}` is not png, jpeg or webp"),
                    "output_format",
                );
            }
        };
        let (job, _) = match submit_generate(state, &generate) {
            Ok(accepted) => accepted,
            Err(SubmitError::Invalid(errors)) => return validation_error(&errors),
            Err(SubmitError::Full) => {
                return GenerationResponse::Busy(error_body(
                    StatusCode::TOO_MANY_REQUESTS,
                    "The queue is full; retry later".into(),
                    None,
                    "queue_full",
                ));
            }
            Err(SubmitError::Internal(e)) => {
                return GenerationResponse::Failed(error_body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e,
                    None,
                    "server_error",
                ));
            }
        };
        if let Some(user) = &body.user {
            tracing::info!(job_id = %job.job_id, user, "OpenAI images request");
        }
        let failed = |message: String| {
            GenerationResponse::Failed(error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                message,
                None,
                "server_error",
            ))
        };
        let Some(job) = job_end(state, &job.job_id, WAIT).await else {
            return failed(format!(
                "the images were not made within {} s; they are job `{}`",
                WAIT.as_secs(),
                job.job_id
            ));
        };
        if job.status != JobStatus::Completed {
            return failed(
                job.error
                    .clone()
                    .unwrap_or_else(|| format!("the job was {}", job.status.name())),
            );
        }
        match images(state, &job, as_url.then(|| origin(state, request)), format) {
            Ok(data) => GenerationResponse::Ok(Json(ImagesResponse {
                created: unix_seconds(SystemTime::now()),
                data,
                output_format: if as_url { "png".into() } else { format.into() },
            })),
            Err(e) => failed(e),
        }
    }

    /// The models of this server (OpenAI's `models.list`).
    #[oai(path = "/models", method = "get")]
    async fn models(&self) -> Json<ModelList> {
        let data = self
            .0
            .shared
            .registry
            .models()
            .map(|m| ModelObject {
                id: m.id.clone(),
                object: "model".into(),
                created: std::fs::metadata(&m.dir)
                    .and_then(|meta| meta.modified())
                    .map_or(0, unix_seconds),
                owned_by: "hanga".into(),
            })
            .collect();
        Json(ModelList {
            object: "list".into(),
            data,
        })
    }
}

/// A finished job's images as OpenAI's `data`: gallery URLs under `origin`, or the files.
fn images(
    state: &AppState,
    job: &Job,
    origin: Option<String>,
    format: &str,
) -> Result<Vec<ImageData>, String> {
    let prompt = job
        .params
        .as_ref()
        .map(|p| p.prompt.clone())
        .unwrap_or_default();
    job.images
        .iter()
        .map(|name| {
            let revised_prompt = prompt.clone();
            if let Some(origin) = &origin {
                return Ok(ImageData {
                    b64_json: None,
                    url: Some(format!("{origin}/api/images/{name}")),
                    revised_prompt,
                });
            }
            let store = &state.shared.store;
            let record = store
                .image(name)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("image `{name}` is gone from the gallery"))?;
            let bytes = std::fs::read(store.image_path(&record)).map_err(|e| e.to_string())?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(encoded(bytes, format)?);
            Ok(ImageData {
                b64_json: Some(b64),
                url: None,
                revised_prompt,
            })
        })
        .collect()
}
