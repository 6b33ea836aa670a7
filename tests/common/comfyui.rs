//! The recorded ComfyUI runs (tests/fixtures/comfyui, from ../shared/reference/comfyui).

use std::path::Path;

use serde_json::Value;

use super::fixtures;

/// Every recorded case: the ten SDXL runs, then the six Flux-family runs.
pub const CASES: &[&str] = &[
    "euler_normal_64x64",
    "euler_ancestral_karras_64x64_batch2",
    "dpmpp_2m_karras_96x64",
    "heun_normal_64x64_long-weighted",
    "ddim_ddim-uniform_64x64_cfg1",
    "img2img_dpmpp_2m_sgm-uniform_64x64_d0.6",
    "lora_euler_normal_64x64_s0.8",
    "uni_pc_simple_80x64",
    "dpmpp_2m_sde_karras_64x64_neg-empty",
    "dpmpp_sde_exponential_64x64",
    "flux-dev_euler_simple_64x64",
    "flux-dev_euler_simple_96x64_msflux",
    "flux-schnell_euler_simple_64x64",
    "flux-schnell_euler_simple_96x64_guidance-ignored",
    "chroma_euler_simple_64x64_cfg4",
    "chroma_euler_simple_96x64_neg-empty",
];

pub fn sdxl_cases() -> &'static [&'static str] {
    &CASES[..10]
}

pub fn flux_cases() -> &'static [&'static str] {
    &CASES[10..]
}

pub fn case_dir(id: &str) -> std::path::PathBuf {
    fixtures().join("comfyui").join(id)
}

/// A case's `case.json` (Python's json writes NaN for the Flux cases' unused `multiplier`).
pub fn case_json(id: &str) -> Value {
    let path = case_dir(id).join("case.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace(": NaN", ": null");
    serde_json::from_str(&text).unwrap()
}

/// The PNGs ComfyUI's SaveImage wrote for a case (the Flux cases record one `file`).
pub fn recorded_images(case: &Value) -> Vec<String> {
    match case["saveimage"]["files"].as_array() {
        Some(files) => files
            .iter()
            .map(|f| f["fixture_file"].as_str().unwrap().to_owned())
            .collect(),
        None => vec!["image.png".to_owned()],
    }
}

/// One of ComfyUI's PNGs of a case.
pub fn comfyui_image(id: &str, file: &str) -> image::RgbImage {
    open_rgb(&case_dir(id).join(file))
}

pub fn open_rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}
