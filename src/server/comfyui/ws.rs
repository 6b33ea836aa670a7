//! `/ws?clientId=`: ComfyUI's WebSocket (`server.py websocket_handler`). The socket gets a
//! `status` with its sid at once, then every broadcast message and the messages of prompts
//! it submitted; there is no replay. Where a key is needed and the upgrade carried none
//! (no header, no `?token=`), the first message must be `{"type": "auth", "api_key": KEY}`;
//! anything else closes the socket with 1008 (policy violation).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{CloseCode, Message, WebSocket};
use poem::web::{Data, Query};
use poem::{IntoResponse, handler};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ComfyState;
use super::prompt::status_with_sid;
use crate::queue::ComfyFrame;
use crate::server::auth::AuthChallenge;

#[derive(Deserialize)]
pub struct WsQuery {
    #[serde(rename = "clientId")]
    client_id: Option<String>,
}

#[handler]
pub async fn websocket(
    ws: WebSocket,
    state: Data<&Arc<ComfyState>>,
    Query(query): Query<WsQuery>,
    challenge: Option<Data<&AuthChallenge>>,
) -> impl IntoResponse {
    let state = state.clone();
    let challenge = challenge.map(|c| c.0.clone());
    let sid = query
        .client_id
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    ws.on_upgrade(move |socket| async move {
        let (mut sink, mut stream) = socket.split();
        if let Some(challenge) = challenge {
            let authenticated = match stream.next().await {
                Some(Ok(Message::Text(text))) => challenge.accept(&text).is_some(),
                _ => false,
            };
            if !authenticated {
                let reason = "authentication required: send {\"type\": \"auth\", \"api_key\": KEY} first";
                let close = CloseCode::Policy;
                let _ = sink.send(Message::Close(Some((close, reason.into())))).await;
                return;
            }
        }
        let mut messages = state.shared.comfy_events.subscribe();
        let hello = json!({"type": "status", "data": status_with_sid(&state, &sid)});
        if sink.send(Message::Text(hello.to_string())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        // `feature_flags` is answered with the server's flags.
                        let parsed: Option<Value> = serde_json::from_str(&text).ok();
                        if parsed.as_ref().and_then(|v| v["type"].as_str()) == Some("feature_flags") {
                            let flags = json!({"type": "feature_flags", "data": {
                                "supports_preview_metadata": false,
                                "max_upload_size": super::MAX_UPLOAD_BYTES as f64}});
                            if sink.send(Message::Text(flags.to_string())).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                message = messages.recv() => match message {
                    Ok(m) if m.to.as_deref().is_none_or(|to| to == sid) => {
                        let frame = match m.frame {
                            ComfyFrame::Json(v) => Message::Text(v.to_string()),
                            ComfyFrame::Binary(b) => Message::Binary(b),
                        };
                        if sink.send(frame).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(sid, "ComfyUI socket fell behind by {n} messages");
                    }
                    Err(_) => break,
                },
            }
        }
    })
}
