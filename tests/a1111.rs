//! AUTOMATIC1111's API against a real `hanga serve` on the demo model: webuiapi from PyPI (in
//! the virtualenv `make test-deps` makes) for the models, options, samplers, txt2img, a LoRA
//! named in the prompt, whose image must be the native API's for the same LoRA, seed and
//! settings, and img2img, whose image must be diffusers' for the same image and strength.

mod common;

use common::http::{Server, generated, get, post_json};
use common::{install_kohya_lora, max_pixel_diff, temp_dir};
use serde_json::json;

#[test]
fn webuiapi_drives_txt2img_and_a_lora_gives_the_native_image() {
    let dir = temp_dir("a1111-webuiapi");
    install_kohya_lora(&dir.join("loras"));
    let server = Server::start(&dir, &["--default-model", "sdxl-tiny-demo"]);
    let port = server.port;
    let saved = dir.join("a1111_lora.png");
    let img2img = dir.join("a1111_img2img.png");
    let init = common::fixtures().join("sdxl/img2img/init_64x64.png");
    let port_arg = port.to_string();
    let stdout = common::run_client(
        "api-clients",
        "api_clients/webuiapi_check.py",
        &[
            port_arg.as_ref(),
            "kohya_style".as_ref(),
            saved.as_os_str(),
            init.as_os_str(),
            img2img.as_os_str(),
        ],
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");

    // img2img gives diffusers' image for the same image, strength, seed and settings.
    let (_, expected) = common::img2img_case("img2img_euler_64x64_s0.6_neg");
    let diff = max_pixel_diff(&image::open(&img2img).unwrap().to_rgb8(), &expected);
    assert!(
        diff <= 2,
        "A1111 img2img is {diff}/255 from diffusers' image"
    );

    // The same LoRA, seed and settings through the native API: the same image.
    let job = generated(
        port,
        &json!({"prompt": "a cat", "loras": [{"id": "kohya_style", "weight": 0.8}], "seed": 7,
                "steps": 4, "guidance_scale": 5.0, "width": 64, "height": 64,
                "sampler": "euler", "scheduler": "normal"}),
    );
    let native = get(
        port,
        &format!("/api/images/{}", job["images"][0].as_str().unwrap()),
    );
    let native = image::load_from_memory(&native.body).unwrap().to_rgb8();
    let a1111 = image::open(&saved).unwrap().to_rgb8();
    assert_eq!(max_pixel_diff(&native, &a1111), 0);

    // The A1111 jobs are jobs like any other; interrupt and skip answer as A1111 does.
    let jobs = get(port, "/api/jobs?limit=50").json();
    let lora_jobs = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["params"]["loras"][0]["id"] == "kohya_style")
        .count();
    assert_eq!(lora_jobs, 2, "{jobs}");
    assert_eq!(
        post_json(port, "/sdapi/v1/interrupt", &json!(null)).json(),
        json!({})
    );
    assert_eq!(
        post_json(port, "/sdapi/v1/skip", &json!(null)).json(),
        json!(null)
    );
    let progress = get(port, "/sdapi/v1/progress").json();
    assert_eq!(
        (
            progress["progress"].as_f64(),
            progress["state"]["job_count"].as_u64()
        ),
        (Some(0.0), Some(0))
    );
}
