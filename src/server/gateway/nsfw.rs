//! The gateway's NSFW routes: `nsfw/analyze` (the safety checker's verdict on an image) and
//! `nsfw/filter` (a copy in the gallery, hidden where flagged). Each check is a job on the one
//! queue, so the runner that owns the device runs the checker; the route waits for it.
//! Images come as base64 in the body or as the URL of one of this server's own gallery
//! images: no other URL is ever fetched.

use std::sync::Arc;
use std::time::Duration;

use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::views::{Envelope, Failure, Text};
use super::{Tag, bad_request, envelope, failure};
use crate::output::nsfw_filter::NsfwFilter;
use crate::queue::{Job, NsfwVerdict, QueueError, SafetyCheck, new_job_id};
use crate::server::AppState;
use crate::server::submit::completed_job;
use crate::server::validation::{NO_CHECKER, base64_image};

/// How long a route waits for its check (queued behind a running job, at most).
const WAIT: Duration = Duration::from_secs(600);

pub struct NsfwApi(pub Arc<AppState>);

/// The image to check: one of the two.
#[derive(Object)]
pub struct ImageInput {
    /// The image, base64-encoded (a `data:image/...;base64,` prefix is accepted).
    pub image: Option<Text>,
    /// Or one of this server's images: `/api/images/{filename}`, or that path on this
    /// server's own address. Other URLs are refused, never fetched.
    pub image_url: Option<Text>,
}

#[derive(Object)]
pub struct FilterRequest {
    #[oai(flatten)]
    pub input: ImageInput,
    /// How to hide the image where the checker flags it (default `blur`).
    pub filter: Option<NsfwFilter>,
}

#[derive(Object)]
pub struct FilterResult {
    pub verdict: NsfwVerdict,
    /// Whether the copy is hidden (the image was flagged); an unflagged image's copy is the
    /// same picture.
    pub filtered: bool,
    pub filter: NsfwFilter,
    /// The copy, in the gallery.
    pub filename: String,
    pub url: String,
}

/// A check route's answers: its payload and the refusals every check can meet.
macro_rules! nsfw_response {
    ($name:ident, $data:ty) => {
        gateway_response!($name, $data,
            NotFound = 404: "`IMAGE_NOT_FOUND`: `image_url` names no image of this server.",
            Unprocessable = 422: "`INVALID_IMAGE`: no image, two images, not an image, or a URL that is not this server's.",
            Busy = 429: "`QUEUE_FULL`.",
            Internal = 500: "`GENERATION_FAILED`: the check failed.",
            Unavailable = 503: "`NSFW_CHECKER_UNAVAILABLE`: no safety checker is set up.");
    };
}

nsfw_response!(AnalyzeResponse, NsfwVerdict);
nsfw_response!(FilterResponse, FilterResult);

/// Why a check did not give a verdict: (HTTP status, gateway code, message).
struct Refusal(u16, &'static str, String);

impl Refusal {
    fn invalid(message: impl Into<String>) -> Self {
        Refusal(422, "INVALID_IMAGE", message.into())
    }
}

/// `image_url` as a gallery file name, if it is one of this server's images: a path
/// `/api/images/{name}`, or an absolute http(s) URL to that path whose host is the one the
/// request was sent to.
fn own_image_name(url: &str, host: Option<&str>) -> Result<String, Refusal> {
    const GALLERY: &str = "/api/images/";
    let path = if url.starts_with('/') {
        url.to_owned()
    } else {
        let parsed = url::Url::parse(url)
            .map_err(|e| Refusal::invalid(format!("image_url is not a URL: {e}")))?;
        let authority = parsed.host_str().map(|h| match parsed.port() {
            Some(port) => format!("{h}:{port}"),
            None => h.to_owned(),
        });
        let ours = matches!(parsed.scheme(), "http" | "https")
            && authority.is_some()
            && authority.as_deref() == host;
        if !ours {
            return Err(Refusal::invalid(
                "image_url must be one of this server's images (/api/images/{filename}); \
                 other URLs are not fetched: send the image itself as base64 in `image`",
            ));
        }
        parsed.path().to_owned()
    };
    match path.strip_prefix(GALLERY) {
        Some(name) if !name.is_empty() && !name.contains('/') => Ok(name.to_owned()),
        _ => Err(Refusal::invalid(format!(
            "image_url must name a gallery image, {GALLERY}{{filename}}"
        ))),
    }
}

/// Queues a check of the request's image and waits for its verdict; the job as it ended.
async fn check(
    state: &AppState,
    request: &Request,
    input: ImageInput,
    filter: Option<NsfwFilter>,
) -> Result<Job, Refusal> {
    let Some(checker) = state.shared.registry.checker() else {
        return Err(Refusal(503, "NSFW_CHECKER_UNAVAILABLE", NO_CHECKER.into()));
    };
    let job_id = new_job_id();
    let store = &state.shared.store;
    let (image, source) = match (input.image, input.image_url) {
        (Some(data), None) => {
            let (bytes, _) =
                base64_image(&data.0).map_err(|why| Refusal::invalid(format!("image is {why}")))?;
            let path = store
                .save_upload(&job_id, &bytes)
                .map_err(|e| Refusal(500, "GENERATION_FAILED", e.to_string()))?;
            (path, None)
        }
        (None, Some(url)) => {
            let host = request.header(poem::http::header::HOST);
            let name = own_image_name(&url.0, host)?;
            let record = store
                .image(&name)
                .map_err(|e| Refusal(500, "GENERATION_FAILED", e.to_string()))?
                .ok_or_else(|| {
                    Refusal(404, "IMAGE_NOT_FOUND", format!("no gallery image `{name}`"))
                })?;
            let path = store.image_path(&record);
            let relative = path
                .strip_prefix(store.data_dir())
                .unwrap_or(&path)
                .to_owned();
            (relative, Some(name))
        }
        (None, None) => return Err(Refusal::invalid("send `image` (base64) or `image_url`")),
        (Some(_), Some(_)) => {
            return Err(Refusal::invalid("send `image` or `image_url`, not both"));
        }
    };
    let job = Job {
        check: Some(SafetyCheck {
            image,
            source,
            filter,
            verdict: None,
        }),
        total_steps: 1,
        // A check takes a moment: it goes before the generations waiting.
        ..Job::new(job_id.clone(), checker.id.clone(), i32::MAX)
    };
    state.shared.queue.submit(job).map_err(|e| match e {
        QueueError::Full => Refusal(429, "QUEUE_FULL", "the queue is full; retry later".into()),
        e => Refusal(500, "GENERATION_FAILED", format!("{e:?}")),
    })?;
    completed_job(state, &job_id, WAIT)
        .await
        .map_err(|why| Refusal(500, "GENERATION_FAILED", why))
}

fn verdict_of(job: &Job) -> Option<NsfwVerdict> {
    job.check.as_ref()?.verdict.clone()
}

/// A refusal as a route's answer.
macro_rules! refuse {
    ($response:ident, $refusal:expr) => {{
        let Refusal(status, code, message) = $refusal;
        let body = failure(code, message, None);
        match status {
            404 => $response::NotFound(body),
            422 => $response::Unprocessable(body),
            429 => $response::Busy(body),
            503 => $response::Unavailable(body),
            _ => $response::Internal(body),
        }
    }};
}

#[OpenApi(prefix_path = "/v1/api/nsfw", tag = "Tag::Gateway")]
impl NsfwApi {
    /// The safety checker's verdict on an image.
    ///
    /// `confidence` is the highest concept score (cosine similarity to a concept less its
    /// threshold, as diffusers' `StableDiffusionSafetyChecker` computes it): above 0 is NSFW.
    #[oai(path = "/analyze", method = "post")]
    async fn analyze(&self, request: &Request, body: Json<ImageInput>) -> AnalyzeResponse {
        match check(&self.0, request, body.0, None).await {
            Ok(job) => match verdict_of(&job) {
                Some(verdict) => AnalyzeResponse::Ok(envelope(verdict)),
                None => refuse!(
                    AnalyzeResponse,
                    Refusal(500, "GENERATION_FAILED", "no verdict".into())
                ),
            },
            Err(refusal) => refuse!(AnalyzeResponse, refusal),
        }
    }

    /// A copy of an image in the gallery, hidden (blur, pixelate or black) where the safety
    /// checker flags it, and the verdict.
    #[oai(path = "/filter", method = "post")]
    async fn filter(&self, request: &Request, body: Json<FilterRequest>) -> FilterResponse {
        let body = body.0;
        let filter = body.filter.unwrap_or_default();
        let job = match check(&self.0, request, body.input, Some(filter)).await {
            Ok(job) => job,
            Err(refusal) => return refuse!(FilterResponse, refusal),
        };
        match (verdict_of(&job), job.images.first()) {
            (Some(verdict), Some(filename)) => FilterResponse::Ok(envelope(FilterResult {
                filtered: verdict.is_nsfw,
                verdict,
                filter,
                url: format!("/api/images/{filename}"),
                filename: filename.clone(),
            })),
            _ => refuse!(
                FilterResponse,
                Refusal(500, "GENERATION_FAILED", "the check wrote no copy".into())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::own_image_name;

    #[test]
    fn only_this_servers_gallery_urls_are_images() {
        let host = Some("127.0.0.1:8000");
        let ok = |url: &str| own_image_name(url, host).ok();
        assert_eq!(ok("/api/images/a_0.png").as_deref(), Some("a_0.png"));
        assert_eq!(
            ok("http://127.0.0.1:8000/api/images/a_0.png").as_deref(),
            Some("a_0.png")
        );
        for refused in [
            "http://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:8001/api/images/a_0.png",
            "https://example.com/api/images/a_0.png",
            "file:///etc/passwd",
            "/api/thumbs/a_0.png",
            "/api/images/../index",
            "/api/images/",
            "not a url",
        ] {
            assert!(ok(refused).is_none(), "{refused} was taken");
        }
    }
}
