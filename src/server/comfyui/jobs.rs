//! ComfyUI's newer jobs routes, `GET /api/jobs` and `GET /api/jobs/{job_id}`: the queue and
//! the history as one list of job objects (comfyanonymous/ComfyUI `server.py` `get_jobs`,
//! `comfy_execution/jobs.py`; ../shared/reference/api-peers.md §1.2). Like every ComfyUI
//! route they are declared once and mounted again under `/api` (so `/api/api/jobs` too).

use std::collections::HashMap;
use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::{Data, Path, Query};
use poem::{Response, handler};
use serde_json::{Value, json};

use super::prompt::{history_item, queue_item};
use super::{ComfyState, json_response};
use crate::queue::{Job, JobStatus};

const STATUSES: &[&str] = &["pending", "in_progress", "completed", "failed", "cancelled"];

fn error(message: String) -> Response {
    json_response(StatusCode::BAD_REQUEST, json!({ "error": message }))
}

/// `extra_data`'s `create_time` and `extra_pnginfo.workflow.id`.
fn metadata(extra_data: &Value) -> (Value, Value) {
    (
        extra_data["create_time"].clone(),
        extra_data["extra_pnginfo"]["workflow"]["id"].clone(),
    )
}

/// `prune_dict`: the fields that are not null.
fn pruned(fields: Vec<(&str, Value)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

/// `normalize_queue_item`.
fn queued_job(job: &Job, status: &str) -> Option<Value> {
    let item = queue_item(job)?;
    let (create_time, workflow_id) = metadata(&item[3]);
    Some(pruned(vec![
        ("id", json!(job.job_id)),
        ("status", json!(status)),
        ("priority", item[0].clone()),
        ("create_time", create_time),
        ("outputs_count", json!(0)),
        ("workflow_id", workflow_id),
    ]))
}

/// `get_outputs_summary`: every output item counted; the first previewable one (of type
/// "output" first) with its node id and media type.
fn outputs_summary(outputs: &Value) -> (usize, Value) {
    let (mut count, mut preview, mut fallback) = (0, Value::Null, Value::Null);
    for (node_id, node_outputs) in outputs.as_object().into_iter().flatten() {
        for (media_type, items) in node_outputs.as_object().into_iter().flatten() {
            let Some(items) = items.as_array().filter(|_| media_type != "animated") else {
                continue;
            };
            for item in items.iter().filter_map(Value::as_object) {
                count += 1;
                if !preview.is_null() || !["images", "video", "audio"].contains(&&**media_type) {
                    continue;
                }
                let mut enriched = item.clone();
                enriched.insert("nodeId".into(), json!(node_id));
                enriched.insert("mediaType".into(), json!(media_type));
                if item.get("type").and_then(Value::as_str) == Some("output") {
                    preview = Value::Object(enriched);
                } else if fallback.is_null() {
                    fallback = Value::Object(enriched);
                }
            }
        }
    }
    (count, if preview.is_null() { fallback } else { preview })
}

/// `normalize_history_item`: `completed` / `failed` from the status, `cancelled` when it was
/// interrupted; times from the status messages.
fn finished_job(job: &Job, include_outputs: bool) -> Option<Value> {
    let item = history_item(job)?;
    let prompt = &item["prompt"];
    let (create_time, workflow_id) = metadata(&prompt[3]);
    let status = &item["status"];
    let messages = status["messages"].as_array().cloned().unwrap_or_default();
    let event = |name: &str| messages.iter().find(|m| m[0] == name).map(|m| m[1].clone());
    let interrupted = event("execution_interrupted");
    let status_name = match status["status_str"].as_str() {
        Some("error") if interrupted.is_some() => "cancelled",
        Some("error") => "failed",
        _ => "completed",
    };
    let end = [
        "execution_success",
        "execution_error",
        "execution_interrupted",
    ]
    .iter()
    .find_map(|name| event(name));
    let (count, preview) = outputs_summary(&item["outputs"]);
    let mut job_value = pruned(vec![
        ("id", json!(job.job_id)),
        ("status", json!(status_name)),
        ("priority", prompt[0].clone()),
        ("create_time", create_time),
        (
            "execution_start_time",
            event("execution_start").map_or(Value::Null, |e| e["timestamp"].clone()),
        ),
        (
            "execution_end_time",
            end.as_ref().map_or(Value::Null, |e| e["timestamp"].clone()),
        ),
        (
            "execution_error",
            event("execution_error").unwrap_or(Value::Null),
        ),
        ("outputs_count", json!(count)),
        ("preview_output", preview),
        ("workflow_id", workflow_id),
    ]);
    if include_outputs && let Value::Object(fields) = &mut job_value {
        fields.insert("outputs".into(), item["outputs"].clone());
        fields.insert("execution_status".into(), status.clone());
        fields.insert(
            "workflow".into(),
            json!({"prompt": prompt[2], "extra_data": prompt[3]}),
        );
    }
    Some(job_value)
}

/// Every prompt as a job object: running, pending, then finished ones.
fn all_jobs(state: &ComfyState) -> Vec<Value> {
    let (running, waiting) = state.shared.queue.running_and_waiting();
    let mut jobs: Vec<Value> = running
        .iter()
        .filter_map(|j| queued_job(j, "in_progress"))
        .collect();
    jobs.extend(waiting.iter().filter_map(|j| queued_job(j, "pending")));
    jobs.extend(
        state
            .shared
            .queue
            .finished_workflows()
            .iter()
            .filter_map(|j| finished_job(j, false)),
    );
    jobs
}

/// `GET /api/jobs?status=&workflow_id=&sort_by=&sort_order=&limit=&offset=`, with ComfyUI's
/// 400 `{"error"}` answers.
#[handler]
pub async fn get_jobs(
    state: Data<&Arc<ComfyState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let statuses: Option<Vec<String>> = query.get("status").filter(|s| !s.is_empty()).map(|s| {
        s.split(',')
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if let Some(list) = &statuses {
        let invalid: Vec<&str> = list
            .iter()
            .map(String::as_str)
            .filter(|s| !STATUSES.contains(s))
            .collect();
        if !invalid.is_empty() {
            return error(format!(
                "Invalid status value(s): {}. Valid values: {}",
                invalid.join(", "),
                STATUSES.join(", ")
            ));
        }
    }
    let sort_by = query
        .get("sort_by")
        .map_or("created_at".into(), |s| s.to_lowercase());
    if !["created_at", "execution_duration"].contains(&sort_by.as_str()) {
        return error("sort_by must be 'created_at' or 'execution_duration'".into());
    }
    let sort_order = query
        .get("sort_order")
        .map_or("desc".into(), |s| s.to_lowercase());
    if !["asc", "desc"].contains(&sort_order.as_str()) {
        return error("sort_order must be 'asc' or 'desc'".into());
    }
    let limit = match query.get("limit").map(|l| l.trim().parse::<i64>()) {
        None => None,
        Some(Ok(l)) if l > 0 => Some(l as usize),
        Some(Ok(_)) => return error("limit must be a positive integer".into()),
        Some(Err(_)) => return error("limit must be an integer".into()),
    };
    let offset = match query.get("offset").map(|o| o.trim().parse::<i64>()) {
        None => 0,
        Some(Ok(o)) => o.max(0) as usize,
        Some(Err(_)) => return error("offset must be an integer".into()),
    };
    let mut jobs: Vec<Value> = all_jobs(&state)
        .into_iter()
        .filter(|j| {
            statuses
                .as_ref()
                .is_none_or(|list| list.iter().any(|s| j["status"] == **s))
        })
        .filter(|j| {
            query
                .get("workflow_id")
                .is_none_or(|w| j["workflow_id"] == **w)
        })
        .collect();
    let key = |j: &Value| -> i64 {
        if sort_by == "execution_duration" {
            let (start, end) = (
                j["execution_start_time"].as_i64().unwrap_or(0),
                j["execution_end_time"].as_i64().unwrap_or(0),
            );
            if start != 0 && end != 0 {
                end - start
            } else {
                0
            }
        } else {
            j["create_time"].as_i64().unwrap_or(0)
        }
    };
    // `sorted(jobs, key, reverse=desc)`: stable, so equal keys keep their order.
    if sort_order == "desc" {
        jobs.sort_by_key(|j| std::cmp::Reverse(key(j)));
    } else {
        jobs.sort_by_key(key);
    }
    let total = jobs.len();
    let page: Vec<Value> = jobs
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    let has_more = offset + page.len() < total;
    json_response(
        StatusCode::OK,
        json!({"jobs": page, "pagination": {"offset": offset, "limit": limit,
                                            "total": total, "has_more": has_more}}),
    )
}

/// `GET /api/jobs/{job_id}`: the job with its outputs, status and workflow once finished;
/// 404 `{"error": "Job not found"}`.
#[handler]
pub async fn get_job(state: Data<&Arc<ComfyState>>, Path(job_id): Path<String>) -> Response {
    let found = state
        .shared
        .queue
        .get(&job_id)
        .and_then(|(job, _)| match job.status {
            JobStatus::Queued => queued_job(&job, "pending"),
            JobStatus::Processing => queued_job(&job, "in_progress"),
            _ => finished_job(&job, true),
        });
    match found {
        Some(job) => json_response(StatusCode::OK, job),
        None => json_response(StatusCode::NOT_FOUND, json!({"error": "Job not found"})),
    }
}
