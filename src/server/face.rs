//! Which API a request speaks, so that answers made before its handler runs (the auth layer's
//! refusals, the body limit's) come in that API's own error shape.

use poem::http::StatusCode;
use poem::web::Json;
use poem::{IntoResponse, Response};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Face {
    /// The native API: FastAPI's `{"detail": "..."}`.
    Native,
    /// The gateway under `/v1/api` and `/v1/ws`: `{"success": false, "error": {...}}`.
    Gateway,
    /// ComfyUI's port: a bare status, as ComfyUI's own middlewares answer.
    ComfyUi,
    /// OpenAI's images API (`/v1/images`, `/v1/models`): `{"error": {"message", "type",
    /// "param", "code"}}`.
    OpenAi,
}

impl Face {
    /// The face of a path on the native port.
    pub fn of_native_path(path: &str) -> Face {
        if path.starts_with("/v1/api/") || path == "/v1/ws" {
            Face::Gateway
        } else if path.starts_with("/v1/images/") || path.starts_with("/v1/models") {
            Face::OpenAi
        } else {
            Face::Native
        }
    }

    /// An error answer: `code` is the gateway's error code (the other faces have none).
    pub fn error(self, status: StatusCode, code: &str, message: String) -> Response {
        match self {
            Face::Native => Json(json!({ "detail": message }))
                .with_status(status)
                .into_response(),
            Face::Gateway => {
                let failure = super::gateway::failure(code, message, None);
                failure.with_status(status).into_response()
            }
            Face::ComfyUi => Response::builder().status(status).finish(),
            Face::OpenAi => super::openai::error_body(status, message, None, code)
                .with_status(status)
                .into_response(),
        }
    }
}
