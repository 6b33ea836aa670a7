//! ComfyUI's server API on its own port (default 8188), so ComfyUI's clients run unchanged:
//! every route at `/x` and at `/api/x`, as ComfyUI's `PromptServer.add_routes` registers them
//! (../shared/reference/api-peers.md part 1). Prompts become jobs of the one queue.

mod files;
mod info;
mod jobs;
mod prompt;
mod ws;

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::Json;
use poem::{EndpointExt, IntoResponse, Response, Route, get, post};
use serde_json::{Value, json};

use crate::graph::definitions::{ComboLists, NodeDef};
use crate::runner::Shared;

/// ComfyUI's `--max-upload-size` default, 100 MB.
pub const MAX_UPLOAD_BYTES: usize = 100 * 1024 * 1024;

pub struct ComfyState {
    pub shared: Arc<Shared>,
    /// The device the runner uses, as `/system_stats` names it.
    pub device: String,
}

impl ComfyState {
    /// Today's file lists of the loaders (and LoadImage).
    fn lists(&self) -> ComboLists {
        self.shared
            .comfy_folders
            .read()
            .expect("folders lock")
            .combo_lists()
    }

    /// The node definitions with today's file lists.
    fn defs(&self) -> Vec<NodeDef> {
        crate::server::submit::graph_node_defs(&self.shared)
    }
}

/// A JSON answer with a status.
fn json_response(status: StatusCode, body: Value) -> Response {
    Json(body).with_status(status).into_response()
}

/// ComfyUI's bare error answers (400/403/404 with an empty body).
fn bare(status: StatusCode) -> Response {
    Response::builder().status(status).finish()
}

/// All routes, once bare and once under `/api`.
pub fn routes(state: Arc<ComfyState>) -> impl poem::Endpoint {
    let mut route = Route::new();
    for prefix in ["", "/api"] {
        let at = |path: &str| format!("{prefix}{path}");
        route = route
            .at(at("/ws"), get(ws::websocket))
            .at(
                at("/prompt"),
                get(prompt::prompt_info).post(prompt::post_prompt),
            )
            .at(
                at("/queue"),
                get(prompt::get_queue).post(prompt::post_queue),
            )
            .at(
                at("/history"),
                get(prompt::get_history).post(prompt::post_history),
            )
            .at(at("/history/:prompt_id"), get(prompt::get_history_item))
            .at(at("/interrupt"), post(prompt::interrupt))
            .at(at("/free"), post(prompt::free))
            .at(at("/view"), get(files::view))
            .at(at("/upload/image"), post(files::upload_image))
            .at(at("/object_info"), get(info::object_info))
            .at(at("/object_info/:node_class"), get(info::object_info_node))
            .at(at("/system_stats"), get(info::system_stats))
            .at(at("/features"), get(info::features))
            .at(at("/embeddings"), get(info::embeddings))
            .at(at("/models"), get(info::model_folders))
            .at(at("/models/:folder"), get(info::model_folder))
            .at(at("/extensions"), get(info::extensions))
            // Declared as `/api/jobs` in ComfyUI, so also at `/api/api/jobs`.
            .at(at("/api/jobs"), get(jobs::get_jobs))
            .at(at("/api/jobs/:job_id"), get(jobs::get_job));
    }
    route.data(state)
}

/// `{"error": {...}, "node_errors": {...}}` with 400, as `post_prompt` answers.
fn prompt_error(kind: &str, message: &str, details: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": {"type": kind, "message": message, "details": details,
                         "extra_info": {}},
               "node_errors": {}}),
    )
}
