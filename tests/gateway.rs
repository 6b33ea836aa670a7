//! The gateway under `/v1/api` against a real `hanga serve`: chat messages read by the rules
//! into jobs (asserted field by field, run to completion, seen through `generation/status`,
//! `/api/jobs` and the gallery), the history across a restart, the queue and model routes, and
//! the gateway's error body for bad input and missing keys.

mod common;

use std::path::Path;
use std::time::Duration;

use common::http::{Response, Server, generated, get, post_json, request, wait_finished};
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
    // No checker: the NSFW routes say how to add one, and the native field is refused.
    for route in ["analyze", "filter"] {
        let answer = post_json(
            port,
            &format!("/v1/api/nsfw/{route}"),
            &json!({"image_url": "/api/images/x.png"}),
        );
        assert_failure(&answer, 503, "NSFW_CHECKER_UNAVAILABLE");
        assert!(
            answer.text().contains("safety-checker"),
            "{}",
            answer.text()
        );
    }
    let refused = post_json(
        port,
        "/api/generate",
        &json!({"prompt": "a cat", "nsfw_filter": true}),
    );
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert_eq!(
        refused.json()["detail"][0]["loc"],
        json!(["body", "nsfw_filter"])
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

/// The tiny safety checker of the parity fixture (tests/fixtures/components/safety_checker),
/// as a manifest beside the catalogued models.
fn with_checker(manifests: &Path) {
    let fixture = common::fixtures().join("components/safety_checker");
    std::fs::write(
        manifests.join("tiny-checker.toml"),
        format!(
            "id = \"tiny-checker\"\nname = \"Tiny safety checker (random weights)\"\n\
             family = \"safety-checker\"\n[files]\nweights = \"{}\"\nconfig = \"{}\"\n",
            fixture.join("model.safetensors").display(),
            fixture.join("config.json").display()
        ),
    )
    .unwrap();
}

fn fixture_png(i: usize) -> Vec<u8> {
    std::fs::read(common::fixtures().join(format!("components/safety_checker/image_{i}.png")))
        .unwrap()
}

fn gateway_data(response: Response) -> Value {
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["success"], true, "{body}");
    body["data"].clone()
}

fn rgb(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

/// The gallery's entry for `name`.
fn gallery_entry(port: u16, name: &Value) -> Value {
    let gallery = get(port, "/api/images?limit=100").json();
    gallery["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["filename"] == *name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {gallery}"))
}

/// The safety checker behind the gateway: verdicts on uploads and on the server's own images
/// (those of the parity fixture: image 0 flagged, image 1 not), filtered copies in the
/// gallery, jobs with `nsfw_filter`, and refusals of anything that is not an image here.
#[test]
fn nsfw_checks_with_the_tiny_checker() {
    let dir = temp_dir("gateway-nsfw");
    let manifests = catalogued_models(&dir);
    with_checker(&manifests);
    let server = Server::start(
        &dir,
        &[
            "--manifests",
            manifests.to_str().unwrap(),
            "--default-model",
            "sdxl-tiny-demo",
        ],
    );
    let port = server.port;
    let analyze = |body: Value| post_json(port, "/v1/api/nsfw/analyze", &body);

    // Uploads, with and without a data: prefix: the verdicts of the parity fixture.
    let flagged = gateway_data(analyze(json!({"image": common::base64(&fixture_png(0))})));
    assert_eq!(flagged["is_nsfw"], true, "{flagged}");
    assert_eq!(flagged["labels"], json!(["concept_12"]));
    assert!(
        (flagged["confidence"].as_f64().unwrap() - 0.048).abs() < 1e-6,
        "{flagged}"
    );
    assert_eq!(flagged["concept_scores"].as_array().unwrap().len(), 17);
    let clean = gateway_data(analyze(
        json!({"image": format!("data:image/png;base64,{}", common::base64(&fixture_png(1)))}),
    ));
    assert_eq!(clean["is_nsfw"], false, "{clean}");
    assert_eq!(clean["labels"], json!([]));
    assert!(clean["confidence"].as_f64().unwrap() < 0.0);
    // Image 2 is flagged through a special-care concept's adjustment.
    let special = gateway_data(analyze(json!({"image": common::base64(&fixture_png(2))})));
    assert_eq!(
        special["labels"],
        json!(["concept_2", "special_care_2"]),
        "{special}"
    );

    // Filtered copies: hidden where flagged, the same picture where not; in the gallery.
    let input = rgb(&fixture_png(0));
    for filter in ["blur", "pixelate", "black"] {
        let data = gateway_data(post_json(
            port,
            "/v1/api/nsfw/filter",
            &json!({"image": common::base64(&fixture_png(0)), "filter": filter}),
        ));
        assert_eq!(
            (data["filtered"].as_bool(), data["filter"].as_str()),
            (Some(true), Some(filter))
        );
        let copy = get(port, data["url"].as_str().unwrap());
        assert_eq!(copy.status, 200);
        let copy = rgb(&copy.body);
        assert_eq!(copy.dimensions(), input.dimensions());
        let changed = copy
            .as_raw()
            .iter()
            .zip(input.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            changed > input.as_raw().len() / 2,
            "{filter}: {changed} values changed"
        );
        if filter == "black" {
            assert!(copy.as_raw().iter().all(|&v| v == 0));
        }
    }
    let kept = gateway_data(post_json(
        port,
        "/v1/api/nsfw/filter",
        &json!({"image": common::base64(&fixture_png(1))}),
    ));
    assert_eq!(
        (kept["filtered"].as_bool(), kept["filter"].as_str()),
        (Some(false), Some("blur"))
    );
    assert_eq!(
        rgb(&get(port, kept["url"].as_str().unwrap()).body),
        rgb(&fixture_png(1))
    );
    assert_eq!(gallery_entry(port, &kept["filename"])["nsfw"], false);

    // The server's own images by URL: relative, and absolute on the address asked.
    let own = format!("/api/images/{}", kept["filename"].as_str().unwrap());
    assert_eq!(
        gateway_data(analyze(json!({"image_url": own})))["is_nsfw"],
        false
    );
    let absolute = format!("http://127.0.0.1:{port}{own}");
    assert_eq!(
        gateway_data(analyze(json!({"image_url": absolute})))["is_nsfw"],
        false
    );

    // Refused: foreign URLs (never fetched), unknown images, not images, neither, both.
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://127.0.0.1:{}{own}", port + 1),
        "file:///etc/passwd".into(),
        "/api/thumbs/x.png".into(),
    ] {
        assert_failure(&analyze(json!({"image_url": url})), 422, "INVALID_IMAGE");
    }
    assert_failure(
        &analyze(json!({"image_url": "/api/images/nope.png"})),
        404,
        "IMAGE_NOT_FOUND",
    );
    assert_failure(&analyze(json!({"image": "%%%"})), 422, "INVALID_IMAGE");
    assert_failure(
        &analyze(json!({"image": common::base64(b"not an image")})),
        422,
        "INVALID_IMAGE",
    );
    assert_failure(&analyze(json!({})), 422, "INVALID_IMAGE");
    assert_failure(
        &analyze(json!({"image": common::base64(&fixture_png(1)), "image_url": own})),
        422,
        "INVALID_IMAGE",
    );
    assert_failure(&analyze(json!({"image": 7})), 400, "INVALID_REQUEST");
    let oversized = json!({"image": "A".repeat(33 << 20)});
    assert_failure(&analyze(oversized), 413, "PAYLOAD_TOO_LARGE");
    assert_failure(
        &post_json(
            port,
            "/v1/api/nsfw/filter",
            &json!({"image_url": own, "filter": "sepia"}),
        ),
        400,
        "INVALID_REQUEST",
    );

    // Uploads are gone once checked; checks are jobs of their own kind in /api/jobs.
    let uploads = std::fs::read_dir(dir.join("uploads")).unwrap().count();
    assert_eq!(uploads, 0);
    let jobs = get(port, "/api/jobs?limit=100").json();
    let checks = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == "nsfw_check")
        .count();
    assert_eq!(checks, 9, "{jobs}");

    // A generation with the filter (native field, and the chat option): each image checked,
    // stored black when flagged, marked in the gallery either way.
    let job = generated(
        port,
        &json!({"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 3,
                "nsfw_filter": true, "num_images": 2}),
    );
    assert_eq!(job["params"]["nsfw_filter"], true);
    for name in job["images"].as_array().unwrap() {
        let record = gallery_entry(port, name);
        let black = rgb(&get(port, &format!("/api/images/{}", name.as_str().unwrap())).body)
            .as_raw()
            .iter()
            .all(|&v| v == 0);
        assert_eq!(record["nsfw"].as_bool(), Some(black), "{record}");
    }
    let chat = gateway_data(chat(
        port,
        json!({"message": "a small boat", "options": {"nsfw_filter": true}}),
    ));
    let job = wait_finished(
        port,
        chat["prompt_id"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    assert_eq!(
        (
            job["status"].as_str(),
            job["params"]["nsfw_filter"].as_bool()
        ),
        (Some("completed"), Some(true))
    );
}

fn execute(port: u16, body: Value) -> Response {
    post_json(port, "/v1/api/workflows/execute", &body)
}

/// Workflow templates: the built-in ones and the templates directory's, listed with their
/// parameters' schemas; filled and queued as generate requests and as ComfyUI graphs (the
/// built-in graph gives ComfyUI's own image); every bad request in the gateway's shape.
#[test]
fn workflow_templates_fill_and_queue() {
    let dir = temp_dir("gateway-templates");
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("cat.toml"),
        "id = \"cat\"\nname = \"Cat\"\n[parameters.color]\ntype = \"string\"\n\
         [parameters.steps]\ntype = \"integer\"\ndefault = 2\nminimum = 1\nmaximum = 4\n\
         [generate]\nprompt = \"a {{color}} cat\"\nsteps = \"{{steps}}\"\nwidth = 64\nheight = 64\nseed = 7\n",
    )
    .unwrap();
    std::fs::write(
        templates.join("broken.toml"),
        "id = \"broken\"\n[generate]\n",
    )
    .unwrap();
    let server = catalogued_server(&dir);
    let port = server.port;

    let listed = gateway_data(get(port, "/v1/api/workflows/templates"));
    let ids: Vec<&str> = listed["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cat", "comfyui-txt2img", "landscape", "portrait"]);
    let cat = &listed["templates"][0];
    assert_eq!(
        (cat["kind"].as_str(), cat["builtin"].as_bool()),
        (Some("generate"), Some(false))
    );
    assert_eq!(cat["parameters"]["required"], json!(["color"]));
    assert_eq!(cat["parameters"]["properties"]["steps"]["default"], 2);
    assert_eq!(listed["templates"][1]["kind"], "comfyui");

    // A generate template: the placeholders filled, the job run as any generate request.
    let data = gateway_data(execute(
        port,
        json!({"template_id": "cat", "parameters": {"color": "black"}}),
    ));
    assert_eq!(data["queued"]["prompt"], "a black cat");
    assert_eq!(data["queued"]["steps"], 2);
    let job = wait_finished(
        port,
        data["prompt_id"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        (
            job["params"]["prompt"].as_str(),
            job["params"]["seed"].as_u64()
        ),
        (Some("a black cat"), Some(7))
    );

    // The built-in ComfyUI graph with the reference case's values: ComfyUI's image.
    let reference = common::comfyui::case_json("euler_normal_64x64")["workflow_api"].clone();
    let data = gateway_data(execute(
        port,
        json!({"template_id": "comfyui-txt2img", "parameters": {
            "checkpoint": "sd_xl_tiny.safetensors",
            "prompt": reference["6"]["inputs"]["text"], "negative": reference["7"]["inputs"]["text"],
            "width": 64, "height": 64, "seed": reference["3"]["inputs"]["seed"],
            "steps": reference["3"]["inputs"]["steps"], "cfg": reference["3"]["inputs"]["cfg"]}}),
    ));
    assert_eq!(data["kind"], "comfyui");
    assert_eq!(
        data["queued"]["3"]["inputs"]["steps"],
        reference["3"]["inputs"]["steps"]
    );
    let job = wait_finished(
        port,
        data["prompt_id"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    assert_eq!(job["status"], "completed", "{job}");
    let image = get(
        port,
        &format!("/api/images/{}", job["images"][0].as_str().unwrap()),
    );
    let ours = rgb(&image.body);
    let theirs = common::comfyui::comfyui_image("euler_normal_64x64", "image.png");
    assert!(common::max_pixel_diff(&ours, &theirs) <= 2);

    // Bad requests.
    assert_failure(
        &execute(port, json!({"template_id": "nope"})),
        404,
        "TEMPLATE_NOT_FOUND",
    );
    let missing = execute(
        port,
        json!({"template_id": "cat", "parameters": {"steps": 9, "size": 3}}),
    );
    assert_failure(&missing, 422, "INVALID_PARAMETERS");
    let named: Vec<Value> = missing.json()["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["parameter"].clone())
        .collect();
    assert_eq!(named, [json!("size"), json!("color"), json!("steps")]);
    assert_failure(&execute(port, json!({})), 400, "INVALID_REQUEST");
    assert_failure(
        &execute(port, json!({"template_id": "cat", "template": {}})),
        400,
        "INVALID_REQUEST",
    );
    assert_failure(
        &execute(port, json!({"template_id": 5})),
        400,
        "INVALID_REQUEST",
    );
    let posted = |body: Value| execute(port, json!({"template": body, "parameters": {"p": "x"}}));
    assert_failure(
        &posted(json!({"id": "t", "name": "T", "generate": {"prompt": "{{q}}"}})),
        422,
        "INVALID_TEMPLATE",
    );
    let declared = json!({"p": {"type": "string"}});
    assert_failure(
        &posted(
            json!({"id": "t", "name": "T", "parameters": declared, "generate": {"prompt": "{{p}}", "width": 13}}),
        ),
        422,
        "INVALID_PROMPT",
    );
    let mut graph = reference.clone();
    graph["6"]["inputs"]["text"] = json!("{{p}}");
    graph["4"]["inputs"]["ckpt_name"] = json!("nope.safetensors");
    let invalid =
        posted(json!({"id": "t", "name": "T", "parameters": declared, "workflow": graph}));
    assert_failure(&invalid, 422, "INVALID_WORKFLOW");
    assert!(
        invalid.json()["error"]["details"]["node_errors"]["4"].is_object(),
        "{}",
        invalid.text()
    );

    // The routes are in the OpenAPI document.
    let doc = get(port, "/openapi.json").json();
    for path in [
        "/v1/api/workflows/templates",
        "/v1/api/workflows/execute",
        "/v1/api/nsfw/analyze",
        "/v1/api/nsfw/filter",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} not documented");
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
