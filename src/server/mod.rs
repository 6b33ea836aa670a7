//! `hanga serve`: the HTTP API (poem + poem-openapi) in front of the queue, the runner thread
//! and the store. HTTP ends in this folder; `queue/`, `runner.rs` and `store/` know nothing of
//! it.

mod a1111;
mod api;
pub mod auth;
mod comfyui;
mod dashboard;
mod face;
mod gateway;
mod openai;
mod openapi;
mod schemas;
mod sse;
mod submit;
mod validation;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use poem::http::{Method, StatusCode, header};
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::middleware::Cors;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, Server};
use poem_openapi::OpenApiService;

use face::Face;

use crate::auth::Auth;
use crate::backend::{DeviceKind, Precision};
use crate::graph::folders::ComfyFolders;
use crate::metrics::Metrics;
use crate::queue::{Events, Queue};
use crate::registry::{LoraLibrary, Registry};
use crate::runner::{self, RunnerConfig, Shared};
use crate::store::Store;
use crate::{Error, with_backend};

pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub thumbnails_dir: PathBuf,
    pub registry: Registry,
    /// LoRA files (`*.safetensors`), scanned at start.
    pub loras_dir: PathBuf,
    /// Workflow templates (`templates/`), read on each request.
    pub templates_dir: PathBuf,
    /// The address clients reach this server at (`https://images.example.com`), for the
    /// absolute image URLs of OpenAI's `response_format: url`; None: the request's Host.
    pub public_url: Option<String>,
    pub device: DeviceKind,
    pub precision: Precision,
    pub default_model: Option<String>,
    pub queue_capacity: usize,
    pub preview_interval: Duration,
    pub cors_origin: Option<String>,
    pub max_body_bytes: usize,
    /// The ComfyUI API's port (0: any free port); None: no ComfyUI API.
    pub comfyui_port: Option<u16>,
    /// Binary latent previews on ComfyUI's WebSocket (`--preview-method latent2rgb`).
    pub comfyui_previews: bool,
    /// Serve without checking API keys, on any address (`--no-auth`).
    pub no_auth: bool,
}

pub struct AppState {
    shared: Arc<Shared>,
    default_model: Option<String>,
    device: String,
    precision: Precision,
    keep_alive: Duration,
    runner: std::thread::JoinHandle<()>,
    templates_dir: PathBuf,
    public_url: Option<String>,
}

/// Opens the store, restores the queue, starts the runner on `options.device` and serves until
/// SIGINT / SIGTERM.
pub async fn serve(options: ServeOptions) -> Result<(), Error> {
    let default_model = match options.default_model {
        Some(id) => Some(options.registry.get(&id)?.id.clone()),
        None => options.registry.models().next().map(|m| m.id.clone()),
    };
    let store = Arc::new(Store::open(&options.data_dir, &options.thumbnails_dir)?);
    let auth = Arc::new(Auth::open(
        &options.data_dir,
        store.clone(),
        &options.host,
        options.no_auth,
    )?);
    let mut lora_dirs = vec![options.loras_dir.clone()];
    let manifest_loras = options
        .registry
        .models()
        .filter_map(|m| m.loras.as_ref().map(|dir| m.resolve(dir)));
    for dir in manifest_loras.chain(options.registry.models_dir_loras()) {
        if !lora_dirs.contains(&dir) {
            lora_dirs.push(dir);
        }
    }
    let events = Arc::new(Events::new(store.count_start()?));
    let queue = Arc::new(Queue::restore(
        store.clone(),
        events.clone(),
        options.queue_capacity,
    )?);
    let loras = LoraLibrary::scan(&lora_dirs);
    let comfy_folders =
        ComfyFolders::new(&options.data_dir.join("comfyui"), &options.registry, &loras)?;
    let shared = Arc::new(Shared {
        loras: RwLock::new(loras),
        lora_dirs,
        registry: options.registry,
        queue,
        store,
        events,
        loaded: Default::default(),
        metrics: Metrics::new(
            env!("CARGO_PKG_VERSION"),
            &options.device.to_string(),
            &options.precision.to_string(),
        ),
        comfy_folders: RwLock::new(comfy_folders),
        comfy_events: Default::default(),
        free_requested: Default::default(),
    });
    let config = RunnerConfig {
        preview_interval: options.preview_interval,
        comfyui_previews: options.comfyui_previews,
    };
    let runner = with_backend!(options.device, |B, device| {
        crate::backend::set_precision::<B>(&device, options.precision)?;
        runner::spawn::<B>(shared.clone(), device, config)
    });
    let state = Arc::new(AppState {
        shared,
        default_model,
        device: options.device.to_string(),
        precision: options.precision,
        keep_alive: api::KEEP_ALIVE,
        runner,
        templates_dir: options.templates_dir,
        public_url: options.public_url,
    });

    // Bind first so that `--port 0` works: the line below tells which port was taken.
    let acceptor = TcpListener::bind(format!("{}:{}", options.host, options.port))
        .into_acceptor()
        .await?;
    let address = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .map_or_else(
            || format!("{}:{}", options.host, options.port),
            |a| a.to_string(),
        );
    println!("hanga listening on http://{address}");
    let comfyui = match options.comfyui_port {
        Some(port) => Some(comfyui_listener(&options.host, port, &state, auth.clone()).await?),
        None => None,
    };
    let apis = (
        api::Api(state.clone()),
        gateway::GatewayApi(state.clone()),
        gateway::nsfw::NsfwApi(state.clone()),
        gateway::workflows::WorkflowsApi(state.clone()),
        openai::OpenAiApi(state.clone()),
        a1111::A1111Api::new(state.clone()),
        dashboard::Dashboard,
    );
    let service = OpenApiService::new(apis, "hanga", env!("CARGO_PKG_VERSION")).description(
        "Text-to-image generation: queue jobs, follow them over SSE, browse the gallery.",
    );
    let generated = service.spec();
    let document = openapi::document(&generated, &state);
    // Swagger UI embeds the document it is given; give it the completed one.
    let docs_page = service.swagger_ui_html().replace(
        &generated,
        &serde_json::to_string(&document).expect("a JSON document"),
    );
    // Every request passes `allow_on_405`: it shares the document rather than copying it.
    let paths = Arc::new(document);
    let gateway_ws = poem::get(gateway::ws::websocket).data(state.clone());
    let spec = poem::endpoint::make_sync(move |_| {
        // LoRAs come and go with rescans: the document is made afresh for every request.
        poem::web::Json(openapi::document(&generated, &state))
    });
    let app = Route::new()
        .at("/openapi.json", spec)
        .at("/v1/ws", gateway_ws)
        .nest(
            "/docs",
            poem::endpoint::make_sync(move |_| poem::web::Html(docs_page.clone())),
        )
        .nest("/", service)
        .around(move |endpoint, request| {
            let path = request.uri().path();
            let max = match IMAGE_ROUTES.iter().any(|r| path.starts_with(r)) {
                true => IMAGE_BODY_BYTES,
                false => options.max_body_bytes,
            };
            limit_body(endpoint, request, max, Face::of_native_path)
        })
        .around(move |endpoint, request| allow_on_405(endpoint, request, paths.clone()))
        .around(move |endpoint, request| {
            auth::guard(
                endpoint,
                request,
                auth.clone(),
                Face::of_native_path,
                auth::native_scope,
            )
        });
    let app = match options.cors_origin {
        Some(origin) => app.with(Cors::new().allow_origin(origin)).boxed(),
        None => app.boxed(),
    };
    tracing::info!(%address, device = %options.device, "serving; API docs at /docs");
    let native = Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
        app,
        shutdown_signal(),
        Some(Duration::from_secs(5)),
    );
    match comfyui {
        Some(comfyui) => tokio::try_join!(native, comfyui).map(|_| ()),
        None => native.await,
    }
    .map_err(Error::Io)
}

/// Binds the ComfyUI API's port (a taken port is a start-up error naming the flags) and
/// returns its server, to run beside the native one.
async fn comfyui_listener(
    host: &str,
    port: u16,
    state: &Arc<AppState>,
    auth: Arc<Auth>,
) -> Result<impl std::future::Future<Output = std::io::Result<()>> + use<>, Error> {
    let acceptor = TcpListener::bind(format!("{host}:{port}"))
        .into_acceptor()
        .await
        .map_err(|e| {
            Error::config(format!(
                "cannot listen for the ComfyUI API on {host}:{port}: {e}; choose another port \
                 with --comfyui-port or turn the ComfyUI API off with --no-comfyui"
            ))
        })?;
    let address = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .map_or_else(|| format!("{host}:{port}"), |a| a.to_string());
    println!("ComfyUI API listening on http://{address}");
    let comfy_state = Arc::new(comfyui::ComfyState {
        shared: state.shared.clone(),
        device: state.device.clone(),
    });
    // Multipart uploads carry up to the upload limit plus their framing.
    let limit = comfyui::MAX_UPLOAD_BYTES + (1 << 20);
    let app = comfyui::routes(comfy_state)
        .around(move |endpoint, request| limit_body(endpoint, request, limit, |_| Face::ComfyUi))
        .around(move |endpoint, request| {
            auth::guard(
                endpoint,
                request,
                auth.clone(),
                |_| Face::ComfyUi,
                auth::comfyui_scope,
            )
        });
    Ok(
        Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            app,
            shutdown_signal(),
            Some(Duration::from_secs(5)),
        ),
    )
}

/// The routes whose bodies carry images (base64 or multipart): the NSFW checks and the
/// image-to-image requests of each face.
const IMAGE_ROUTES: [&str; 4] = [
    "/v1/api/nsfw/",
    "/api/generate",
    "/sdapi/v1/img2img",
    "/v1/images/edits",
];
/// The body limit there: a 24 MB image in base64.
const IMAGE_BODY_BYTES: usize = 32 << 20;

/// How many times the body limit a refused body may be before it is no longer read to its end.
const LINGER_FACTOR: usize = 64;

/// Bodies over `max` bytes get 413 before anything parses them. (poem's `SizeLimit` also
/// refuses bodiless GETs that carry no Content-Length, so it does not fit here.)
async fn limit_body<E: Endpoint>(
    endpoint: Arc<E>,
    request: Request,
    max: usize,
    face_of: fn(&str) -> Face,
) -> poem::Result<Response> {
    let length = request
        .header(header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = request
        .header(header::TRANSFER_ENCODING)
        .is_some_and(|v| v.contains("chunked"));
    // The error body of the API asked (`{"detail": ...}` on the native API); openapi.rs
    // documents both answers.
    let face = face_of(request.uri().path());
    let refuse = |status: StatusCode, detail: String| {
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "PAYLOAD_TOO_LARGE"
        } else {
            "LENGTH_REQUIRED"
        };
        Ok(face.error(status, code, detail))
    };
    if let Some(length) = length.filter(|&l| l > max) {
        // Read what the client is sending before answering: a server that answers and closes
        // with the body unread makes the kernel reset the connection, and the client sees a
        // broken pipe instead of the 413 (nginx's `lingering_close`). Bounded in size and time,
        // so a huge Content-Length or a stalled sender is answered at once.
        if length <= max.saturating_mul(LINGER_FACTOR) {
            let mut body = request.into_body().into_async_read();
            let mut sink = tokio::io::sink();
            let drain = tokio::io::copy(&mut body, &mut sink);
            let _ = tokio::time::timeout(Duration::from_secs(30), drain).await;
        }
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {max} bytes"),
        );
    }
    if chunked && length.is_none() && request.method() != Method::GET {
        return refuse(
            StatusCode::LENGTH_REQUIRED,
            "send a Content-Length header".into(),
        );
    }
    endpoint
        .call(request)
        .await
        .map(IntoResponse::into_response)
}

/// RFC 9110 §15.5.6: a 405 names the methods the resource has, in `Allow`.
async fn allow_on_405<E: Endpoint>(
    endpoint: Arc<E>,
    request: Request,
    document: Arc<serde_json::Value>,
) -> poem::Result<Response> {
    let path = request.uri().path().to_owned();
    let mut response = match endpoint.call(request).await {
        Ok(response) => response.into_response(),
        Err(error) => error.into_response(),
    };
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(allow) = openapi::allowed_methods(&document, &path)
        && let Ok(value) = allow.parse()
    {
        response.headers_mut().insert(header::ALLOW, value);
    }
    Ok(response)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down; queued jobs stay queued for the next start");
}
