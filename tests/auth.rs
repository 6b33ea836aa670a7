//! API keys and rate limits over real HTTP and WebSocket, against `hanga serve` processes:
//! keys made by `hanga keys` while the server runs, each listener's refusals in its own shape,
//! `?token=` for SSE and WebSocket, the WebSocket's auth message, revocation, a bucket that a
//! restart does not refill, and the refusal to serve other machines without keys.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::http::{Response, Server, request};
use common::temp_dir;
use serde_json::json;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

fn hanga(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hanga"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

/// `hanga keys create`; returns the key it printed.
fn create_key(data: &std::path::Path, name: &str, extra: &[&str]) -> String {
    let dir = data.to_str().unwrap();
    let out = hanga(
        &[
            &["keys", "create", "--name", name, "--data-dir", dir],
            extra,
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("hk_") && key.len() > 40, "{key:?}");
    key
}

fn get_with(port: u16, path: &str, key: Option<&str>) -> Response {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    request(port, "GET", path, None, &headers)
}

fn assert_native_401(response: &Response, invalid: bool) {
    assert_eq!(response.status, 401, "{}", response.text());
    let challenge = response.header("www-authenticate").unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_eq!(challenge.contains("invalid_token"), invalid, "{challenge}");
    assert!(
        response.json()["detail"]
            .as_str()
            .unwrap()
            .contains("API key")
    );
}

/// After a `keys` command, the server sees the file within its recheck interval (250 ms).
fn settle() {
    std::thread::sleep(Duration::from_millis(600));
}

#[test]
fn keys_from_the_cli_guard_every_listener() {
    let data = temp_dir("auth-listeners");
    let server = Server::start(&data, &[]);
    let (port, comfy) = (server.port, server.comfyui_port);
    // Loopback with no key: open, as before keys existed; a key sent anyway is not refused.
    assert_eq!(get_with(port, "/api/jobs", None).status, 200);
    assert_eq!(get_with(port, "/api/jobs", Some("sk-anything")).status, 200);

    let full = create_key(&data, "full", &[]);
    let reader = create_key(&data, "reader", &["--scopes", "read"]);
    let admin = create_key(&data, "ops", &["--scopes", "admin"]);
    settle();

    // Native API: no key, a wrong key, the right key.
    assert_native_401(&get_with(port, "/api/jobs", None), false);
    assert_native_401(&get_with(port, "/api/jobs", Some("hk_wrong")), true);
    assert_eq!(get_with(port, "/api/jobs", Some(&full)).status, 200);
    assert_eq!(get_with(port, "/api/info?token=", None).status, 401);
    assert_eq!(
        get_with(port, &format!("/api/info?token={full}"), None).status,
        200
    );
    // Open routes stay open.
    for path in ["/health", "/", "/openapi.json"] {
        assert_eq!(get_with(port, path, None).status, 200, "{path}");
    }

    // Scopes: a read-only key cannot queue a job; metrics need admin.
    let body = json!({"prompt": "a cat", "steps": 1, "width": 64, "height": 64}).to_string();
    let post = |key: &str| {
        let bearer = format!("Bearer {key}");
        request(
            port,
            "POST",
            "/api/generate",
            Some(body.as_bytes()),
            &[("Authorization", &bearer)],
        )
    };
    let refused = post(&reader);
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap()
            .contains("`generate` scope")
    );
    let accepted = post(&full);
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let job_id = accepted.json()["job_id"].as_str().unwrap().to_owned();
    assert_eq!(get_with(port, "/metrics", Some(&full)).status, 403);
    assert_eq!(get_with(port, "/metrics", Some(&admin)).status, 200);

    // ComfyUI's port: bare statuses.
    let queue = get_with(comfy, "/queue", None);
    assert_eq!((queue.status, queue.body.len()), (401, 0));
    assert!(
        queue
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(get_with(comfy, "/api/queue", Some("hk_wrong")).status, 401);
    assert_eq!(get_with(comfy, "/queue", Some(&reader)).status, 200);
    let prompt = json!({"prompt": {}}).to_string();
    let bearer = format!("Bearer {reader}");
    let posted = request(
        comfy,
        "POST",
        "/prompt",
        Some(prompt.as_bytes()),
        &[("Authorization", &bearer)],
    );
    assert_eq!((posted.status, posted.body.len()), (403, 0));

    // SSE with ?token= (EventSource cannot set headers).
    assert_eq!(
        common::http::Sse::connect(port, "/api/sse/gallery", None).status,
        401
    );
    let path = format!("/api/sse/{job_id}?token={reader}");
    let mut stream = common::http::Sse::connect(port, &path, None);
    assert_eq!(stream.status, 200);
    let events = stream.collect_until(|e| e.is_terminal());
    assert_eq!(events.last().unwrap().status(), "completed", "{events:?}");

    // ComfyUI's WebSocket: ?token=, the auth message, and neither.
    let first_type = |ws: &mut tungstenite::WebSocket<_>| match ws.read().unwrap() {
        Message::Text(t) => serde_json::from_str::<serde_json::Value>(&t).unwrap()["type"].clone(),
        other => panic!("{other:?}"),
    };
    let (mut ws, _) =
        tungstenite::connect(format!("ws://127.0.0.1:{comfy}/ws?token={reader}")).unwrap();
    assert_eq!(first_type(&mut ws), "status");
    let (mut ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{comfy}/ws")).unwrap();
    ws.send(Message::text(
        json!({"type": "auth", "api_key": reader}).to_string(),
    ))
    .unwrap();
    assert_eq!(first_type(&mut ws), "status");
    let (mut ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{comfy}/ws")).unwrap();
    ws.send(Message::text(
        json!({"type": "auth", "api_key": "hk_wrong"}).to_string(),
    ))
    .unwrap();
    match ws.read().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected a close, got {other:?}"),
    }
    let refused = tungstenite::connect(format!("ws://127.0.0.1:{comfy}/ws?token=hk_wrong"));
    match refused {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }

    // Revoked (by name) while the server runs: refused from then on.
    let out = hanga(&[
        "keys",
        "revoke",
        "reader",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    settle();
    assert_native_401(&get_with(port, "/api/jobs", Some(&reader)), true);
    assert_eq!(get_with(comfy, "/queue", Some(&reader)).status, 401);
    assert_eq!(get_with(port, "/api/jobs", Some(&full)).status, 200);

    // `keys list` shows every key, never a secret.
    let out = hanga(&["keys", "list", "--data-dir", data.to_str().unwrap()]);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(listed.contains("reader") && listed.contains("revoked at") && listed.contains("ops"));
    assert!(!listed.contains(&full) && !listed.contains(&reader));
    let stored = std::fs::read_to_string(data.join("keys.json")).unwrap();
    assert!(!stored.contains(&full), "keys are stored hashed");
}

fn header_u64(response: &Response, name: &str) -> u64 {
    response
        .header(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

#[test]
fn rate_limit_holds_across_a_restart() {
    let data = temp_dir("auth-rate");
    let key = create_key(&data, "limited", &["--rate", "3/hour"]);
    let server = Server::start(&data, &[]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for remaining in [2, 1, 0] {
        let ok = get_with(server.port, "/api/jobs", Some(&key));
        assert_eq!(ok.status, 200);
        assert_eq!(header_u64(&ok, "x-ratelimit-limit"), 3);
        assert_eq!(header_u64(&ok, "x-ratelimit-remaining"), remaining);
        // Full again once the used requests have come back, 20 minutes each.
        let reset = header_u64(&ok, "x-ratelimit-reset");
        let used = 3 - remaining;
        assert!(
            reset >= now + used * 1200 - 2 && reset <= now + used * 1200 + 5,
            "{reset}"
        );
    }
    let refused = get_with(server.port, "/api/jobs", Some(&key));
    assert_eq!(refused.status, 429);
    assert_eq!(header_u64(&refused, "x-ratelimit-remaining"), 0);
    let retry = header_u64(&refused, "retry-after");
    assert!((1..=1200).contains(&retry), "{retry}");
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap()
            .contains("rate limit")
    );
    // The ComfyUI port draws on the same bucket.
    assert_eq!(
        get_with(server.comfyui_port, "/queue", Some(&key)).status,
        429
    );

    // A crash does not refill the bucket.
    server.kill();
    let server = Server::start(&data, &[]);
    let after = get_with(server.port, "/api/jobs", Some(&key));
    assert_eq!(after.status, 429, "{}", after.text());
}

/// Each message on the gateway's WebSocket counts against the key's bucket as a request does;
/// an empty bucket is an error message on an open socket; a revoked key closes it.
#[test]
fn the_gateway_socket_counts_each_message() {
    let data = temp_dir("auth-ws-rate");
    let limited = create_key(&data, "limited-ws", &["--rate", "3/hour"]);
    let other = create_key(&data, "revoked-ws", &[]);
    let server = Server::start(&data, &[]);
    let port = server.port;
    let read = |ws: &mut tungstenite::WebSocket<_>| match ws.read().unwrap() {
        Message::Text(text) => serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        other => panic!("expected text, got {other:?}"),
    };
    let subscribe = json!({"type": "subscribe", "prompt_id": "nope"}).to_string();
    // The upgrade takes one request; two messages take the rest.
    let (mut ws, _) =
        tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/ws?token={limited}")).unwrap();
    for _ in 0..2 {
        ws.send(Message::text(subscribe.clone())).unwrap();
        assert_eq!(read(&mut ws)["error"]["code"], "PROMPT_NOT_FOUND");
    }
    for _ in 0..2 {
        ws.send(Message::text(subscribe.clone())).unwrap();
        let refused = read(&mut ws);
        assert_eq!(refused["error"]["code"], "RATE_LIMIT_EXCEEDED", "{refused}");
        let retry = refused["error"]["retry_after"].as_u64().unwrap();
        assert!((1..=1200).contains(&retry), "{retry}");
    }
    // The bucket is the key's: plain requests are refused too.
    assert_eq!(get_with(port, "/api/jobs", Some(&limited)).status, 429);

    // A key revoked while its socket is open: the next message closes it.
    let (mut ws, _) =
        tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/ws?token={other}")).unwrap();
    ws.send(Message::text(subscribe.clone())).unwrap();
    assert_eq!(read(&mut ws)["error"]["code"], "PROMPT_NOT_FOUND");
    let out = hanga(&[
        "keys",
        "revoke",
        "revoked-ws",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    settle();
    ws.send(Message::text(subscribe)).unwrap();
    assert_eq!(read(&mut ws)["type"], "auth_error");
    match ws.read().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected a close, got {other:?}"),
    }
}

#[test]
fn other_machines_need_a_key_or_no_auth() {
    let data = temp_dir("auth-host");
    let out = hanga(&[
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--no-comfyui",
        "--device",
        "cpu",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hanga keys create") && stderr.contains("--no-auth"),
        "{stderr}"
    );

    // --no-auth serves, keys or not.
    let server = Server::start(&data, &["--host", "0.0.0.0", "--no-auth"]);
    assert_eq!(get_with(server.port, "/api/jobs", None).status, 200);
    drop(server);

    // With a key it serves, and wants the key.
    let key = create_key(&data, "remote", &[]);
    let server = Server::start(&data, &["--host", "0.0.0.0"]);
    assert_eq!(get_with(server.port, "/api/jobs", None).status, 401);
    assert_eq!(get_with(server.port, "/api/jobs", Some(&key)).status, 200);
}
