//! `/prompt`, `/queue`, `/history`, `/interrupt`, `/free` (ComfyUI `server.py`,
//! `execution.PromptQueue`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use poem::http::StatusCode;
use poem::web::{Data, Json, Path, Query};
use poem::{Body, Response, handler};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ComfyState, bare, json_response, prompt_error};
use crate::graph::validate::python_truthy as truthy;
use crate::queue::{Job, JobStatus, status_data};
use crate::server::submit::{GraphSubmission, GraphSubmitError, submit_graph};

/// Keys of `extra_data` that never reach history (`SENSITIVE_EXTRA_DATA_KEYS`).
const SENSITIVE_EXTRA_DATA_KEYS: [&str; 2] = ["auth_token_comfy_org", "api_key_comfy_org"];

#[handler]
pub async fn prompt_info(state: Data<&Arc<ComfyState>>) -> Json<Value> {
    Json(json!({"exec_info": {"queue_remaining": state.shared.queue.remaining()}}))
}

/// `POST /prompt`: the body is JSON whatever the Content-Type says (clients send none,
/// form-urlencoded, text/plain or octet-stream).
#[handler]
pub async fn post_prompt(state: Data<&Arc<ComfyState>>, body: Body) -> Response {
    let bytes = match body.into_bytes_limit(super::MAX_UPLOAD_BYTES).await {
        Ok(b) => b,
        Err(_) => return bare(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&bytes) else {
        return prompt_error(
            "invalid_prompt",
            "The request body is not a JSON object",
            "POST /prompt takes {\"prompt\": {...}, \"client_id\": ...} as JSON",
        );
    };
    // A client's `number` (ComfyUI takes `float(number)`), else the queue numbers the prompt
    // by its acceptance order (negated with `front`), as `PromptServer.number` does.
    let number = match body.get("number") {
        Some(n) => match n
            .as_f64()
            .or_else(|| n.as_str().and_then(|s| s.trim().parse().ok()))
        {
            Some(f) => json!(f),
            None => {
                return prompt_error("invalid_prompt", "`number` is not a number", "number");
            }
        },
        None => Value::Null,
    };
    let front = body.get("front").is_some_and(truthy);
    let Some(prompt) = body.get("prompt") else {
        return prompt_error("no_prompt", "No prompt provided", "No prompt provided");
    };
    let Some(prompt) = prompt.as_object().cloned() else {
        return prompt_error(
            "invalid_prompt",
            "The prompt is not an object of nodes",
            "prompt must map node ids to {class_type, inputs}",
        );
    };
    let targets: Option<Vec<String>> = body
        .get("partial_execution_targets")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect()
        });
    let prompt_id = match body.get("prompt_id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if prompt_id.is_empty() || state.shared.queue.get(&prompt_id).is_some() {
        return prompt_error(
            "invalid_prompt",
            "prompt_id is empty or already used",
            &format!("prompt_id {prompt_id}"),
        );
    }
    let mut extra_data = match body.remove("extra_data") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let client_id = body
        .get("client_id")
        .and_then(|c| c.as_str().map(str::to_owned));
    if let Some(c) = &client_id {
        extra_data.insert("client_id".into(), json!(c));
    }
    for key in SENSITIVE_EXTRA_DATA_KEYS {
        extra_data.remove(key);
    }
    // The newer ComfyUI stamps the submission time (milliseconds) for `/api/jobs`.
    extra_data.insert("create_time".into(), json!(crate::queue::now_ms()));
    let submission = GraphSubmission {
        prompt_id: prompt_id.clone(),
        prompt,
        extra_data,
        client_id,
        number,
        front,
        targets,
    };
    match submit_graph(&state.shared, submission) {
        Ok((job, node_errors)) => {
            let number = job.workflow.map(|w| w.number).unwrap_or_default();
            state
                .shared
                .comfy_events
                .status(state.shared.queue.remaining());
            json_response(
                StatusCode::OK,
                json!({"prompt_id": prompt_id, "number": number, "node_errors": node_errors}),
            )
        }
        Err(GraphSubmitError::Invalid(rejection)) => {
            tracing::info!("invalid prompt: {}", rejection.error["message"]);
            json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": rejection.error, "node_errors": rejection.node_errors}),
            )
        }
        Err(GraphSubmitError::Full) => json_response(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"type": "queue_full", "message": "The queue is full; retry later",
                             "details": "", "extra_info": {}}, "node_errors": {}}),
        ),
        Err(GraphSubmitError::Internal(e)) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"type": "server_error", "message": e,
                             "details": "", "extra_info": {}}, "node_errors": {}}),
        ),
    }
}

/// A queue item: `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
pub(super) fn queue_item(job: &Job) -> Option<Value> {
    let w = job.workflow.as_ref()?;
    Some(json!([
        w.number,
        job.job_id,
        w.prompt,
        w.extra_data,
        w.outputs
    ]))
}

#[handler]
pub async fn get_queue(state: Data<&Arc<ComfyState>>) -> Json<Value> {
    let (running, waiting) = state.shared.queue.running_and_waiting();
    let running: Vec<Value> = running.iter().filter_map(queue_item).collect();
    let pending: Vec<Value> = waiting.iter().filter_map(queue_item).collect();
    Json(json!({"queue_running": running, "queue_pending": pending}))
}

/// `{"clear": true}` and/or `{"delete": [prompt_id, ...]}`: body bytes, any Content-Type.
async fn read_json(body: Body) -> Option<Map<String, Value>> {
    let bytes = body.into_bytes_limit(super::MAX_UPLOAD_BYTES).await.ok()?;
    if bytes.is_empty() {
        return Some(Map::new());
    }
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn ids(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Cancels pending prompts (`clear`: all of them; `delete`: those named). Running ones need
/// `/interrupt`, as in ComfyUI.
#[handler]
pub async fn post_queue(state: Data<&Arc<ComfyState>>, body: Body) -> Response {
    let Some(body) = read_json(body).await else {
        return bare(StatusCode::BAD_REQUEST);
    };
    let queue = &state.shared.queue;
    let (_, waiting) = queue.running_and_waiting();
    let mut targets = ids(body.get("delete"));
    if body.get("clear").is_some_and(truthy) {
        targets.extend(
            waiting
                .iter()
                .filter(|j| j.workflow.is_some())
                .map(|j| j.job_id.clone()),
        );
    }
    for id in targets {
        if queue
            .get(&id)
            .is_some_and(|(j, _)| j.status == JobStatus::Queued && j.workflow.is_some())
        {
            let _ = queue.cancel(&id);
        }
    }
    state.shared.comfy_events.status(queue.remaining());
    bare(StatusCode::OK)
}

/// A history entry (`PromptQueue.task_done`).
pub(super) fn history_item(job: &Job) -> Option<Value> {
    let w = job.workflow.as_ref()?;
    let success = job.status == JobStatus::Completed;
    let meta: Map<String, Value> = w
        .ui_outputs
        .keys()
        .map(|id| {
            (
                id.clone(),
                json!({"node_id": id, "display_node": id, "parent_node": null,
                       "real_node_id": id}),
            )
        })
        .collect();
    Some(json!({
        "prompt": queue_item(job)?,
        "outputs": w.ui_outputs,
        "status": {
            "status_str": if success { "success" } else { "error" },
            "completed": success,
            "messages": w.messages,
        },
        "meta": meta,
    }))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    max_items: Option<String>,
    offset: Option<String>,
}

/// `GET /history?max_items=N&offset=K`: oldest first; without `offset`, the N most recent.
#[handler]
pub async fn get_history(
    state: Data<&Arc<ComfyState>>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let parse = |v: &Option<String>| -> Result<Option<i64>, ()> {
        v.as_deref()
            .map(|s| s.parse::<i64>().map_err(|_| ()))
            .transpose()
    };
    let (Ok(max_items), Ok(offset)) = (parse(&query.max_items), parse(&query.offset)) else {
        return bare(StatusCode::BAD_REQUEST);
    };
    let jobs = state.shared.queue.finished_workflows();
    let len = jobs.len() as i64;
    let start = match (offset, max_items) {
        (Some(o), _) if o >= 0 => o,
        (_, Some(m)) => (len - m).max(0),
        _ => 0,
    };
    let end = max_items.map_or(len, |m| (start + m.max(0)).min(len));
    let mut out = Map::new();
    for job in jobs
        .iter()
        .skip(start.max(0) as usize)
        .take((end - start).max(0) as usize)
    {
        if let Some(item) = history_item(job) {
            out.insert(job.job_id.clone(), item);
        }
    }
    json_response(StatusCode::OK, Value::Object(out))
}

/// `{}` until the prompt has finished.
#[handler]
pub async fn get_history_item(
    state: Data<&Arc<ComfyState>>,
    Path(prompt_id): Path<String>,
) -> Json<Value> {
    let item = state
        .shared
        .queue
        .get(&prompt_id)
        .filter(|(job, _)| job.status.is_finished())
        .and_then(|(job, _)| history_item(&job));
    Json(match item {
        Some(item) => json!({ prompt_id: item }),
        None => json!({}),
    })
}

/// `{"clear": true}` / `{"delete": [...]}`: forgets finished prompts.
#[handler]
pub async fn post_history(state: Data<&Arc<ComfyState>>, body: Body) -> Response {
    let Some(body) = read_json(body).await else {
        return bare(StatusCode::BAD_REQUEST);
    };
    let queue = &state.shared.queue;
    let mut targets = ids(body.get("delete"));
    if body.get("clear").is_some_and(truthy) {
        targets.extend(queue.finished_workflows().into_iter().map(|j| j.job_id));
    }
    for id in targets {
        if let Err(e) = queue.forget_finished(&id) {
            tracing::warn!(prompt_id = %id, "cannot forget history: {e:?}");
        }
    }
    bare(StatusCode::OK)
}

/// Stops the running prompt (only if it is `prompt_id`, when one is given).
#[handler]
pub async fn interrupt(state: Data<&Arc<ComfyState>>, body: Body) -> Response {
    let body = read_json(body).await.unwrap_or_default();
    let queue = &state.shared.queue;
    let Some(running) = queue.running_id() else {
        return bare(StatusCode::OK);
    };
    match body.get("prompt_id").and_then(Value::as_str) {
        Some(id) if id != running => {
            tracing::info!(prompt_id = id, "not currently running, skipping interrupt");
        }
        _ => {
            let _ = queue.cancel(&running);
        }
    }
    bare(StatusCode::OK)
}

/// `{"unload_models": true}` / `{"free_memory": true}`: the runner drops what it keeps loaded
/// before its next job.
#[handler]
pub async fn free(state: Data<&Arc<ComfyState>>, body: Body) -> Response {
    let body = read_json(body).await.unwrap_or_default();
    if body.get("unload_models").is_some_and(truthy) || body.get("free_memory").is_some_and(truthy)
    {
        state.shared.free_requested.store(true, Ordering::SeqCst);
    }
    bare(StatusCode::OK)
}

/// The status message's data with this socket's id.
pub fn status_with_sid(state: &ComfyState, sid: &str) -> Value {
    let mut data = status_data(state.shared.queue.remaining());
    data["sid"] = json!(sid);
    data
}
