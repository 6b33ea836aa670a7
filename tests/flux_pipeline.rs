//! FLUX.1 dev, FLUX.1 schnell and Chroma end to end against diffusers' FluxPipeline and
//! ChromaPipeline on tiny checkpoints, from the BFL / ComfyUI files and from the diffusers
//! folders (fixtures: ../shared/reference/pipelines/{flux-dev,flux-schnell,chroma}).
//! Tolerances (issue #5): noise ≤ 1e-6, each step's latents ≤ 1e-3, image ≤ 2/255.

mod common;

use common::{B, Recorded, assert_close, fixtures, load, max_abs_diff, max_pixel_diff, values};
use hanga::pipelines::{Flow, FluxPipeline, GenerationParams};
use hanga::registry::Manifest;
use hanga::sampling::{SamplerKind, ScheduleKind};
use hanga::text::LongPrompt;

struct Case {
    params: GenerationParams,
    tensors: std::collections::HashMap<String, Recorded>,
    png: image::RgbImage,
}

fn case(family: &str, id: &str) -> Case {
    let dir = fixtures().join("flux").join(family).join("cases").join(id);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let params = GenerationParams {
        prompt: json["prompt"].as_str().unwrap().into(),
        negative_prompt: json["negative_prompt"].as_str().map(Into::into),
        width: json["width"].as_u64().unwrap() as usize,
        height: json["height"].as_u64().unwrap() as usize,
        steps: json["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: json["guidance_scale"].as_f64().unwrap() as f32,
        sampler: SamplerKind::Euler,
        scheduler: ScheduleKind::Normal,
        seed: json["seed"].as_u64().unwrap(),
        long_prompt: LongPrompt::Truncate,
    };
    Case {
        params,
        tensors: load(&dir.join("case.safetensors")),
        png: image::open(dir.join("image.png")).unwrap().to_rgb8(),
    }
}

fn run_family(family: &str, cases: &[&str]) {
    for manifest in [format!("{family}.toml"), format!("{family}-diffusers.toml")] {
        let manifest = Manifest::from_file(&fixtures().join("flux").join(&manifest)).unwrap();
        let pipeline = FluxPipeline::<B>::load(&manifest, &Default::default()).unwrap();
        for id in cases {
            let label = format!("{}/{id}", manifest.id);
            let case = case(family, id);
            let (t, p) = (&case.tensors, &case.params);

            let noise = values(pipeline.initial_latents(p));
            let noise_err = max_abs_diff(&noise, &t["noise"].f32());
            assert!(noise_err <= 1e-6, "{label}: noise error {noise_err:e}");
            assert_close(
                &format!("{label} sigmas"),
                &pipeline.sigmas(p).unwrap(),
                &t["sigmas"].f32(),
                1e-6,
            );

            let mut worst_step = 0.0f32;
            let image = pipeline
                .generate(p, &mut |progress| {
                    let key = format!("latents.step{}", progress.step - 1);
                    let err = max_abs_diff(&values(progress.latents.clone()), &t[&key].f32());
                    assert!(err <= 1e-3, "{label} {key}: {err:e}");
                    worst_step = worst_step.max(err);
                    Flow::Continue
                })
                .unwrap();
            let pixels = max_pixel_diff(&image, &case.png);
            assert!(pixels <= 2, "{label}: image differs by {pixels}/255");
            println!("{label}: noise {noise_err:e}, worst step {worst_step:e}, image {pixels}/255");
        }
    }
}

#[test]
fn flux_dev_matches_diffusers() {
    run_family(
        "flux-dev",
        &[
            "flux-dev_64x128_long-prompt",
            "flux-dev_64x64",
            "flux-dev_96x64",
        ],
    );
}

#[test]
fn flux_schnell_matches_diffusers() {
    run_family(
        "flux-schnell",
        &["flux-schnell_64x64", "flux-schnell_64x96_guidance-ignored"],
    );
}

#[test]
fn chroma_matches_diffusers() {
    run_family(
        "chroma",
        &[
            "chroma_64x64_neg",
            "chroma_64x64_no-cfg",
            "chroma_96x64_neg-none",
        ],
    );
}
