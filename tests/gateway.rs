//! The gateway under `/v1/api` against a real `hanga serve`: chat messages read by the rules
//! into jobs (asserted field by field, run to completion, seen through `generation/status`,
//! `/api/jobs` and the gallery), the history across a restart, the queue and model routes, and
//! the gateway's error body for bad input and missing keys.

mod common;

use std::path::Path;
use std::time::Duration;

use common::http::{Response, Server, get, post_json, request, wait_finished};
use common::{repo, temp_dir};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

/// Two more models on the demo weights, catalogued as anime (Illustrious) and realistic.
fn catalogued_models(dir: &Path) -> std::path::PathBuf {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let demo = std::fs::read_to_string(repo().join("model_manifests/sdxl-tiny-demo.toml")).unwrap();
    let assets = repo().join("assets").display().to_string();
    for (id, category, tag) in [
        ("anime-demo", "anime", "illustrious"),
        ("photo-demo", "realistic", "photo"),
    ] {
        let manifest = demo
            .replace("id = \"sdxl-tiny-demo\"", &format!("id = \"{id}\""))
            .replace(
                "category = \"general\"",
                &format!("category = \"{category}\""),
            )
            .replace(
                "tags = [\"demo\", \"sdxl\"]",
                &format!("tags = [\"{tag}\"]"),
            )
            .replace("../assets", &assets);
        std::fs::write(manifests.join(format!("{id}.toml")), manifest).unwrap();
    }
    manifests
}

/// `hanga serve` with the demo model (the default) and the two catalogued ones.
fn catalogued_server(dir: &Path) -> Server {
    let manifests = catalogued_models(dir);
    let manifests = manifests.to_str().unwrap();
    Server::start(
        dir,
        &[
            "--manifests",
            manifests,
            "--default-model",
            "sdxl-tiny-demo",
        ],
    )
}

fn chat(port: u16, body: Value) -> Response {
    post_json(port, "/v1/api/chat/process", &body)
}

fn assert_failure(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    let body = response.json();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["request_id"].as_str().unwrap().starts_with("req_"),
        "{body}"
    );
}

/// What a chat message became: its `parsed`, the job's resolved params, once it completed.
fn run_chat(port: u16, message: &str, user: &str) -> (Value, Value) {
    let answer = chat(
        port,
        json!({"message": message, "user_id": user, "session_id": "s1"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["success"], true);
    let data = &body["data"];
    let job = wait_finished(
        port,
        data["prompt_id"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    assert_eq!(job["status"], "completed", "{job}");
    (data["parsed"].clone(), job)
}

fn reasons(parsed: &Value, parameter: &str) -> Vec<String> {
    parsed["because"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["parameter"] == parameter)
        .map(|r| r["words"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn chat_messages_become_the_jobs_the_rules_say() {
    let dir = temp_dir("gateway-chat");
    let server = catalogued_server(&dir);
    let port = server.port;

    // 「美しい風景画像を生成してください」: the subject, the default model and size.
    let (parsed, job) = run_chat(port, "美しい風景画像を生成してください", "u1");
    let params = &job["params"];
    assert_eq!(params["prompt"], "美しい風景");
    assert_eq!(params["model"], "sdxl-tiny-demo");
    assert_eq!(
        (params["width"].as_u64(), params["height"].as_u64()),
        (Some(256), Some(256))
    );
    assert_eq!(params["num_images"], 1);
    assert_eq!(params["steps"], 20);
    assert_eq!(parsed["prompt"], "美しい風景");
    assert_eq!(job["images"].as_array().unwrap().len(), 1);

    // "3 anime girls, portrait, without hats": anime chooses the Illustrious-catalogued model,
    // portrait the 832×1216 bucket at the model's area, "without" the negative prompt.
    let (parsed, job) = run_chat(port, "3 anime girls, portrait, without hats", "u1");
    let params = &job["params"];
    assert_eq!(params["prompt"], "3 anime girls");
    assert_eq!(params["negative_prompt"], "hats");
    assert_eq!(params["model"], "anime-demo");
    assert_eq!(
        (params["width"].as_u64(), params["height"].as_u64()),
        (Some(208), Some(304))
    );
    assert_eq!(params["num_images"], 1);
    assert_eq!(reasons(&parsed, "orientation"), ["portrait"]);
    assert_eq!(reasons(&parsed, "negative_prompt"), ["without hats"]);
    assert_eq!(parsed["style"], "anime");

    // 「横長の猫の写真を2枚」: landscape, two images, 写真 → the realistic model.
    let (parsed, job) = run_chat(port, "横長の猫の写真を2枚", "u2");
    let params = &job["params"];
    assert_eq!(params["prompt"], "猫の写真");
    assert_eq!(params["model"], "photo-demo");
    assert_eq!(
        (params["width"].as_u64(), params["height"].as_u64()),
        (Some(304), Some(208))
    );
    assert_eq!(params["num_images"], 2);
    assert_eq!(job["images"].as_array().unwrap().len(), 2);
    assert_eq!(reasons(&parsed, "num_images"), ["を2枚"]);
    let prompt_id = job["job_id"].as_str().unwrap().to_owned();

    // Its status: done, with each result's URL and metadata; the images are in the gallery.
    let status = get(port, &format!("/v1/api/generation/status/{prompt_id}")).json();
    let data = &status["data"];
    assert_eq!(
        (data["status"].as_str(), data["progress"].as_f64()),
        (Some("completed"), Some(100.0))
    );
    let results = data["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let seed = params["seed"].as_u64().unwrap();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["metadata"]["seed"].as_u64(), Some(seed + i as u64));
        assert_eq!(result["metadata"]["width"], 304);
        let image = get(port, result["url"].as_str().unwrap());
        assert_eq!(image.status, 200);
        assert!(image.body.starts_with(b"\x89PNG"));
    }
    let gallery = get(port, "/api/images").json();
    assert!(
        gallery["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["job_id"] == prompt_id.as_str()),
        "{gallery}"
    );

    // The WebSocket: auth, a subscription, progress, then the completion with the results.
    let answer = chat(port, json!({"message": "a lighthouse, square, seed 5"})).json();
    let id = answer["data"]["prompt_id"].as_str().unwrap().to_owned();
    let mut ws = connect(port);
    send(
        &mut ws,
        json!({"type": "auth", "api_key": "anything: no key is set up"}),
    );
    assert_eq!(read(&mut ws)["type"], "auth_success");
    send(
        &mut ws,
        json!({"type": "subscribe", "event": "generation_progress", "prompt_id": id}),
    );
    assert_eq!(read(&mut ws)["type"], "subscribed");
    let complete = loop {
        let message = read(&mut ws);
        assert_eq!(message["prompt_id"], id.as_str(), "{message}");
        match message["type"].as_str() {
            Some("progress_update") => {
                assert!(message["data"]["progress"].as_f64().unwrap() <= 100.0)
            }
            Some("generation_complete") => break message,
            _ => panic!("{message}"),
        }
    };
    assert_eq!(complete["data"]["status"], "completed");
    assert_eq!(complete["data"]["results"][0]["metadata"]["seed"], 5);
    assert_eq!(complete["data"]["results"][0]["metadata"]["width"], 256);
    send(&mut ws, json!({"type": "subscribe", "prompt_id": "nope"}));
    assert_eq!(read(&mut ws)["error"]["code"], "PROMPT_NOT_FOUND");
    send(&mut ws, json!({"type": "dance"}));
    assert_eq!(read(&mut ws)["error"]["code"], "INVALID_REQUEST");

    // The queue: idle, four jobs completed today, a wait estimated from measured steps.
    let queue = get(port, "/v1/api/generation/queue").json()["data"].clone();
    assert_eq!(
        (queue["pending"].as_u64(), queue["running"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(queue["completed_today"], 4);
    assert_eq!(queue["estimated_wait_time"], 0.0);

    // A finished job cannot be cancelled; an unknown one is not found.
    assert_failure(
        &post_json(
            port,
            &format!("/v1/api/generation/cancel/{prompt_id}"),
            &json!({}),
        ),
        409,
        "ALREADY_FINISHED",
    );
    assert_failure(
        &get(port, "/v1/api/generation/status/nope"),
        404,
        "PROMPT_NOT_FOUND",
    );

    // The history, per user, newest first, and after a restart.
    drop(server);
    let server = catalogued_server(&dir);
    let history = get(server.port, "/v1/api/chat/history?user_id=u1").json()["data"].clone();
    assert_eq!(history["total"], 2);
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(
        messages[0]["message"],
        "3 anime girls, portrait, without hats"
    );
    assert_eq!(messages[1]["message"], "美しい風景画像を生成してください");
    assert_eq!(messages[0]["parsed"]["model"], "anime-demo");
    let page = get(
        server.port,
        "/v1/api/chat/history?session_id=s1&limit=1&offset=2",
    )
    .json();
    assert_eq!(
        page["data"]["messages"][0]["message"],
        "美しい風景画像を生成してください"
    );
}

#[test]
fn models_and_bad_input_in_the_gateways_shape() {
    let dir = temp_dir("gateway-errors");
    let server = catalogued_server(&dir);
    let port = server.port;

    let all = get(port, "/v1/api/models/list").json()["data"]["models"].clone();
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    let anime = get(port, "/v1/api/models/list?category=anime").json()["data"]["models"].clone();
    assert_eq!(
        anime,
        json!([{"id": "anime-demo", "name": "SDXL tiny demo (random weights)",
        "type": "sdxl", "category": "anime", "tags": ["illustrious"], "default": false}])
    );
    let info = get(port, "/v1/api/models/info/sdxl-tiny-demo").json()["data"].clone();
    assert_eq!(info["license"], "MIT OR Apache-2.0");
    assert_eq!(info["recommended"]["steps"], 20);
    assert_eq!(info["recommended"]["cfg"], 5.0);
    assert_eq!(
        info["resolutions"][1],
        json!({"width": 208, "height": 304, "orientation": "portrait"})
    );
    assert_eq!(info["parameters"]["properties"]["steps"]["maximum"], 150);
    assert_failure(
        &get(port, "/v1/api/models/info/nope"),
        404,
        "MODEL_NOT_FOUND",
    );

    // Missing and mistyped fields, foreign models, presets, empty subjects, huge bodies.
    assert_failure(&chat(port, json!({})), 400, "INVALID_REQUEST");
    assert_failure(&chat(port, json!({"message": 7})), 400, "INVALID_REQUEST");
    let not_json = request(port, "POST", "/v1/api/chat/process", Some(b"{"), &[]);
    assert_failure(&not_json, 400, "INVALID_REQUEST");
    assert_failure(
        &chat(
            port,
            json!({"message": "a cat", "options": {"model": "nope"}}),
        ),
        404,
        "MODEL_NOT_FOUND",
    );
    assert_failure(
        &chat(
            port,
            json!({"message": "a cat", "options": {"quality": "ultra"}}),
        ),
        400,
        "INVALID_REQUEST",
    );
    assert_failure(
        &chat(port, json!({"message": "生成してください"})),
        400,
        "INVALID_PROMPT",
    );
    assert_failure(
        &chat(port, json!({"message": "a cat, 4000x4000"})),
        422,
        "INVALID_PROMPT",
    );
    assert_failure(
        &chat(
            port,
            json!({"message": "a cat", "options": {"nsfw_filter": true}}),
        ),
        503,
        "NSFW_CHECKER_UNAVAILABLE",
    );
    let huge = json!({"message": "a".repeat(2 << 20)});
    assert_failure(&chat(port, huge), 413, "PAYLOAD_TOO_LARGE");
    assert_failure(
        &get(port, "/v1/api/chat/history?limit=0"),
        400,
        "INVALID_REQUEST",
    );

    // The gateway's routes are in the OpenAPI document, with the key schemes.
    let doc = get(port, "/openapi.json").json();
    let chat_op = &doc["paths"]["/v1/api/chat/process"]["post"];
    assert_eq!(chat_op["security"], json!([{"bearer": []}, {"token": []}]));
    assert_eq!(
        chat_op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Failure"
    );
    assert!(doc["paths"]["/v1/api/generation/queue"]["get"].is_object());

    // With a key configured: the gateway's INVALID_API_KEY body.
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_hanga"))
        .args(["keys", "create", "--name", "gw", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(made.status.success());
    std::thread::sleep(Duration::from_millis(600));
    let refused = get(port, "/v1/api/generation/queue");
    assert_failure(&refused, 401, "INVALID_API_KEY");
    assert!(
        refused
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    // The WebSocket without a key in the upgrade: a wrong auth message is refused and closed.
    let mut ws = connect(port);
    send(&mut ws, json!({"type": "auth", "api_key": "hk_wrong"}));
    assert_eq!(read(&mut ws)["type"], "auth_error");
    match ws.read().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected a close, got {other:?}"),
    }
}

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

fn connect(port: u16) -> Socket {
    let (mut ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/ws")).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = ws.get_mut() {
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
    }
    ws
}

fn send(ws: &mut Socket, message: Value) {
    ws.send(Message::text(message.to_string())).unwrap();
}

/// The next text message as JSON.
fn read(ws: &mut Socket) -> Value {
    match ws.read().unwrap() {
        Message::Text(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("not a text message: {other:?}"),
    }
}
