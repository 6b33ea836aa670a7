//! ComfyUI's WebSocket messages (`{"type", "data"}` frames and binary preview frames), as the
//! runner publishes them for the ComfyUI face: each goes to the socket of the prompt's
//! `client_id`, or to every socket when it names none.

use serde_json::{Value, json};
use tokio::sync::broadcast;

#[derive(Clone, Debug)]
pub enum ComfyFrame {
    Json(Value),
    Binary(Vec<u8>),
}

/// A frame and who receives it: one client id, or everyone (`None`).
#[derive(Clone, Debug)]
pub struct ComfyMessage {
    pub to: Option<String>,
    pub frame: ComfyFrame,
}

pub struct ComfyEvents {
    tx: broadcast::Sender<ComfyMessage>,
}

impl Default for ComfyEvents {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl ComfyEvents {
    pub fn subscribe(&self) -> broadcast::Receiver<ComfyMessage> {
        self.tx.subscribe()
    }

    /// `{"type": kind, "data": data}` to `to` (everyone when None).
    pub fn send(&self, to: Option<&str>, kind: &str, data: Value) {
        let _ = self.tx.send(ComfyMessage {
            to: to.map(str::to_owned),
            frame: ComfyFrame::Json(json!({"type": kind, "data": data})),
        });
    }

    pub fn send_binary(&self, to: Option<&str>, bytes: Vec<u8>) {
        let _ = self.tx.send(ComfyMessage {
            to: to.map(str::to_owned),
            frame: ComfyFrame::Binary(bytes),
        });
    }

    /// The broadcast `status` message (`queue_updated`).
    pub fn status(&self, queue_remaining: usize) {
        self.send(None, "status", status_data(queue_remaining));
    }
}

/// `{"status": {"exec_info": {"queue_remaining": n}}}`.
pub fn status_data(queue_remaining: usize) -> Value {
    json!({"status": {"exec_info": {"queue_remaining": queue_remaining}}})
}
