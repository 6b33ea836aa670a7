//! Talking to a real `hanga serve` as clients do: plain requests with reqwest, SSE read with
//! eventsource-stream (the parser of the `reqwest-eventsource` client). Tests stay synchronous:
//! each SSE connection runs on a thread of its own. ComfyUI's `/ws` is read with tungstenite's
//! blocking client (tests/comfyui_server.rs).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `body` goes as JSON unless `headers` name a Content-Type.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client().request(method, format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(body) = body {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("Content-Type", "application/json");
        }
        request = request.body(body.to_vec());
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: response.bytes().unwrap().to_vec(),
    }
}

pub fn get(port: u16, path: &str) -> Response {
    request(port, "GET", path, None, &[])
}

pub fn post_json(port: u16, path: &str, body: &serde_json::Value) -> Response {
    request(port, "POST", path, Some(body.to_string().as_bytes()), &[])
}

#[derive(Clone, Debug)]
pub struct SseEvent {
    pub id: String,
    /// The `event:` name; "message" when the server names none (what `onmessage` receives).
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }

    /// The `status` of a job stream event.
    pub fn status(&self) -> String {
        self.json()["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn is_terminal(&self) -> bool {
        ["completed", "failed", "cancelled"].contains(&self.status().as_str())
    }
}

/// An open SSE connection.
pub struct Sse {
    events: mpsc::Receiver<SseEvent>,
    pub status: u16,
}

impl Sse {
    pub fn connect(port: u16, path: &str, last_event_id: Option<&str>) -> Sse {
        let url = format!("http://127.0.0.1:{port}{path}");
        let last_event_id = last_event_id.map(str::to_owned);
        let (status_tx, status_rx) = mpsc::channel();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut request = reqwest::Client::new()
                    .get(url)
                    .header("Accept", "text/event-stream");
                if let Some(id) = last_event_id {
                    request = request.header("Last-Event-ID", id);
                }
                let response = request.send().await.unwrap();
                status_tx.send(response.status().as_u16()).unwrap();
                let mut stream =
                    eventsource_stream::Eventsource::eventsource(response.bytes_stream());
                while let Some(Ok(event)) = stream.next().await {
                    let event = SseEvent {
                        id: event.id,
                        event: event.event,
                        data: event.data,
                    };
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            });
        });
        let status = status_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        Sse { events, status }
    }

    /// The next event (comments skipped); `None` when the stream ends (or nothing comes for
    /// five minutes: on lavapipe, wgpu's first step autotunes every kernel for minutes).
    pub fn next(&mut self) -> Option<SseEvent> {
        self.events.recv_timeout(Duration::from_secs(300)).ok()
    }

    /// Events until one satisfies `until` (included) or the stream ends.
    pub fn collect_until(&mut self, until: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(e) = self.next() {
            let done = until(&e);
            events.push(e);
            if done {
                break;
            }
        }
        events
    }
}

/// A `hanga serve` process on free ports, killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    /// The ComfyUI API's port.
    pub comfyui_port: u16,
}

/// The device `hanga serve` runs on in the tests: the CPU, wgpu in a `--features wgpu` build
/// (`make test-wgpu`), CUDA in a `--features cuda` one (`make gpu-bundle`).
pub const TEST_DEVICE: &str = if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "wgpu") {
    "wgpu"
} else {
    "cpu"
};

impl Server {
    /// Starts on ports the OS picks (`--port 0 --comfyui-port 0`) and reads them from the
    /// server's first two lines.
    pub fn start(data_dir: &std::path::Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hanga"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "serve",
                "--device",
                TEST_DEVICE,
                "--port",
                "0",
                "--comfyui-port",
                "0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--thumbnails-dir")
            .arg(data_dir.join("thumbnails"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut port = || {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            line.trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"))
        };
        let (port, comfyui_port) = (port(), port());
        Server {
            child,
            port,
            comfyui_port,
        }
    }

    /// A real crash: SIGKILL, no graceful shutdown.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Queues a native generate request and waits until it has completed; returns the job's JSON.
pub fn generated(port: u16, body: &serde_json::Value) -> serde_json::Value {
    let accepted = post_json(port, "/api/generate", body);
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let job_id = accepted.json()["job_id"].as_str().unwrap().to_owned();
    let job = wait_finished(port, &job_id, Duration::from_secs(300));
    assert_eq!(job["status"], "completed", "{job}");
    job
}

/// Polls a job until it is finished; returns its JSON.
pub fn wait_finished(port: u16, job_id: &str, timeout: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let job = get(port, &format!("/api/jobs/{job_id}")).json();
        if ["completed", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        assert!(
            started.elapsed() < timeout,
            "job {job_id} did not finish: {job}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
