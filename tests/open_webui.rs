//! Open WebUI's image engines replayed against a real `hanga serve`: the requests its
//! `backend/open_webui/routers/images.py` (0.12.4) sends for the `openai` and `automatic1111`
//! engines with their default settings, read back as it reads them.

mod common;

use base64::Engine;
use common::http::{Server, request};
use common::temp_dir;
use serde_json::{Value, json};

fn decode(b64: &str) -> image::RgbImage {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

fn send(port: u16, method: &str, path: &str, body: Option<&Value>, auth: &str) -> Value {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let response = request(
        port,
        method,
        path,
        bytes.as_deref(),
        &[("authorization", auth)],
    );
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json()
}

/// `image_generations` with `IMAGE_GENERATION_ENGINE = openai`: the model `dall-e-2` (its
/// default), `n`, `size` = `IMAGE_SIZE` (512x512), `response_format: b64_json`; each
/// `data[].b64_json` decoded. Then `image_edits` with the same engine.
#[test]
fn open_webui_openai_engine() {
    let dir = temp_dir("open-webui-openai");
    let server = Server::start(&dir, &["--default-model", "sdxl-tiny-demo"]);
    let body = json!({"model": "dall-e-2", "prompt": "a lighthouse at dusk", "n": 1,
                      "size": "512x512", "response_format": "b64_json"});
    let answer = send(
        server.port,
        "POST",
        "/v1/images/generations",
        Some(&body),
        "Bearer sk-none",
    );
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(
        decode(data[0]["b64_json"].as_str().unwrap()).dimensions(),
        (512, 512)
    );

    // `image_edits` (984-1063) with `IMAGE_EDIT_MODEL` dall-e-2 and `IMAGE_EDIT_SIZE` 512x512
    // entered: a multipart form of strings (`n` only when truthy, `response_format` because
    // the model is not gpt-image) and one image part named `image`, `<uuid>.png`; no mask.
    let png = std::fs::read(common::fixtures().join("sdxl/img2img/init_64x64.png")).unwrap();
    let image = reqwest::blocking::multipart::Part::bytes(png)
        .file_name("0b7c2f1e-5d4a-4c3b-9a8e-1f2d3c4b5a69.png")
        .mime_str("image/png")
        .unwrap();
    let form = reqwest::blocking::multipart::Form::new()
        .text("model", "dall-e-2")
        .text("prompt", "make it a watercolor")
        .text("n", "1")
        .text("size", "512x512")
        .text("response_format", "b64_json")
        .part("image", image);
    let response = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/images/edits", server.port))
        .header("authorization", "Bearer sk-none")
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().unwrap();
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(
        decode(data[0]["b64_json"].as_str().unwrap()).dimensions(),
        (512, 512),
        "resized to the size asked for"
    );
}

/// The `automatic1111` engine with an empty `AUTOMATIC1111_API_AUTH` (the header is then
/// `Basic ` with nothing after it): the connection check and model list, `set_image_model`
/// (GET options, POST the whole dict back with `sd_model_checkpoint` changed), then
/// `image_generations` (GET options for the model, POST txt2img with `batch_size`, `width`,
/// `height`, `steps` = `IMAGE_STEPS` 50), each `images[]` decoded and `info` kept.
#[test]
fn open_webui_automatic1111_engine() {
    let dir = temp_dir("open-webui-a1111");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let demo = std::fs::read_to_string(common::repo().join("model_manifests/sdxl-tiny-demo.toml"))
        .unwrap()
        .replace("id = \"sdxl-tiny-demo\"", "id = \"second-demo\"")
        .replace(
            "../assets",
            &common::repo().join("assets").display().to_string(),
        );
    std::fs::write(manifests.join("second.toml"), demo).unwrap();
    let server = Server::start(
        &dir,
        &[
            "--default-model",
            "sdxl-tiny-demo",
            "--manifests",
            manifests.to_str().unwrap(),
        ],
    );
    let (port, auth) = (server.port, "Basic ");

    // verify_connection, get_models.
    let options = send(port, "GET", "/sdapi/v1/options", None, auth);
    assert_eq!(options["sd_model_checkpoint"], "sdxl-tiny-demo");
    let models = send(port, "GET", "/sdapi/v1/sd-models", None, auth);
    let ids: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["title"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"sdxl-tiny-demo") && ids.contains(&"second-demo"),
        "{ids:?}"
    );

    // set_image_model("second-demo").
    let mut options = send(port, "GET", "/sdapi/v1/options", None, auth);
    options["sd_model_checkpoint"] = json!("second-demo");
    assert_eq!(
        send(port, "POST", "/sdapi/v1/options", Some(&options), auth),
        Value::Null
    );

    // image_generations.
    let model = send(port, "GET", "/sdapi/v1/options", None, auth)["sd_model_checkpoint"].clone();
    assert_eq!(model, "second-demo");
    let body = json!({"prompt": "a lighthouse at dusk", "batch_size": 1, "width": 512,
                      "height": 512, "steps": 50, "negative_prompt": "blurry"});
    let answer = send(port, "POST", "/sdapi/v1/txt2img", Some(&body), auth);
    let images = answer["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(decode(images[0].as_str().unwrap()).dimensions(), (512, 512));
    let info: Value = serde_json::from_str(answer["info"].as_str().unwrap()).unwrap();
    assert_eq!(
        (info["sd_model_name"].as_str(), info["steps"].as_u64()),
        (Some("second-demo"), Some(50))
    );
}
