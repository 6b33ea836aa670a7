//! `WS /v1/ws`: the gateway's WebSocket. JSON messages both ways:
//! - `{"type": "auth", "api_key": KEY}` → `{"type": "auth_success"}` (needed first where a key
//!   is and the upgrade carried none; a wrong key gets `auth_error` and a 1008 close);
//! - `{"type": "subscribe", "event": "generation_progress", "prompt_id": ID}` →
//!   `{"type": "subscribed", "prompt_id"}`, then `progress_update` messages
//!   (`data`: status, progress 0–100, step, total_steps, queue_position) and one
//!   `generation_complete` (`data`: the generation's status with its results, as
//!   `GET /v1/api/generation/status/{prompt_id}` gives it);
//! - `{"type": "unsubscribe", "prompt_id": ID}`; anything else gets `{"type": "error", ...}`.
//!
//! Every message after the upgrade counts against the key's rate limit as a request does: an
//! empty bucket answers `{"type": "error", "error": {"code": "RATE_LIMIT_EXCEEDED", ...,
//! "retry_after"}}` and leaves the socket open; a revoked key gets `auth_error` and a close.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use poem::web::Data;
use poem::web::websocket::{CloseCode, Message, WebSocket};
use poem::{IntoResponse, handler};
use poem_openapi::types::ToJSON;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::status_of;
use crate::auth::{Rejection, Verdict};
use crate::server::AppState;
use crate::server::auth::{AuthChallenge, SocketKey};
use crate::server::sse::job_stream;

fn error(code: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"code": code, "message": message}})
}

/// Forwards one job's events as gateway messages until it finishes.
fn follow(
    state: Arc<AppState>,
    prompt_id: String,
    out: mpsc::Sender<Value>,
) -> Option<JoinHandle<()>> {
    let mut events = job_stream(&state, &prompt_id, None)?;
    Some(tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let terminal = matches!(event.status.as_str(), "completed" | "failed" | "cancelled");
            let message = if terminal {
                let Some((job, position)) = state.shared.queue.get(&prompt_id) else {
                    return;
                };
                let status = status_of(&state, &job, position).to_json();
                json!({"type": "generation_complete", "prompt_id": prompt_id, "data": status})
            } else {
                let (step, total) = (event.step.unwrap_or(0), event.total_steps.unwrap_or(0));
                let progress = if total > 0 {
                    f64::from(step) * 100.0 / f64::from(total)
                } else {
                    0.0
                };
                json!({"type": "progress_update", "prompt_id": prompt_id, "data": {
                    "status": event.status, "progress": progress, "step": step,
                    "total_steps": total, "queue_position": event.position}})
            };
            if out.send(message).await.is_err() || terminal {
                return;
            }
        }
    }))
}

#[handler]
pub async fn websocket(
    ws: WebSocket,
    state: Data<&Arc<AppState>>,
    challenge: Option<Data<&AuthChallenge>>,
    socket_key: Option<Data<&SocketKey>>,
) -> impl IntoResponse {
    let state = state.clone();
    let challenge = challenge.map(|c| c.0.clone());
    let mut key = socket_key.map(|k| k.0.clone());
    ws.on_upgrade(move |socket| async move {
        let (mut sink, mut stream) = socket.split();
        let (out, mut outgoing) = mpsc::channel::<Value>(64);
        let mut follows: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut authenticated = challenge.is_none();
        loop {
            tokio::select! {
                incoming = stream.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    };
                    let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let is_auth = message["type"] == "auth";
                    let verdict = match (&challenge, &key) {
                        (Some(c), None) if is_auth && !authenticated => match c.accept(&text) {
                            Some(accepted) => {
                                key = Some(accepted);
                                Verdict::Pass(None)
                            }
                            None => Verdict::Reject(Rejection::Invalid),
                        },
                        (_, Some(key)) if authenticated => key.charge(),
                        _ => Verdict::Pass(None),
                    };
                    let reply = match verdict {
                        Verdict::Reject(Rejection::Limited(allowance)) => {
                            let refusal = Rejection::Limited(allowance);
                            json!({"type": "error", "error": {"code": "RATE_LIMIT_EXCEEDED",
                                "message": refusal.message(), "retry_after": allowance.retry_after}})
                        }
                        Verdict::Reject(_) => {
                            let refusal = json!({"type": "auth_error", "error": {
                                "code": "INVALID_API_KEY", "message": "the API key is not valid"}});
                            let _ = sink.send(Message::Text(refusal.to_string())).await;
                            let _ = sink.send(Message::Close(Some((CloseCode::Policy, "invalid API key".into())))).await;
                            break;
                        }
                        Verdict::Pass(_) if is_auth => {
                            authenticated = true;
                            json!({"type": "auth_success"})
                        }
                        Verdict::Pass(_) if !authenticated => {
                            let reason = "authentication required: send {\"type\": \"auth\", \"api_key\": KEY} first";
                            let _ = sink.send(Message::Close(Some((CloseCode::Policy, reason.into())))).await;
                            break;
                        }
                        Verdict::Pass(_) => match message["type"].as_str() {
                            Some("subscribe") => match message["prompt_id"].as_str() {
                                Some(id) if message["event"].as_str().is_none_or(|e| e == "generation_progress") => {
                                    match follow(state.clone(), id.to_owned(), out.clone()) {
                                        Some(task) => {
                                            if let Some(old) = follows.insert(id.to_owned(), task) {
                                                old.abort();
                                            }
                                            json!({"type": "subscribed", "event": "generation_progress", "prompt_id": id})
                                        }
                                        None => error("PROMPT_NOT_FOUND", &format!("no generation `{id}`")),
                                    }
                                }
                                Some(_) => error("INVALID_REQUEST", "the only event is generation_progress"),
                                None => error("INVALID_REQUEST", "subscribe needs a prompt_id"),
                            },
                            Some("unsubscribe") => {
                                let id = message["prompt_id"].as_str().unwrap_or_default();
                                if let Some(task) = follows.remove(id) {
                                    task.abort();
                                }
                                json!({"type": "unsubscribed", "prompt_id": id})
                            }
                            _ => error("INVALID_REQUEST", "messages are auth, subscribe or unsubscribe (JSON)"),
                        },
                    };
                    if sink.send(Message::Text(reply.to_string())).await.is_err() {
                        break;
                    }
                }
                Some(message) = outgoing.recv() => {
                    if sink.send(Message::Text(message.to_string())).await.is_err() {
                        break;
                    }
                }
            }
        }
        for task in follows.into_values() {
            task.abort();
        }
    })
}
