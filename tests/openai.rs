//! OpenAI's images API against a real `hanga serve` on the demo model: the official `openai`
//! SDK from PyPI (in the virtualenv `make test-deps` makes) with strict response validation
//! (generations and edits), and the same jobs seen through the native API; auth refusals in OpenAI's error shape.

mod common;

use std::time::Duration;

use common::http::{Server, get, post_json, request};
use common::temp_dir;
use serde_json::json;

#[test]
fn the_openai_sdk_generates_and_lists_models() {
    let dir = temp_dir("openai-sdk");
    let server = Server::start(&dir, &["--default-model", "sdxl-tiny-demo"]);
    let port_arg = server.port.to_string();
    let init = common::fixtures().join("sdxl/img2img/init_64x64.png");
    let stdout = common::run_client(
        "api-clients",
        "api_clients/openai_check.py",
        &[port_arg.as_ref(), init.as_os_str()],
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");

    // The SDK's images are jobs like any other: in /api/jobs and the gallery.
    let jobs = get(server.port, "/api/jobs?limit=50").json();
    let done: Vec<_> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["status"] == "completed")
        .collect();
    assert_eq!(done.len(), 7, "{jobs}");
    // The edits are img2img jobs: input_fidelity's default strength, then the client's.
    let mut strengths: Vec<f64> = done
        .iter()
        .filter_map(|j| j["params"]["strength"].as_f64())
        .collect();
    strengths.sort_by(f64::total_cmp);
    assert_eq!(strengths, [0.6, 0.75, 1.0], "{jobs}");
    let edit = done
        .iter()
        .find(|j| j["params"]["prompt"] == "a cat on a sofa")
        .expect("the n=2 edit");
    assert_eq!(edit["total_steps"], 30, "int(20 × 0.75) steps per image");
    let fox = done
        .iter()
        .find(|j| j["params"]["prompt"] == "a red fox in the snow")
        .expect("the n=2 job");
    assert_eq!(fox["params"]["num_images"], 2);
    // quality "low": half the demo model's 20 steps.
    assert_eq!(fox["params"]["steps"], 10);
    let gallery = get(server.port, "/api/images?limit=50").json();
    assert_eq!(gallery["images"].as_array().unwrap().len(), 9);
}

#[test]
fn refusals_come_in_openais_error_shape() {
    let dir = temp_dir("openai-errors");
    let server = Server::start(&dir, &["--default-model", "sdxl-tiny-demo"]);
    let port = server.port;
    let error = |response: common::http::Response, status: u16| {
        assert_eq!(response.status, status, "{}", response.text());
        let body = response.json();
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(
            error["type"].is_string() && error.get("param").is_some(),
            "{body}"
        );
        error.clone()
    };
    let missing = error(post_json(port, "/v1/images/generations", &json!({})), 400);
    assert_eq!(missing["type"], "invalid_request_error");
    let not_json = request(port, "POST", "/v1/images/generations", Some(b"{"), &[]);
    error(not_json, 400);
    // Edits take a multipart form: JSON, or a form without its image, is refused.
    let edit_as_json = post_json(port, "/v1/images/edits", &json!({"prompt": "x"}));
    assert_eq!(error(edit_as_json, 400)["type"], "invalid_request_error");
    let boundary = "hangaboundary";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let no_image = request(
        port,
        "POST",
        "/v1/images/edits",
        Some(form.as_bytes()),
        &[("Content-Type", &content_type)],
    );
    assert_eq!(error(no_image, 400)["param"], "image");
    let big = json!({"prompt": "a".repeat(2 << 20)});
    assert_eq!(
        error(post_json(port, "/v1/images/generations", &big), 413)["code"],
        "payload_too_large"
    );

    // With a key configured: 401 in OpenAI's shape, and the key then works.
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_hanga"))
        .args(["keys", "create", "--name", "sdk", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(made.status.success());
    let key = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    std::thread::sleep(Duration::from_millis(600));
    let refused = error(get(port, "/v1/models"), 401);
    assert_eq!(refused["code"], "invalid_api_key");
    let bearer = format!("Bearer {key}");
    let listed = request(
        port,
        "GET",
        "/v1/models",
        None,
        &[("Authorization", &bearer)],
    );
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["object"], "list");
}
