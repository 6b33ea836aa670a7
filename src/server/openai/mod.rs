//! OpenAI's images API on the native port: `POST /v1/images/generations`, `POST
//! /v1/images/edits` (image-to-image) and `GET /v1/models`, so the official SDKs and the front-ends built on them (Open WebUI's `openai` engine) drive
//! hanga. Shapes as the `openai` Python SDK types them (`types/images_response.py`,
//! `types/model.py`), errors as its `{"error": {"message", "type", "param", "code"}}`. A request
//! becomes a generate body and goes through the same submission as `POST /api/generate`; the
//! answer waits for the job, as OpenAI's does.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use poem::http::StatusCode;
use poem::web::sse::Event;
use poem::{IntoResponse, Request};
use poem_openapi::payload::{EventStream, Json, Payload};
use poem_openapi::registry::{MetaMediaType, MetaResponses, Registry};
use poem_openapi::types::ToJSON;
use poem_openapi::types::multipart::Upload;
use poem_openapi::{ApiResponse, Multipart, Object, OpenApi, Tags};
use serde_json::json;

use super::AppState;
use super::sse::job_stream;
use super::submit::{SubmitError, completed_job, submit_generate};
use super::validation::{ValidationErrors, model_defaults};
use crate::chat::preset_steps;
use crate::queue::Job;

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
    /// Answer with server-sent events: `image_generation.partial_image` events (latent
    /// previews, as JPEG) while sampling, then one `image_generation.completed` per image.
    pub stream: Option<bool>,
    /// How many partial images to send while streaming, 0 to 3 (default 0).
    pub partial_images: Option<i64>,
}

/// `images.edit`'s form: the image, and the fields of `images/generations`.
#[derive(Multipart)]
pub struct ImageEditRequest {
    /// The image to start from: PNG, JPEG or WebP; one image, as `image` or one `image[]`.
    /// Its size is the output's unless `size` says otherwise (it is then resized, Lanczos).
    pub image: Option<Upload>,
    /// The SDKs' name for a list of images (one here).
    #[oai(rename = "image[]")]
    pub images: Vec<Upload>,
    /// Refused: this server does not inpaint.
    pub mask: Option<Upload>,
    pub prompt: String,
    pub model: Option<String>,
    pub n: Option<i64>,
    /// `WIDTHxHEIGHT`, or `auto` (default): the image's size, down to the model's multiple.
    pub size: Option<String>,
    pub quality: Option<String>,
    pub response_format: Option<String>,
    pub output_format: Option<String>,
    pub user: Option<String>,
    /// Answer with `image_edit.partial_image` and `image_edit.completed` events.
    pub stream: Option<bool>,
    pub partial_images: Option<i64>,
    /// `low` (default): strength 0.75; `high`: strength 0.5, closer to the image.
    pub input_fidelity: Option<String>,
    /// hanga's own: how far the image is noised, over 0 to 1 (the last `int(steps ×
    /// strength)` steps run); overrides `input_fidelity`.
    pub strength: Option<f64>,
}

/// `usage` of a completed stream event. hanga does not count tokens: every count is 0.
#[derive(Object, Clone)]
#[oai(rename = "OpenAIImageUsage")]
pub struct Usage {
    pub input_tokens: u32,
    pub input_tokens_details: TokenDetails,
    pub output_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Object, Clone)]
#[oai(rename = "OpenAIImageTokenDetails")]
pub struct TokenDetails {
    pub image_tokens: u32,
    pub text_tokens: u32,
}

/// `ImageGenPartialImageEvent` / `ImageGenCompletedEvent` (and the `ImageEdit` ones).
#[derive(Object)]
#[oai(rename = "OpenAIImageStreamEvent")]
pub struct StreamEvent {
    /// `image_generation.partial_image` or `image_generation.completed`; `image_edit.*` for
    /// edits.
    #[oai(rename = "type")]
    pub kind: String,
    pub b64_json: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Always `opaque`.
    pub background: String,
    /// `jpeg` for partial images; the requested format for completed ones.
    pub output_format: String,
    /// The request's quality, or `auto`.
    pub quality: String,
    /// `WIDTHxHEIGHT`.
    pub size: String,
    /// Partial images: their order, from 0.
    #[oai(skip_serializing_if_is_none)]
    pub partial_image_index: Option<u32>,
    /// Completed images.
    #[oai(skip_serializing_if_is_none)]
    pub usage: Option<Usage>,
}

/// One server-sent event of a stream: an image event, or the error that ended it.
#[derive(poem_openapi::Union)]
#[oai(rename = "OpenAIImageStreamItem")]
pub enum StreamItem {
    Event(StreamEvent),
    Error(ErrorBody),
}

type ImageEvents = EventStream<BoxStream<'static, StreamItem>>;

/// What `images/generations` answers: the images as JSON, or (`stream: true`) as events.
pub enum Generated {
    Json(GenerationResponse),
    Stream(ImageEvents),
}

impl ApiResponse for Generated {
    const BAD_REQUEST_HANDLER: bool = true;

    /// The JSON answers, with the event stream as the 200's second media type.
    fn meta() -> MetaResponses {
        let mut meta = GenerationResponse::meta();
        for ok in meta.responses.iter_mut().filter(|r| r.status == Some(200)) {
            ok.content.push(MetaMediaType {
                content_type: <ImageEvents as Payload>::CONTENT_TYPE,
                schema: <ImageEvents as Payload>::schema_ref(),
            });
        }
        meta
    }

    fn register(registry: &mut Registry) {
        GenerationResponse::register(registry);
        <ImageEvents as Payload>::register(registry);
    }

    fn from_parse_request_error(error: poem::Error) -> Self {
        Generated::Json(GenerationResponse::from_parse_request_error(error))
    }
}

impl IntoResponse for Generated {
    fn into_response(self) -> poem::Response {
        match self {
            Generated::Json(answer) => answer.into_response(),
            Generated::Stream(events) => events.into_response(),
        }
    }
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
        "init_image" => "image",
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
    ///
    /// Answers once the images are made; with `stream: true`, as server-sent events.
    #[oai(path = "/images/generations", method = "post")]
    async fn generations(
        &self,
        request: &Request,
        body: Json<ImageGenerationRequest>,
    ) -> Generated {
        self.respond(request, accept(&self.0, body.0, None)).await
    }

    /// Edit an image as a prompt says (OpenAI's `images.edit`): image to image from it.
    ///
    /// Answers once the images are made; with `stream: true`, as server-sent events.
    #[oai(path = "/images/edits", method = "post")]
    async fn edits(&self, request: &Request, form: ImageEditRequest) -> Generated {
        let refuse = |message: &str, param: &str| Generated::Json(invalid(message, param));
        if form.mask.is_some() {
            return refuse(
                "inpainting is not available on this server; send the image without a mask",
                "mask",
            );
        }
        let mut images = form.image.into_iter().chain(form.images);
        let (Some(image), None) = (images.next(), images.next()) else {
            return refuse("send one image, as `image`", "image");
        };
        let strength = match (form.strength, form.input_fidelity.as_deref()) {
            (Some(strength), _) => strength,
            (None, None | Some("low")) => 0.75,
            (None, Some("high")) => 0.5,
            (None, Some(other)) => {
                let message = format!("input_fidelity `{other}` is not low or high");
                return refuse(&message, "input_fidelity");
            }
        };
        let bytes = match image.into_vec().await {
            Ok(bytes) => bytes,
            Err(e) => return refuse(&format!("the image could not be read: {e}"), "image"),
        };
        let body = ImageGenerationRequest {
            prompt: form.prompt,
            model: form.model,
            n: form.n,
            size: form.size,
            quality: form.quality,
            response_format: form.response_format,
            output_format: form.output_format,
            user: form.user,
            stream: form.stream,
            partial_images: form.partial_images,
        };
        let edit = Edit {
            image: base64::engine::general_purpose::STANDARD.encode(bytes),
            strength,
        };
        self.respond(request, accept(&self.0, body, Some(edit)))
            .await
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

impl OpenAiApi {
    /// Waits for an accepted job and answers with its images (or streams them), or answers
    /// the refusal.
    async fn respond(
        &self,
        request: &Request,
        accepted: Result<(Job, Answer), GenerationResponse>,
    ) -> Generated {
        let state = &self.0;
        let (job, answer) = match accepted {
            Ok(accepted) => accepted,
            Err(refusal) => return Generated::Json(refusal),
        };
        if answer.stream {
            return Generated::Stream(stream_images(self.0.clone(), job, answer));
        }
        let failed = |message: String| {
            Generated::Json(GenerationResponse::Failed(error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                message,
                None,
                "server_error",
            )))
        };
        let job = match completed_job(state, &job.job_id, WAIT).await {
            Ok(job) => job,
            Err(why) => return failed(why),
        };
        let origin = answer.as_url.then(|| origin(state, request));
        match images(state, &job, origin, answer.format) {
            Ok(data) => Generated::Json(GenerationResponse::Ok(Json(ImagesResponse {
                created: unix_seconds(SystemTime::now()),
                data,
                output_format: if answer.as_url { "png" } else { answer.format }.into(),
            }))),
            Err(e) => failed(e),
        }
    }
}

/// How a request wants its images.
struct Answer {
    /// The stream events' prefix: `image_generation` or `image_edit`.
    events: &'static str,
    as_url: bool,
    format: &'static str,
    stream: bool,
    partial_images: u32,
    quality: String,
}

/// An edit's image (base64) and strength.
struct Edit {
    image: String,
    strength: f64,
}

/// Checks a request (an edit's, with its image) and queues its job.
fn accept(
    state: &AppState,
    body: ImageGenerationRequest,
    edit: Option<Edit>,
) -> Result<(Job, Answer), GenerationResponse> {
    let model = match body.model.as_deref().filter(|m| !is_openai_name(m)) {
        Some(id) => id.to_owned(),
        None => match &state.default_model {
            Some(id) => id.clone(),
            None => return Err(invalid("the server has no model", "model")),
        },
    };
    let Ok(manifest) = state.shared.registry.get(&model) else {
        return Err(GenerationResponse::BadRequest(error_body(
            StatusCode::BAD_REQUEST,
            format!("The model `{model}` does not exist; GET /v1/models lists them"),
            Some("model".into()),
            "model_not_found",
        )));
    };
    let Some(defaults) = model_defaults(manifest) else {
        return Err(GenerationResponse::Failed(error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("model `{model}`: its manifest's [defaults] do not resolve"),
            None,
            "server_error",
        )));
    };
    let mut generate = json!({"prompt": body.prompt, "model": model,
                              "num_images": body.n.unwrap_or(1)});
    let events = match edit {
        Some(edit) => {
            generate["init_image"] = edit.image.into();
            generate["strength"] = edit.strength.into();
            "image_edit"
        }
        None => "image_generation",
    };
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
            _ => {
                return Err(invalid(
                    format!("size `{size}` is not WIDTHxHEIGHT or auto"),
                    "size",
                ));
            }
        },
    }
    if let Some(quality) = body.quality.as_deref() {
        match preset_steps(quality, defaults.steps as u32) {
            Some(steps) => generate["steps"] = steps.into(),
            None => {
                return Err(invalid(
                    format!("quality `{quality}` is not low, medium, high, standard, hd or auto"),
                    "quality",
                ));
            }
        }
    }
    let as_url = match body.response_format.as_deref() {
        None | Some("b64_json") => false,
        Some("url") => true,
        Some(other) => {
            return Err(invalid(
                format!("response_format `{other}` is not b64_json or url"),
                "response_format",
            ));
        }
    };
    let format = match body.output_format.as_deref() {
        None | Some("png") => "png",
        Some("jpeg") => "jpeg",
        Some("webp") => "webp",
        Some(other) => {
            return Err(invalid(
                format!("output_format `{other}` is not png, jpeg or webp"),
                "output_format",
            ));
        }
    };
    let stream = body.stream == Some(true);
    let partial_images = match body.partial_images {
        None => 0,
        Some(n @ 0..=3) => n as u32,
        Some(_) => return Err(invalid("partial_images is 0 to 3", "partial_images")),
    };
    if stream && as_url {
        return Err(invalid(
            "a stream sends its images as b64_json, not url",
            "response_format",
        ));
    }
    let (job, _) = match submit_generate(state, &generate) {
        Ok(accepted) => accepted,
        Err(SubmitError::Invalid(errors)) => return Err(validation_error(&errors)),
        Err(SubmitError::Full) => {
            return Err(GenerationResponse::Busy(error_body(
                StatusCode::TOO_MANY_REQUESTS,
                "The queue is full; retry later".into(),
                None,
                "queue_full",
            )));
        }
        Err(SubmitError::Internal(e)) => {
            return Err(GenerationResponse::Failed(error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                e,
                None,
                "server_error",
            )));
        }
    };
    if let Some(user) = &body.user {
        tracing::info!(job_id = %job.job_id, user, "OpenAI images request");
    }
    let quality = match body.quality.as_deref() {
        Some(q @ ("low" | "medium" | "high")) => q.to_owned(),
        _ => "auto".to_owned(),
    };
    Ok((
        job,
        Answer {
            events,
            as_url,
            format,
            stream,
            partial_images,
            quality,
        },
    ))
}

/// A job's progress as OpenAI's image stream: up to `partial_images` latent previews spread
/// over the steps, then each image; an `{"error"}` event if the job fails. The events come
/// from the job's own event log (the one SSE reads), so none is missed.
fn stream_images(state: Arc<AppState>, job: Job, answer: Answer) -> ImageEvents {
    let (tx, rx) = tokio::sync::mpsc::channel::<StreamItem>(16);
    tokio::spawn(async move {
        let params = job.params.clone();
        let size = params
            .as_ref()
            .map_or_else(String::new, |p| format!("{}x{}", p.width, p.height));
        let event = |kind: &str, b64_json: String, format: &str| StreamEvent {
            kind: format!("{}.{kind}", answer.events),
            b64_json,
            created_at: unix_seconds(SystemTime::now()),
            background: "opaque".into(),
            output_format: format.into(),
            quality: answer.quality.clone(),
            size: size.clone(),
            partial_image_index: None,
            usage: None,
        };
        let Some(mut events) = job_stream(&state, &job.job_id, None) else {
            return;
        };
        let mut sent_partials = 0;
        while let Some(update) = events.next().await {
            match update.status.as_str() {
                "processing" => {
                    let (step, total) = (update.step.unwrap_or(0), update.total_steps.unwrap_or(1));
                    // Partial k goes at the first preview past (k + 1) / (n + 1) of the steps.
                    let due = u64::from(total) * u64::from(sent_partials + 1)
                        <= u64::from(step) * u64::from(answer.partial_images + 1);
                    let jpeg = update
                        .preview
                        .as_deref()
                        .and_then(|p| p.strip_prefix("data:image/jpeg;base64,"));
                    if let (true, true, Some(jpeg)) =
                        (sent_partials < answer.partial_images, due, jpeg)
                    {
                        let partial = StreamEvent {
                            partial_image_index: Some(sent_partials),
                            ..event("partial_image", jpeg.to_owned(), "jpeg")
                        };
                        sent_partials += 1;
                        if tx.send(StreamItem::Event(partial)).await.is_err() {
                            return;
                        }
                    }
                }
                "completed" | "failed" | "cancelled" => break,
                _ => {}
            }
        }
        let outcome = completed_job(&state, &job.job_id, WAIT)
            .await
            .and_then(|done| images(&state, &done, None, answer.format));
        match outcome {
            Ok(data) => {
                for image in data {
                    let usage = Usage {
                        input_tokens: 0,
                        input_tokens_details: TokenDetails {
                            image_tokens: 0,
                            text_tokens: 0,
                        },
                        output_tokens: 0,
                        total_tokens: 0,
                    };
                    let b64 = image.b64_json.unwrap_or_default();
                    let completed = StreamEvent {
                        usage: Some(usage),
                        ..event("completed", b64, answer.format)
                    };
                    if tx.send(StreamItem::Event(completed)).await.is_err() {
                        return;
                    }
                }
            }
            Err(message) => {
                let body = error_body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    message,
                    None,
                    "server_error",
                );
                let _ = tx.send(StreamItem::Error(body.0)).await;
            }
        }
    });
    EventStream::new(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
        .keep_alive(Duration::from_secs(15))
        .to_event(|item| {
            let name = match &item {
                StreamItem::Event(e) => e.kind.clone(),
                StreamItem::Error(_) => "error".into(),
            };
            Event::message(item.to_json_string()).event_type(name)
        })
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
            let bytes = state
                .shared
                .store
                .read_image(name)
                .map_err(|e| e.to_string())?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(encoded(bytes, format)?);
            Ok(ImageData {
                b64_json: Some(b64),
                url: None,
                revised_prompt,
            })
        })
        .collect()
}
