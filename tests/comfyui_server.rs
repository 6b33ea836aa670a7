//! The ComfyUI API of a real `hanga serve`, driven as ComfyUI's own
//! `script_examples/websockets_api_example.py` drives ComfyUI: WebSocket first, the prompt
//! POSTed as urllib sends it (form-urlencoded Content-Type, JSON body), wait for `executing`
//! with `node: null`, then `/history/{id}` and `/view`. Every recorded SDXL case gives
//! ComfyUI's PNG within 2/255; bad requests get ComfyUI's answers and the server keeps
//! serving.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::comfyui::{CASES, case_json, comfyui_image, recorded_images};
use common::fixtures;
use common::http::{Response, Server, get, request};
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

fn start(name: &str) -> Server {
    let dir = common::temp_dir(name);
    let loras = dir.join("loras");
    std::fs::create_dir_all(&loras).unwrap();
    std::fs::copy(
        fixtures().join("sdxl/lora/sdxl_lora_kohya_sdscripts-equivalent.safetensors"),
        loras.join("sdxl_lora_kohya_sdscripts-equivalent.safetensors"),
    )
    .unwrap();
    let flux = fixtures().join("flux");
    Server::start(
        &dir,
        &[
            "--loras",
            loras.to_str().unwrap(),
            "--manifests",
            flux.to_str().unwrap(),
        ],
    )
}

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(port: u16, client_id: &str) -> Socket {
    let (mut ws, _) =
        tungstenite::connect(format!("ws://127.0.0.1:{port}/ws?clientId={client_id}")).unwrap();
    if let MaybeTlsStream::Plain(stream) = ws.get_mut() {
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
    }
    ws
}

/// The JSON messages up to `executing {node: null}` of `prompt_id` (binary frames skipped).
fn until_done(ws: &mut Socket, prompt_id: &str) -> Vec<Value> {
    let started = Instant::now();
    let mut messages = Vec::new();
    loop {
        assert!(started.elapsed() < Duration::from_secs(120), "{messages:?}");
        match ws.read().unwrap() {
            Message::Text(text) => {
                let message: Value = serde_json::from_str(text.as_str()).unwrap();
                let done = message["type"] == "executing"
                    && message["data"]["node"].is_null()
                    && message["data"]["prompt_id"] == prompt_id;
                messages.push(message);
                if done {
                    return messages;
                }
            }
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// `urllib.request.Request(url, data=json)`: POST with urllib's default Content-Type.
fn queue_prompt(port: u16, body: &Value) -> Response {
    request(
        port,
        "POST",
        "/prompt",
        Some(body.to_string().as_bytes()),
        &[("Content-Type", "application/x-www-form-urlencoded")],
    )
}

fn upload(port: u16, name: &str, bytes: Vec<u8>, fields: &[(&str, &str)]) -> Response {
    let mut form = reqwest::blocking::multipart::Form::new().part(
        "image",
        reqwest::blocking::multipart::Part::bytes(bytes).file_name(name.to_owned()),
    );
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    let response = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/upload/image"))
        .multipart(form)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    Response {
        status,
        headers: Default::default(),
        body: response.bytes().unwrap().to_vec(),
    }
}

/// Posts `workflow` as prompt `prompt_id` of the recorded case `id`, waits for its end on
/// `ws`, and checks its history item and that every image `/view` serves is within 2/255 of
/// ComfyUI's. Returns the prompt's WebSocket messages.
fn run_case(
    port: u16,
    ws: &mut Socket,
    client_id: &str,
    prompt_id: &str,
    id: &str,
    workflow: &Value,
) -> Vec<Value> {
    let case = case_json(id);
    let answer = queue_prompt(
        port,
        &json!({"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}),
    );
    assert_eq!(answer.status, 200, "{id}: {}", answer.text());
    let answer = answer.json();
    assert_eq!(answer["prompt_id"], prompt_id);
    assert_eq!(answer["node_errors"], json!({}));
    assert!(answer["number"].is_i64());
    let messages = until_done(ws, prompt_id);
    let history = get(port, &format!("/history/{prompt_id}")).json();
    let item = &history[prompt_id];
    assert_eq!(item["status"]["status_str"], "success", "{id}: {item}");
    assert_eq!(item["status"]["completed"], true);
    assert_eq!(item["prompt"][1], prompt_id);
    assert_eq!(item["prompt"][2], *workflow);
    let images = item["outputs"]["9"]["images"].as_array().unwrap();
    let recorded = recorded_images(&case);
    assert_eq!(images.len(), recorded.len(), "{id}");
    for (image, file) in images.iter().zip(recorded) {
        let query = format!(
            "/view?filename={}&subfolder={}&type={}",
            image["filename"].as_str().unwrap(),
            image["subfolder"].as_str().unwrap(),
            image["type"].as_str().unwrap()
        );
        let view = get(port, &query);
        assert_eq!(view.status, 200, "{query}");
        assert_eq!(view.header("content-type"), Some("image/png"));
        let ours = image::load_from_memory(&view.body).unwrap().to_rgb8();
        let theirs = comfyui_image(id, &file);
        let worst = common::max_pixel_diff(&ours, &theirs);
        assert!(worst <= 2, "{id}: {query} differs by {worst}/255");
    }
    messages
}

#[test]
fn comfyuis_websocket_example_gets_comfyuis_images() {
    let server = start("comfyui-example");
    let port = server.comfyui_port;
    let client_id = "5b3f6c2e-0d0a-4c55-9d1e-2f5f6d3b8a11";
    let mut ws = connect(port, client_id);
    let hello: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(hello["type"], "status");
    assert_eq!(hello["data"]["sid"], client_id);
    assert_eq!(hello["data"]["status"]["exec_info"]["queue_remaining"], 0);

    let input =
        std::fs::read(fixtures().join("comfyui/img2img_dpmpp_2m_sgm-uniform_64x64_d0.6/input.png"))
            .unwrap();
    let uploaded = upload(port, "input.png", input.clone(), &[]).json();
    assert_eq!(
        uploaded,
        json!({"name": "input.png", "subfolder": "", "type": "input"})
    );
    // The same bytes again reuse the name; other bytes get "name (1).png".
    assert_eq!(
        upload(port, "input.png", input.clone(), &[]).json()["name"],
        "input.png"
    );
    let mut other = input.clone();
    other.extend_from_slice(b"trailing");
    assert_eq!(
        upload(port, "input.png", other, &[]).json()["name"],
        "input (1).png"
    );

    for (n, &id) in CASES.iter().enumerate() {
        let case = case_json(id);
        let prompt_id = format!("00000000-0000-4000-8000-{n:012}");
        let messages = run_case(
            port,
            &mut ws,
            client_id,
            &prompt_id,
            id,
            &case["workflow_api"],
        );
        let kinds: Vec<&str> = messages
            .iter()
            .map(|m| m["type"].as_str().unwrap())
            .collect();
        for expected in [
            "execution_start",
            "execution_cached",
            "executing",
            "progress",
            "progress_state",
            "executed",
            "execution_success",
        ] {
            assert!(
                kinds.contains(&expected),
                "{id}: no {expected} in {kinds:?}"
            );
        }
        let steps = case["settings"]["steps"].as_u64().unwrap() as usize;
        assert_eq!(kinds.iter().filter(|k| **k == "progress").count(), steps);
        // progress_state: the sampler running at its last step, then every node finished.
        let states: Vec<&Value> = messages
            .iter()
            .filter(|m| m["type"] == "progress_state")
            .map(|m| &m["data"]["nodes"])
            .collect();
        let last_step = states
            .iter()
            .rev()
            .find(|n| n["3"]["state"] == "running")
            .expect("the sampler's progress");
        assert_eq!(last_step["3"]["value"], json!(steps as f64));
        let last = states.last().unwrap().as_object().unwrap();
        assert!(last.values().all(|n| n["state"] == "finished"), "{last:?}");
        assert_eq!(last["9"]["prompt_id"], prompt_id);
        // The last two: the queue's status, then the end of the prompt.
        assert_eq!(kinds[kinds.len() - 2], "status");

        // One queue, one store: the prompt is a job of the native API too.
        let job = get(server.port, &format!("/api/jobs/{prompt_id}")).json();
        assert_eq!(job["kind"], "comfyui");
        assert_eq!(job["status"], "completed");
        // Its images are in the native gallery, with the graph's prompt, seed and model.
        let names = job["images"].as_array().unwrap();
        let recorded = recorded_images(&case);
        assert_eq!(names.len(), recorded.len(), "{id}: {job}");
        for (name, file) in names.iter().zip(&recorded) {
            let png = get(
                server.port,
                &format!("/api/images/{}", name.as_str().unwrap()),
            );
            assert_eq!(png.status, 200, "{id}: {name}");
            let ours = image::load_from_memory(&png.body).unwrap().to_rgb8();
            assert!(common::max_pixel_diff(&ours, &comfyui_image(id, file)) <= 2);
            let thumb = get(
                server.port,
                &format!("/api/thumbs/{}", name.as_str().unwrap()),
            );
            assert_eq!(thumb.status, 200);
        }
        let newest = &get(server.port, "/api/images?limit=1").json()["images"][0];
        assert_eq!(newest["job_id"], prompt_id);
        assert_eq!(newest["prompt"], case["settings"]["prompt"], "{id}");
        assert_eq!(newest["seed"], case["settings"]["seed"], "{id}");
        let model_files: Vec<&Value> = case["workflow_api"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|n| [&n["inputs"]["ckpt_name"], &n["inputs"]["unet_name"]])
            .filter(|v| v.is_string())
            .collect();
        assert_eq!(model_files, [&newest["model"]], "{id}");
    }
    // ComfyUI names files on after the ones already there.
    let first = get(port, "/history/00000000-0000-4000-8000-000000000000").json();
    assert_eq!(
        first["00000000-0000-4000-8000-000000000000"]["outputs"]["9"]["images"][0]["filename"],
        "ComfyUI_00001_.png"
    );
    let all = get(port, "/history").json();
    assert_eq!(all.as_object().unwrap().len(), CASES.len());
    let last_two = get(port, "/history?max_items=2").json();
    let ids: Vec<&String> = last_two.as_object().unwrap().keys().collect();
    let id = |n: usize| format!("00000000-0000-4000-8000-{n:012}");
    assert_eq!(ids, [&id(CASES.len() - 2), &id(CASES.len() - 1)]);
    // The newer jobs routes: every prompt, newest first, paged.
    let jobs = get(port, "/api/jobs").json();
    assert_eq!(jobs["pagination"]["total"], CASES.len());
    let listed: Vec<&Value> = jobs["jobs"].as_array().unwrap().iter().collect();
    assert_eq!(listed[0]["id"], id(CASES.len() - 1));
    assert!(listed.iter().all(|j| j["status"] == "completed"));
    assert!(
        listed
            .iter()
            .all(|j| j["outputs_count"].as_u64() >= Some(1))
    );
    assert_eq!(listed[0]["preview_output"]["nodeId"], "9");
    let times: Vec<i64> = listed
        .iter()
        .map(|j| j["create_time"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let page = get(port, "/api/jobs?limit=2&offset=1&sort_order=asc").json();
    assert_eq!(page["jobs"][0]["id"], id(1));
    assert_eq!(
        page["pagination"],
        json!({"offset": 1, "limit": 2,
        "total": CASES.len(), "has_more": true})
    );
    let one = get(port, &format!("/api/jobs/{}", id(0))).json();
    assert_eq!(
        one["workflow"]["prompt"],
        case_json(CASES[0])["workflow_api"]
    );
    assert_eq!(one["execution_status"]["status_str"], "success");
    assert!(one["execution_end_time"].as_i64() >= one["execution_start_time"].as_i64());
    assert_eq!(
        get(port, "/api/api/jobs?limit=1").json()["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for (query, message) in [
        (
            "status=bogus",
            "Invalid status value(s): bogus. Valid values: pending, in_progress, completed, failed, cancelled",
        ),
        ("limit=0", "limit must be a positive integer"),
        ("limit=x", "limit must be an integer"),
        (
            "sort_by=name",
            "sort_by must be 'created_at' or 'execution_duration'",
        ),
    ] {
        let r = get(port, &format!("/api/jobs?{query}"));
        assert_eq!(
            (r.status, r.json()),
            (400, json!({"error": message})),
            "{query}"
        );
    }
    let missing = get(port, "/api/jobs/no-such-job");
    assert_eq!(
        (missing.status, missing.json()),
        (404, json!({"error": "Job not found"}))
    );
    // Every route also answers under /api.
    assert_eq!(
        get(port, "/api/history?max_items=1")
            .json()
            .as_object()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn comfyui_routes_answer_as_comfyui_does_and_refuse_bad_input() {
    let server = start("comfyui-routes");
    let port = server.comfyui_port;
    let info = get(port, "/object_info").json();
    let ksampler = &info["KSampler"];
    assert_eq!(ksampler["input"]["required"]["steps"][1]["max"], 10000);
    let samplers = ksampler["input"]["required"]["sampler_name"][0]
        .as_array()
        .unwrap();
    assert!(samplers.contains(&json!("dpmpp_2m")));
    assert_eq!(
        info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0],
        json!(["sd_xl_tiny.safetensors"])
    );
    assert_eq!(
        info["LoraLoader"]["input"]["required"]["lora_name"][0],
        json!(["sdxl_lora_kohya_sdscripts-equivalent.safetensors"])
    );
    for (name, entry) in info.as_object().unwrap() {
        assert!(entry["display_name"].is_string(), "{name}");
        assert!(entry["description"].is_string(), "{name}");
    }
    assert_eq!(
        get(port, "/object_info/KSampler").json()["KSampler"],
        *ksampler
    );
    assert_eq!(get(port, "/api/object_info/NoSuchNode").json(), json!({}));
    let stats = get(port, "/system_stats").json();
    assert!(stats["system"]["ram_total"].as_u64().unwrap() > 0);
    assert_eq!(stats["devices"][0]["type"], "cpu");
    assert_eq!(
        get(port, "/models").json(),
        json!([
            "checkpoints",
            "diffusion_models",
            "text_encoders",
            "vae",
            "loras"
        ])
    );
    assert_eq!(
        get(port, "/models/diffusion_models").json(),
        json!([
            "chroma-tiny.safetensors",
            "flux1-dev-tiny-fp8-scaled.safetensors",
            "flux1-dev-tiny-fp8-widened.safetensors",
            "flux1-dev-tiny.safetensors",
            "flux1-schnell-tiny.safetensors"
        ])
    );
    assert_eq!(get(port, "/models/nope").status, 404);
    assert_eq!(get(port, "/embeddings").json(), json!([]));
    assert_eq!(get(port, "/extensions").json(), json!([]));
    assert_eq!(
        get(port, "/features").json()["max_upload_size"],
        json!(104857600.0)
    );
    assert_eq!(
        get(port, "/prompt").json(),
        json!({"exec_info": {"queue_remaining": 0}})
    );
    assert_eq!(
        get(port, "/queue").json(),
        json!({"queue_running": [], "queue_pending": []})
    );

    // Bodies whatever the Content-Type: none, text/plain, octet-stream.
    let base = case_json("euler_normal_64x64")["workflow_api"].clone();
    let bad = |body: &[u8], content_type: &str| {
        request(
            port,
            "POST",
            "/prompt",
            Some(body),
            &[("Content-Type", content_type)],
        )
    };
    let no_prompt = bad(br#"{"client_id": "x"}"#, "text/plain");
    assert_eq!(no_prompt.status, 400);
    assert_eq!(no_prompt.json()["error"]["type"], "no_prompt");
    assert_eq!(no_prompt.json()["node_errors"], json!({}));
    let not_json = bad(b"{prompt: nope", "application/octet-stream");
    assert_eq!(not_json.status, 400);
    assert!(not_json.json()["error"]["message"].is_string());
    let mut unknown = base.clone();
    unknown["3"]["class_type"] = json!("KSamplerTurbo");
    let refused = bad(
        json!({"prompt": unknown}).to_string().as_bytes(),
        "text/plain",
    )
    .json();
    assert_eq!(refused["error"]["type"], "invalid_prompt");
    let mut out_of_range = base.clone();
    out_of_range["3"]["inputs"]["cfg"] = json!(1000.5);
    out_of_range["8"]["inputs"]["vae"] = json!(["4", 1]);
    let refused = bad(
        json!({"prompt": out_of_range}).to_string().as_bytes(),
        "text/plain",
    );
    assert_eq!(refused.status, 400);
    let refused = refused.json();
    assert_eq!(refused["error"]["type"], "prompt_outputs_failed_validation");
    assert_eq!(
        refused["node_errors"]["3"]["errors"][0]["type"],
        "value_bigger_than_max"
    );
    assert_eq!(
        refused["node_errors"]["8"]["errors"][0]["type"],
        "return_type_mismatch"
    );
    assert_eq!(
        refused["node_errors"]["3"]["dependent_outputs"],
        json!(["9"])
    );
    let mut cycle = base.clone();
    cycle["12"] =
        json!({"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["4", 2]}});
    cycle["3"]["inputs"]["latent_image"] = json!(["12", 0]);
    assert_eq!(
        bad(
            json!({"prompt": cycle}).to_string().as_bytes(),
            "text/plain"
        )
        .status,
        400
    );

    // /view: traversal refused, unknown files missing.
    for (query, status) in [
        ("/view?filename=../../etc/passwd", 400),
        ("/view?filename=%2Fetc%2Fpasswd", 400),
        ("/view?filename=x.png&subfolder=../..", 403),
        ("/view?filename=x.png&type=secret", 400),
        ("/view?filename=nothing.png", 404),
        ("/view", 404),
    ] {
        assert_eq!(get(port, query).status, status, "{query}");
    }
    // /upload/image: no file, a name that climbs out, an escaping subfolder, 200 MB.
    let form = request(
        port,
        "POST",
        "/upload/image",
        Some(b"x"),
        &[("Content-Type", "text/plain")],
    );
    assert!(form.status >= 400 && form.status < 500, "{}", form.status);
    let climbing = upload(port, "../../evil.png", vec![1, 2, 3], &[]);
    assert_eq!(climbing.status, 200);
    assert_eq!(climbing.json()["name"], "evil.png");
    assert_eq!(
        upload(port, "a.png", vec![1], &[("subfolder", "../..")]).status,
        400
    );
    assert_eq!(
        upload(port, "a.png", vec![1], &[("type", "models")]).status,
        400
    );
    let huge = upload(port, "huge.png", vec![0u8; 200 << 20], &[]);
    assert_eq!(huge.status, 413);

    // Still serving, and nothing was queued by the refusals.
    assert_eq!(
        get(port, "/prompt").json()["exec_info"]["queue_remaining"],
        0
    );
    assert_eq!(get(server.port, "/health").status, 200);
}

/// comfy-api-simplified 1.6.0 from PyPI, in the virtualenv `make test-deps` makes.
#[test]
fn comfy_api_simplified_queue_and_wait_images() {
    let server = start("comfyui-simplified");
    let work = common::temp_dir("comfyui-simplified-client");
    let port = server.comfyui_port.to_string();
    let case = fixtures().join("comfyui/euler_normal_64x64");
    let stdout = common::run_client(
        "comfyui-clients",
        "comfyui_clients/comfy_api_simplified_check.py",
        &[port.as_ref(), case.as_os_str(), work.as_os_str()],
    );
    assert!(stdout.contains("within"), "{stdout}");
}

/// ComfyUI's `websockets_api_example_ws_images.py`: the images come as binary frames of the
/// SaveImageWebsocket node; with `--preview-method latent2rgb` each sampler step also sends a
/// JPEG preview frame.
#[test]
fn websocket_images_and_latent_previews_come_as_binary_frames() {
    let dir = common::temp_dir("comfyui-ws-images");
    let server = Server::start(&dir, &["--preview-method", "latent2rgb"]);
    let port = server.comfyui_port;
    let client_id = "ws-images-client";
    let mut ws = connect(port, client_id);
    let case = case_json("euler_normal_64x64");
    let mut prompt = case["workflow_api"].clone();
    prompt.as_object_mut().unwrap().remove("9");
    prompt["save_image_websocket_node"] =
        json!({"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}});
    let answer = queue_prompt(port, &json!({"prompt": prompt, "client_id": client_id}));
    assert_eq!(answer.status, 200, "{}", answer.text());
    let prompt_id = answer.json()["prompt_id"].as_str().unwrap().to_owned();

    let (mut current_node, mut images, mut previews) = (String::new(), Vec::new(), 0);
    loop {
        match ws.read().unwrap() {
            Message::Text(text) => {
                let message: Value = serde_json::from_str(text.as_str()).unwrap();
                if message["type"] == "executing" && message["data"]["prompt_id"] == prompt_id {
                    match message["data"]["node"].as_str() {
                        None => break,
                        Some(node) => current_node = node.to_owned(),
                    }
                }
            }
            Message::Binary(frame) => {
                assert_eq!(frame[..4], [0, 0, 0, 1], "PREVIEW_IMAGE event");
                if current_node == "save_image_websocket_node" {
                    assert_eq!(frame[4..8], [0, 0, 0, 2], "PNG");
                    images.push(frame[8..].to_vec());
                } else {
                    assert_eq!(current_node, "3", "previews come from the sampler");
                    assert_eq!(frame[4..8], [0, 0, 0, 1], "JPEG");
                    image::load_from_memory_with_format(&frame[8..], image::ImageFormat::Jpeg)
                        .unwrap();
                    previews += 1;
                }
            }
            _ => {}
        }
    }
    assert_eq!(previews, 4, "one preview per step");
    assert_eq!(images.len(), 1);
    let ours = image::load_from_memory(&images[0]).unwrap().to_rgb8();
    let theirs = comfyui_image("euler_normal_64x64", "image.png");
    assert!(common::max_pixel_diff(&ours, &theirs) <= 2);
    // Nothing was written: the node streams only.
    let history = get(port, &format!("/history/{prompt_id}")).json();
    assert_eq!(history[&prompt_id]["outputs"], json!({}));
}

/// A slow ComfyUI prompt: the demo model at 512×512 for 60 steps.
fn slow_prompt() -> Value {
    let mut prompt = case_json("euler_normal_64x64")["workflow_api"].clone();
    prompt["5"]["inputs"] = json!({"width": 512, "height": 512, "batch_size": 1});
    prompt["3"]["inputs"]["steps"] = json!(60);
    prompt
}

/// Queues a slow prompt for the socket's client and waits until it is sampling.
fn start_slow_prompt(port: u16, ws: &mut Socket, prompt_id: &str) {
    let answer = queue_prompt(
        port,
        &json!({"prompt": slow_prompt(), "prompt_id": prompt_id, "client_id": "canceller"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    loop {
        let Message::Text(text) = ws.read().unwrap() else {
            continue;
        };
        let message: Value = serde_json::from_str(text.as_str()).unwrap();
        if message["type"] == "progress" && message["data"]["prompt_id"] == prompt_id {
            return;
        }
    }
}

fn wait_history(port: u16, prompt_id: &str) -> Value {
    let started = Instant::now();
    loop {
        let history = get(port, &format!("/history/{prompt_id}")).json();
        if let Some(item) = history.get(prompt_id) {
            return item.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{prompt_id} did not finish"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One queue and one store: a prompt accepted before a crash runs after the restart, and a
/// running prompt stops when either API cancels it.
#[test]
fn prompts_survive_a_crash_and_either_api_cancels_them() {
    let dir = common::temp_dir("comfyui-restart");
    let server = Server::start(&dir, &[]);
    let port = server.comfyui_port;
    // Keep the runner busy, then queue a prompt behind it.
    let mut busy_prompt = slow_prompt();
    busy_prompt["5"]["inputs"] = json!({"width": 256, "height": 256, "batch_size": 1});
    let busy = queue_prompt(port, &json!({"prompt": busy_prompt, "prompt_id": "busy"}));
    assert_eq!(busy.status, 200, "{}", busy.text());
    let case = case_json("euler_normal_64x64");
    let queued = queue_prompt(
        port,
        &json!({"prompt": case["workflow_api"], "prompt_id": "after-crash", "client_id": "c1"}),
    );
    assert_eq!(queued.status, 200);
    let queue = get(port, "/queue").json();
    let pending: Vec<&Value> = queue["queue_pending"].as_array().unwrap().iter().collect();
    assert!(
        pending.iter().any(|item| item[1] == "after-crash"),
        "{queue}"
    );
    server.kill();

    let server = Server::start(&dir, &[]);
    let (port, native) = (server.comfyui_port, server.port);
    let item = wait_history(port, "after-crash");
    assert_eq!(item["status"]["status_str"], "success", "{item}");
    let image = &item["outputs"]["9"]["images"][0];
    let view = get(
        port,
        &format!(
            "/view?filename={}&type=output",
            image["filename"].as_str().unwrap()
        ),
    );
    let ours = image::load_from_memory(&view.body).unwrap().to_rgb8();
    let theirs = comfyui_image("euler_normal_64x64", "image.png");
    assert!(common::max_pixel_diff(&ours, &theirs) <= 2);

    // Cancelled from the native API while it runs.
    let mut ws = connect(port, "canceller");
    start_slow_prompt(port, &mut ws, "slow-1");
    assert_eq!(
        request(native, "DELETE", "/api/jobs/slow-1", None, &[]).status,
        200
    );
    let messages = until_done(&mut ws, "slow-1");
    let interrupted = messages
        .iter()
        .find(|m| m["type"] == "execution_interrupted")
        .expect("execution_interrupted");
    assert_eq!(interrupted["data"]["node_id"], "3");
    let item = wait_history(port, "slow-1");
    assert_eq!(item["status"]["status_str"], "error");
    assert_eq!(
        get(native, "/api/jobs/slow-1").json()["status"],
        "cancelled"
    );
    // ComfyUI's newer jobs route on its own port says the same.
    assert_eq!(get(port, "/api/jobs/slow-1").json()["status"], "cancelled");

    // Interrupted through ComfyUI's /interrupt, naming the prompt.
    start_slow_prompt(port, &mut ws, "slow-2");
    let other = request(
        port,
        "POST",
        "/interrupt",
        Some(br#"{"prompt_id": "not-running"}"#),
        &[],
    );
    assert_eq!(other.status, 200);
    assert_eq!(
        get(native, "/api/jobs/slow-2").json()["status"],
        "processing"
    );
    assert_eq!(
        request(
            port,
            "POST",
            "/interrupt",
            Some(br#"{"prompt_id": "slow-2"}"#),
            &[]
        )
        .status,
        200
    );
    let messages = until_done(&mut ws, "slow-2");
    assert!(
        messages
            .iter()
            .any(|m| m["type"] == "execution_interrupted")
    );
    assert_eq!(wait_history(port, "slow-2")["status"]["completed"], false);
}

/// A ComfyUI `models/` folder and nothing else: `--models-dir` lists its files (subfolder
/// paths included) in the loaders, runs ComfyUI's graphs on them to ComfyUI's images, and
/// makes them models of the native API that give the manifest models' images.
#[test]
fn a_comfyui_models_folder_needs_no_manifest() {
    let dir = common::temp_dir("comfyui-models-dir");
    let models = common::tiny_models_dir(&dir);
    let server = Server::start(&dir, &["--models-dir", models.to_str().unwrap()]);
    let port = server.comfyui_port;

    let info = get(port, "/object_info").json();
    let list = |class: &str, input: &str| -> Vec<String> {
        info[class]["input"]["required"][input][0]
            .as_array()
            .unwrap_or_else(|| panic!("{class}.{input}: {}", info[class]))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    // The demo manifest's checkpoint, then the folder's under its subfolder.
    assert_eq!(
        list("CheckpointLoaderSimple", "ckpt_name"),
        ["sd_xl_tiny.safetensors", "tiny/sd_xl_tiny.safetensors"]
    );
    assert_eq!(
        list("UNETLoader", "unet_name"),
        [
            "chroma-tiny.safetensors",
            "flux1-dev-tiny.safetensors",
            "z_image_turbo-tiny.safetensors"
        ]
    );
    assert_eq!(
        list("DualCLIPLoader", "clip_name1"),
        [
            "clip_l.safetensors",
            "qwen3-tiny.safetensors",
            "t5xxl-tiny.safetensors"
        ]
    );
    assert_eq!(list("VAELoader", "vae_name"), ["ae.safetensors"]);
    assert_eq!(
        list("LoraLoader", "lora_name"),
        ["styles/sdxl_lora_kohya_sdscripts-equivalent.safetensors"]
    );
    assert_eq!(
        get(port, "/embeddings").json(),
        json!(["styles/tiny_style"])
    );
    let folder = get(port, "/models/diffusion_models").json();
    assert_eq!(folder, json!(list("UNETLoader", "unet_name")));

    let client_id = "models-folder";
    let mut ws = connect(port, client_id);
    let checkpoint = "tiny/sd_xl_tiny.safetensors";
    for (n, id) in [
        "euler_normal_64x64",
        "lora_euler_normal_64x64_s0.8",
        "flux-dev_euler_simple_64x64",
        "chroma_euler_simple_64x64_cfg4",
    ]
    .into_iter()
    .enumerate()
    {
        let mut workflow = case_json(id)["workflow_api"].clone();
        for node in workflow.as_object_mut().unwrap().values_mut() {
            let inputs = node["inputs"].as_object_mut().unwrap();
            if inputs.contains_key("ckpt_name") {
                inputs.insert("ckpt_name".into(), json!(checkpoint));
            }
            if let Some(Value::String(name)) = inputs.get("lora_name").cloned() {
                inputs.insert("lora_name".into(), json!(format!("styles/{name}")));
            }
        }
        let prompt_id = format!("00000000-0000-4000-9000-{n:012}");
        run_case(port, &mut ws, client_id, &prompt_id, id, &workflow);
    }

    // The native API: each checkpoint, and each transformer with the folder's encoders and
    // VAE, is a model named by its file stem.
    let api = server.port;
    let models: Vec<Value> = get(api, "/api/info").json()["models"]
        .as_array()
        .unwrap()
        .clone();
    let family = |id: &str| {
        models
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["family"].as_str().unwrap().to_owned())
    };
    assert_eq!(family("sd_xl_tiny").as_deref(), Some("sdxl"));
    assert_eq!(family("flux1-dev-tiny").as_deref(), Some("flux-dev"));
    assert_eq!(family("chroma-tiny").as_deref(), Some("chroma"));
    assert_eq!(
        family("z_image_turbo-tiny").as_deref(),
        Some("z-image-turbo")
    );
    // The same weights give the same image through a manifest and through the folder.
    let pixels = |model: &str| {
        let body = json!({"model": model, "prompt": "a red fox", "width": 64, "height": 64,
                          "steps": 3, "seed": 11});
        let submitted = common::http::post_json(api, "/api/generate", &body);
        assert_eq!(submitted.status, 202, "{}", submitted.text());
        let job_id = submitted.json()["job_id"].as_str().unwrap().to_owned();
        let job = common::http::wait_finished(api, &job_id, Duration::from_secs(120));
        assert_eq!(job["status"], "completed", "{model}: {job}");
        let name = job["images"][0].as_str().unwrap().to_owned();
        let png = get(api, &format!("/api/images/{name}"));
        image::load_from_memory(&png.body).unwrap().to_rgb8()
    };
    assert_eq!(pixels("sd_xl_tiny"), pixels("sdxl-tiny-demo"));
    for model in ["flux1-dev-tiny", "chroma-tiny", "z_image_turbo-tiny"] {
        assert_eq!(pixels(model).dimensions(), (64, 64));
    }
    // A model is held by one API at a time: a ComfyUI prompt releases the native one.
    let loaded = |id: &str| {
        get(api, "/api/info").json()["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id && m["loaded"] == true)
    };
    assert!(loaded("z_image_turbo-tiny"));
    let workflow = case_json("euler_normal_64x64")["workflow_api"].clone();
    run_case(
        port,
        &mut ws,
        client_id,
        "after-native",
        "euler_normal_64x64",
        &workflow,
    );
    assert!(!loaded("z_image_turbo-tiny"));
}

/// `number` and `front` order the queue as in ComfyUI (smallest number first; the default
/// numbers count on in acceptance order, `front` negates them), and `/queue` lists the
/// waiting prompts in that order.
#[test]
fn number_and_front_order_prompts_as_comfyui_does() {
    let server = start("comfyui-order");
    let port = server.comfyui_port;
    let mut ws = connect(port, "canceller");
    start_slow_prompt(port, &mut ws, "blocker");
    let quick = case_json("euler_normal_64x64")["workflow_api"].clone();
    let mut numbers = Vec::new();
    for (id, extra) in [
        ("plain", json!({})),
        ("front", json!({"front": true})),
        ("numbered", json!({"number": "0.5"})),
        ("later", json!({})),
    ] {
        let mut body = json!({"prompt": quick, "prompt_id": id, "client_id": "canceller"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let answer = queue_prompt(port, &body);
        assert_eq!(answer.status, 200, "{}", answer.text());
        numbers.push(answer.json()["number"].clone());
    }
    // Defaults count on; front is negative; a client's number is echoed as a float.
    let plain = numbers[0].as_i64().unwrap();
    assert_eq!(numbers[1], json!(-(plain + 1)));
    assert_eq!(numbers[2], json!(0.5));
    assert_eq!(numbers[3], json!(plain + 3));
    let queue = get(port, "/queue").json();
    let pending: Vec<&Value> = queue["queue_pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| &item[1])
        .collect();
    assert_eq!(pending, ["front", "numbered", "plain", "later"]);
    assert_eq!(queue["queue_running"][0][1], "blocker");
    assert_eq!(request(port, "POST", "/interrupt", None, &[]).status, 200);
    let mut started = Vec::new();
    while started.len() < 4 {
        let Message::Text(text) = ws.read().unwrap() else {
            continue;
        };
        let message: Value = serde_json::from_str(text.as_str()).unwrap();
        if message["type"] == "execution_start" {
            started.push(message["data"]["prompt_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(started, ["front", "numbered", "plain", "later"]);
}
