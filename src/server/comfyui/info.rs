//! `/object_info`, `/system_stats`, `/features`, `/embeddings`, `/models`, `/extensions`.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::{Data, Json, Path};
use poem::{IntoResponse, Response, handler};
use serde_json::{Map, Value, json};

use super::{ComfyState, MAX_UPLOAD_BYTES, bare};

#[handler]
pub async fn object_info(state: Data<&Arc<ComfyState>>) -> Json<Value> {
    let all: Map<String, Value> = state.defs().into_iter().map(|d| (d.name, d.info)).collect();
    Json(Value::Object(all))
}

#[handler]
pub async fn object_info_node(
    state: Data<&Arc<ComfyState>>,
    Path(class): Path<String>,
) -> Json<Value> {
    Json(match state.defs().into_iter().find(|d| d.name == class) {
        Some(d) => json!({ class: d.info }),
        None => json!({}),
    })
}

/// What most ComfyUI clients probe first: memory of the machine and of the device.
#[handler]
pub async fn system_stats(state: Data<&Arc<ComfyState>>) -> Json<Value> {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    let (total, free) = (system.total_memory(), system.available_memory());
    let argv: Vec<String> = std::env::args().collect();
    // The CPU backend's memory is the machine's; GPU figures are not read yet.
    let (vram_total, vram_free) = if state.device == "cpu" {
        (total, free)
    } else {
        (0, 0)
    };
    Json(json!({
        "system": {
            "os": std::env::consts::OS,
            "ram_total": total,
            "ram_free": free,
            "comfyui_version": format!("hanga {}", env!("CARGO_PKG_VERSION")),
            "required_frontend_version": "",
            "installed_templates_version": "",
            "required_templates_version": "",
            "python_version": "",
            "pytorch_version": "",
            "embedded_python": false,
            "argv": argv,
        },
        "devices": [{
            "name": state.device,
            "type": state.device,
            "index": 0,
            "vram_total": vram_total,
            "vram_free": vram_free,
            "torch_vram_total": vram_total,
            "torch_vram_free": vram_free,
        }],
    }))
}

/// `comfy_api/feature_flags.py`; previews go as type-1 frames only, so no preview metadata.
#[handler]
pub async fn features() -> Json<Value> {
    Json(json!({"supports_preview_metadata": false, "max_upload_size": MAX_UPLOAD_BYTES as f64}))
}

/// The embeddings of the models folders, by name (no extension), as prompts name them.
#[handler]
pub async fn embeddings(state: Data<&Arc<ComfyState>>) -> Json<Value> {
    let folders = state.shared.comfy_folders.read().expect("folders lock");
    Json(json!(folders.embedding_names()))
}

#[handler]
pub async fn model_folders(state: Data<&Arc<ComfyState>>) -> Json<Value> {
    let lists = state.lists();
    let names: Vec<&String> = lists.folders.iter().map(|(n, _)| n).collect();
    Json(json!(names))
}

#[handler]
pub async fn model_folder(state: Data<&Arc<ComfyState>>, Path(folder): Path<String>) -> Response {
    let lists = state.lists();
    match lists.folders.iter().find(|(n, _)| *n == folder) {
        Some((_, files)) => Json(json!(files)).into_response(),
        None => bare(StatusCode::NOT_FOUND),
    }
}

/// No frontend extensions are served.
#[handler]
pub async fn extensions() -> Json<Value> {
    Json(json!([]))
}
