//! The HTTP routes. Handlers parse, call the queue / store / registry, and turn their answers
//! into status codes; nothing here runs a model.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use poem::web::sse::Event;
use poem::{Request, RequestBody};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{Binary, EventStream, Json, Payload, PlainText};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry as SchemaRegistry};
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, OpenApi, Tags};
use tokio_stream::Stream;

use super::AppState;
use super::openapi::GENERATE_BODY;
use super::schemas::*;
use super::sse;
use super::submit::{SubmitError, submit_generate};
use super::validation::{ValidationErrors, parameter_schema};
use crate::queue::{JobStatus, QueueError};
use crate::registry::LoraLibrary;

pub struct Api(pub Arc<AppState>);

#[derive(Tags)]
enum Tag {
    /// Submit, watch and cancel generation jobs.
    Jobs,
    /// Generated images.
    Gallery,
    /// Models and server state.
    Server,
}

pub type EventBox<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// The body of `POST /api/generate`: any JSON, validated field by field so that every problem
/// is reported FastAPI-style. Its schema (`GenerateBody`) depends on the models the server
/// has; `openapi::document` puts it in.
pub struct GenerateJson(Result<serde_json::Value, ValidationErrors>);

impl Payload for GenerateJson {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        content_type.starts_with("application/json")
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Reference(GENERATE_BODY.into())
    }

    /// A placeholder that `openapi::document` replaces.
    fn register(registry: &mut SchemaRegistry) {
        registry.create_schema::<Self, _>(GENERATE_BODY.into(), |_| MetaSchema::new("object"));
    }
}

impl poem_openapi::payload::ParsePayload for GenerateJson {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = <Vec<u8> as poem::FromRequest>::from_request(request, body).await?;
        Ok(GenerateJson(serde_json::from_slice(&data).map_err(|e| {
            ValidationErrors::one(
                vec!["body".into(), e.column().to_string()],
                format!("JSON decode error: {e}"),
                "json_invalid",
            )
        })))
    }
}

poem_openapi::impl_apirequest_for_payload!(GenerateJson,);

/// What poem-openapi could not parse before a handler ran: a query parameter outside its
/// schema (FastAPI's 422 with `loc: ["query", name]`), a missing body (422) or a body that is
/// not JSON (415).
enum Refused {
    Invalid(ValidationErrors),
    UnsupportedMediaType(String),
}

fn refused<R: From<Refused>>(error: poem::Error) -> R {
    use poem_openapi::error::{ContentTypeError, ParseParamError};
    let refusal = if let Some(e) = error.downcast_ref::<ParseParamError>() {
        Refused::Invalid(ValidationErrors::one(
            vec!["query".into(), e.name.into()],
            e.reason.clone(),
            "value_error",
        ))
    } else if let Some(ContentTypeError::NotSupported { content_type }) = error.downcast_ref() {
        Refused::UnsupportedMediaType(format!(
            "`{content_type}` is not supported; send application/json"
        ))
    } else if let Some(ContentTypeError::ExpectContentType) = error.downcast_ref() {
        Refused::Invalid(ValidationErrors::one(
            vec!["body".into()],
            "Field required (a JSON body with Content-Type: application/json)".into(),
            "missing",
        ))
    } else {
        Refused::Invalid(ValidationErrors::one(
            vec!["body".into()],
            error.to_string(),
            "value_error",
        ))
    };
    R::from(refusal)
}

fn error(detail: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        detail: detail.into(),
    })
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "refused")]
enum GenerateResponse {
    /// Accepted: the job is queued; `Location` is the job.
    #[oai(status = 202)]
    Accepted(Json<Accepted>, #[oai(header = "Location")] String),
    /// A field is missing or invalid (FastAPI-style `detail` list).
    #[oai(status = 422)]
    Invalid(Json<ValidationErrors>),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The queue is full; retry after the given seconds.
    #[oai(status = 429)]
    Busy(Json<ErrorBody>, #[oai(header = "Retry-After")] u32),
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

#[derive(ApiResponse)]
enum JobResponse {
    #[oai(status = 200)]
    Ok(Json<Box<JobView>>),
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The job has already finished.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "refused")]
enum JobListResponse {
    #[oai(status = 200)]
    Ok(Json<JobList>),
    /// A query parameter is invalid (FastAPI-style `detail` list).
    #[oai(status = 422)]
    Invalid(Json<ValidationErrors>),
}

#[derive(ApiResponse)]
enum StreamResponse {
    /// `text/event-stream`; each event has an `id:` (resume with `Last-Event-ID`).
    #[oai(status = 200)]
    Stream(
        EventStream<EventBox<JobStreamEvent>>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "X-Accel-Buffering")] String,
    ),
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
}

#[derive(ApiResponse)]
enum GalleryStreamResponse {
    /// `text/event-stream`; one event per new image, `id:` = the image id.
    #[oai(status = 200)]
    Stream(
        EventStream<EventBox<ImageView>>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "X-Accel-Buffering")] String,
    ),
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "refused")]
enum ImageListResponse {
    #[oai(status = 200)]
    Ok(Json<ImageList>),
    /// A query parameter is invalid (FastAPI-style `detail` list).
    #[oai(status = 422)]
    Invalid(Json<ValidationErrors>),
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

/// What `Api::file` found for an image or thumbnail request.
enum Lookup {
    Bytes(Vec<u8>, String),
    NotModified(String),
    NotFound(String),
    Internal(String),
}

#[derive(ApiResponse)]
enum ImageResponse {
    #[oai(status = 200, content_type = "image/png")]
    Png(
        Binary<Vec<u8>>,
        #[oai(header = "ETag")] String,
        #[oai(header = "Cache-Control")] String,
    ),
    #[oai(status = 304)]
    NotModified(#[oai(header = "ETag")] String),
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

impl From<Lookup> for ImageResponse {
    fn from(found: Lookup) -> Self {
        match found {
            Lookup::Bytes(bytes, etag) => Self::Png(Binary(bytes), etag, CACHE_IMMUTABLE.into()),
            Lookup::NotModified(etag) => Self::NotModified(etag),
            Lookup::NotFound(why) => Self::NotFound(error(why)),
            Lookup::Internal(why) => Self::Internal(error(why)),
        }
    }
}

/// The same as [`ImageResponse`] with a JPEG body: an OpenAPI response has one schema per
/// content type, so each route declares its own.
#[derive(ApiResponse)]
enum ThumbResponse {
    #[oai(status = 200, content_type = "image/jpeg")]
    Jpeg(
        Binary<Vec<u8>>,
        #[oai(header = "ETag")] String,
        #[oai(header = "Cache-Control")] String,
    ),
    #[oai(status = 304)]
    NotModified(#[oai(header = "ETag")] String),
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

impl From<Lookup> for ThumbResponse {
    fn from(found: Lookup) -> Self {
        match found {
            Lookup::Bytes(bytes, etag) => Self::Jpeg(Binary(bytes), etag, CACHE_IMMUTABLE.into()),
            Lookup::NotModified(etag) => Self::NotModified(etag),
            Lookup::NotFound(why) => Self::NotFound(error(why)),
            Lookup::Internal(why) => Self::Internal(error(why)),
        }
    }
}

#[derive(ApiResponse)]
enum DeleteResponse {
    #[oai(status = 204)]
    Deleted,
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

#[derive(ApiResponse)]
enum MetricsResponse {
    #[oai(
        status = 200,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )]
    Ok(PlainText<String>),
}

#[derive(ApiResponse)]
enum ReadyResponse {
    #[oai(status = 200)]
    Ready(PlainText<String>),
    #[oai(status = 503)]
    NotReady(PlainText<String>),
}

impl From<Refused> for GenerateResponse {
    fn from(refusal: Refused) -> Self {
        match refusal {
            Refused::Invalid(errors) => Self::Invalid(Json(errors)),
            Refused::UnsupportedMediaType(why) => Self::UnsupportedMediaType(error(why)),
        }
    }
}

/// A list endpoint has no body, so only its query can be refused.
fn invalid_query(refusal: Refused) -> ValidationErrors {
    match refusal {
        Refused::Invalid(errors) => errors,
        Refused::UnsupportedMediaType(why) => {
            ValidationErrors::one(vec!["body".into()], why, "value_error")
        }
    }
}

impl From<Refused> for JobListResponse {
    fn from(refusal: Refused) -> Self {
        Self::Invalid(Json(invalid_query(refusal)))
    }
}

impl From<Refused> for ImageListResponse {
    fn from(refusal: Refused) -> Self {
        Self::Invalid(Json(invalid_query(refusal)))
    }
}

const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn default_page() -> u32 {
    50
}

/// A page cursor: the `next_cursor` of the page before (digits); empty or absent is the first
/// page.
fn parse_cursor(cursor: &Option<String>) -> Option<u64> {
    cursor
        .as_deref()
        .map(str::trim)
        .and_then(|c| c.parse().ok())
}

fn lora_infos(library: &LoraLibrary) -> Vec<LoraInfo> {
    library
        .entries()
        .map(|e| LoraInfo {
            id: e.id.clone(),
            family: e.family.map(|f| f.name().to_owned()),
            rank: e.rank.map(|r| r as u32),
            trigger_words: e.trigger_words.clone(),
            loaded: e.error.is_none(),
            error: e.error.clone(),
        })
        .collect()
}

fn sse_headers() -> (String, String) {
    ("no-cache".into(), "no".into())
}

#[OpenApi]
impl Api {
    /// Queue a text-to-image job.
    ///
    /// Returns at once with the job id; follow it with `GET /api/sse/{job_id}` or
    /// `GET /api/jobs/{job_id}`.
    #[oai(path = "/api/generate", method = "post", tag = "Tag::Jobs")]
    async fn generate(&self, body: GenerateJson) -> GenerateResponse {
        let state = &self.0;
        let body = match body.0 {
            Ok(body) => body,
            Err(errors) => return GenerateResponse::Invalid(Json(errors)),
        };
        match submit_generate(state, &body) {
            Ok((job, position)) => {
                let location = format!("/api/jobs/{}", job.job_id);
                GenerateResponse::Accepted(
                    Json(Accepted {
                        job_id: job.job_id,
                        status: job.status,
                        position: position as u32,
                    }),
                    location,
                )
            }
            Err(SubmitError::Invalid(errors)) => GenerateResponse::Invalid(Json(errors)),
            Err(SubmitError::Full) => {
                GenerateResponse::Busy(error("the queue is full; retry later"), 10)
            }
            Err(SubmitError::Internal(e)) => GenerateResponse::Internal(error(e)),
        }
    }

    /// A job: status, queue position, progress, resolved parameters, images.
    #[oai(path = "/api/jobs/:job_id", method = "get", tag = "Tag::Jobs")]
    async fn job(&self, job_id: Path<String>) -> JobResponse {
        match self.0.shared.queue.get(&job_id) {
            Some((job, position)) => JobResponse::Ok(Json(Box::new(JobView::new(&job, position)))),
            None => JobResponse::NotFound(error(format!("no job `{}`", job_id.0))),
        }
    }

    /// Jobs, newest first.
    #[oai(path = "/api/jobs", method = "get", tag = "Tag::Jobs")]
    async fn jobs(
        &self,
        status: Query<Option<JobStatus>>,
        /// Jobs per page.
        #[oai(
            default = "default_page",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
        /// `next_cursor` of the previous page; empty or absent: the newest jobs.
        #[oai(validator(pattern = r"^[0-9]{0,19}$"))]
        cursor: Query<Option<String>>,
    ) -> JobListResponse {
        let before = parse_cursor(&cursor);
        let limit = limit.0 as usize;
        let jobs = self.0.shared.queue.list(status.0, limit + 1, before);
        let next_cursor = (jobs.len() > limit).then(|| jobs[limit - 1].0.seq.to_string());
        let jobs = jobs
            .iter()
            .take(limit)
            .map(|(j, p)| JobView::new(j, *p))
            .collect();
        JobListResponse::Ok(Json(JobList { jobs, next_cursor }))
    }

    /// Cancel a job: a queued job leaves the queue; a running one stops after its current step.
    /// 409 if it has already finished.
    #[oai(path = "/api/jobs/:job_id", method = "delete", tag = "Tag::Jobs")]
    async fn cancel(&self, job_id: Path<String>) -> JobResponse {
        let queue = &self.0.shared.queue;
        match queue.cancel(&job_id) {
            Ok(_) => {
                let (job, position) = queue.get(&job_id).expect("cancelled jobs stay known");
                JobResponse::Ok(Json(Box::new(JobView::new(&job, position))))
            }
            Err(QueueError::NotFound) => {
                JobResponse::NotFound(error(format!("no job `{}`", job_id.0)))
            }
            Err(QueueError::AlreadyFinished(s)) => {
                JobResponse::Conflict(error(format!("job `{}` is already {}", job_id.0, s.name())))
            }
            Err(e) => JobResponse::Internal(error(format!("{e:?}"))),
        }
    }

    /// Server-sent events of one job: `queued` (with position) on every change, `processing`
    /// (step, total_steps, throttled JPEG preview), then `completed` / `failed` / `cancelled`,
    /// after which the stream ends. Reconnect with `Last-Event-ID` to receive missed events.
    #[oai(path = "/api/sse/:job_id", method = "get", tag = "Tag::Jobs")]
    async fn job_events(
        &self,
        job_id: Path<String>,
        #[oai(name = "Last-Event-ID")] last_event_id: Header<Option<String>>,
    ) -> StreamResponse {
        let after = last_event_id
            .0
            .as_deref()
            .and_then(|s| s.trim().parse::<u64>().ok());
        match sse::job_stream(&self.0, &job_id, after) {
            Some(stream) => {
                let (cache, buffering) = sse_headers();
                let stream = EventStream::new(stream)
                    .keep_alive(self.0.keep_alive)
                    .to_event(|e: JobStreamEvent| {
                        // No `event:` name: browsers hand only unnamed events to
                        // `EventSource.onmessage`; the status is inside the data.
                        Event::message(e.to_json_string()).id(e.event_id.to_string())
                    });
                StreamResponse::Stream(stream, cache, buffering)
            }
            None => StreamResponse::NotFound(error(format!("no job `{}`", job_id.0))),
        }
    }

    /// Generated images, newest first.
    #[oai(path = "/api/images", method = "get", tag = "Tag::Gallery")]
    async fn images(
        &self,
        /// Images per page.
        #[oai(
            default = "default_page",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
        /// `next_cursor` of the previous page; empty or absent: the newest images.
        #[oai(validator(pattern = r"^[0-9]{0,19}$"))]
        cursor: Query<Option<String>>,
    ) -> ImageListResponse {
        let before = parse_cursor(&cursor);
        let limit = limit.0 as usize;
        match self.0.shared.store.list_images(limit + 1, before) {
            Ok(records) => {
                let next_cursor =
                    (records.len() > limit).then(|| records[limit - 1].id.to_string());
                let images = records.iter().take(limit).map(ImageView::from).collect();
                ImageListResponse::Ok(Json(ImageList {
                    images,
                    next_cursor,
                }))
            }
            Err(e) => ImageListResponse::Internal(error(e.to_string())),
        }
    }

    /// A generated PNG, with its A1111 `parameters` metadata.
    #[oai(path = "/api/images/:filename", method = "get", tag = "Tag::Gallery")]
    async fn image(
        &self,
        filename: Path<String>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
    ) -> ImageResponse {
        self.file(&filename, if_none_match.0, false).await.into()
    }

    /// A JPEG thumbnail (at most 256 px), made on first request and cached.
    #[oai(path = "/api/thumbs/:filename", method = "get", tag = "Tag::Gallery")]
    async fn thumb(
        &self,
        filename: Path<String>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
    ) -> ThumbResponse {
        self.file(&filename, if_none_match.0, true).await.into()
    }

    /// Delete an image and its thumbnail.
    #[oai(
        path = "/api/images/:filename",
        method = "delete",
        tag = "Tag::Gallery"
    )]
    async fn delete_image(&self, filename: Path<String>) -> DeleteResponse {
        let store = &self.0.shared.store;
        match store.image(&filename) {
            Ok(Some(record)) => match store.delete_image(&record) {
                Ok(()) => DeleteResponse::Deleted,
                Err(e) => DeleteResponse::Internal(error(e.to_string())),
            },
            Ok(None) => DeleteResponse::NotFound(error(format!("no image `{}`", filename.0))),
            Err(e) => DeleteResponse::Internal(error(e.to_string())),
        }
    }

    /// Server-sent events: one per new image. Reconnect with `Last-Event-ID` to receive the
    /// images made since.
    #[oai(path = "/api/sse/gallery", method = "get", tag = "Tag::Gallery")]
    async fn gallery_events(
        &self,
        #[oai(name = "Last-Event-ID")] last_event_id: Header<Option<String>>,
    ) -> GalleryStreamResponse {
        let after = last_event_id
            .0
            .as_deref()
            .and_then(|s| s.trim().parse::<u64>().ok());
        match sse::gallery_stream(&self.0, after) {
            Ok(stream) => {
                let (cache, buffering) = sse_headers();
                let stream = EventStream::new(stream)
                    .keep_alive(self.0.keep_alive)
                    .to_event(|image: ImageView| {
                        let id = image.event_id;
                        Event::message(image.to_json_string()).id(id.to_string())
                    });
                GalleryStreamResponse::Stream(stream, cache, buffering)
            }
            Err(e) => GalleryStreamResponse::Internal(error(e.to_string())),
        }
    }

    /// Models (with the JSON Schema of their parameters), LoRAs, the default model.
    #[oai(path = "/api/info", method = "get", tag = "Tag::Server")]
    async fn info(&self) -> Json<Info> {
        let state = &self.0;
        let loaded = state.shared.loaded.lock().expect("loaded lock").clone();
        let library = state.shared.loras.read().expect("loras lock");
        let models = state
            .shared
            .registry
            .models()
            .map(|m| ModelInfo {
                id: m.id.clone(),
                name: m.name.clone(),
                family: m.family.name().into(),
                description: m.description.clone(),
                loaded: loaded.as_deref() == Some(m.id.as_str()),
                parameters: parameter_schema(
                    m,
                    &library,
                    state.shared.registry.checker().is_some(),
                ),
            })
            .collect();
        Json(Info {
            version: env!("CARGO_PKG_VERSION").into(),
            device: state.device.clone(),
            dtype: state.precision.to_string(),
            default_model: state.default_model.clone(),
            models,
            loras: lora_infos(&library),
        })
    }

    /// Scan the LoRA directories again (after adding or removing files) and list what they hold.
    #[oai(path = "/api/loras/rescan", method = "post", tag = "Tag::Server")]
    async fn rescan_loras(&self) -> Json<Vec<LoraInfo>> {
        let shared = self.0.shared.clone();
        let infos = tokio::task::spawn_blocking(move || {
            shared.rescan_loras();
            lora_infos(&shared.loras.read().expect("loras lock"))
        })
        .await
        .expect("LoRA scan task");
        Json(infos)
    }

    /// Liveness: the process answers.
    #[oai(path = "/health", method = "get", tag = "Tag::Server")]
    async fn health(&self) -> PlainText<String> {
        PlainText("ok".into())
    }

    /// Readiness: a model can run (one is configured and the runner is alive).
    #[oai(path = "/ready", method = "get", tag = "Tag::Server")]
    async fn ready(&self) -> ReadyResponse {
        let runner_alive = !self.0.runner.is_finished();
        if runner_alive && self.0.shared.registry.models().next().is_some() {
            ReadyResponse::Ready(PlainText("ready".into()))
        } else {
            ReadyResponse::NotReady(PlainText("no model can run".into()))
        }
    }

    /// Prometheus metrics (OpenMetrics text): queue depth, jobs by status, histograms of step
    /// time, queue wait and job duration by model, images written, build info.
    #[oai(path = "/metrics", method = "get", tag = "Tag::Server")]
    async fn metrics(&self) -> MetricsResponse {
        let shared = &self.0.shared;
        let (counts, depth) = shared.queue.counts();
        MetricsResponse::Ok(PlainText(shared.metrics.render(&counts, depth)))
    }
}

impl Api {
    async fn file(&self, filename: &str, if_none_match: Option<String>, thumbnail: bool) -> Lookup {
        let store = self.0.shared.store.clone();
        let record = match store.image(filename) {
            Ok(Some(r)) => r,
            Ok(None) => return Lookup::NotFound(format!("no image `{filename}`")),
            Err(e) => return Lookup::Internal(e.to_string()),
        };
        let etag = format!("\"{}{}\"", record.id, if thumbnail { "t" } else { "" });
        if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
        {
            return Lookup::NotModified(etag);
        }
        let read = tokio::task::spawn_blocking(move || {
            let path = if thumbnail {
                store.thumbnail(&record)?
            } else {
                store.image_path(&record)
            };
            std::fs::read(path).map_err(crate::Error::from)
        })
        .await;
        match read {
            Ok(Ok(bytes)) => Lookup::Bytes(bytes, etag),
            Ok(Err(e)) => Lookup::Internal(e.to_string()),
            Err(e) => Lookup::Internal(e.to_string()),
        }
    }
}

/// How long SSE connections wait between keep-alive comments.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
