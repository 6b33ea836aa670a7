//! SDXL end to end against diffusers' StableDiffusionXLPipeline on the tiny checkpoint, from the
//! single-file layout and from the diffusers folder (fixtures: ../shared/reference/pipelines/sdxl).
//! Tolerances (issue #2): initial noise ≤ 1e-6, each step's latents ≤ 1e-3, image ≤ 2/255.

use std::process::Command;

use crate::common::{
    B, PipelineCase, assert_close, fixtures, max_abs_diff, max_pixel_diff, repo, values,
};
use hanga::pipelines::{Flow, SdxlPipeline};
use hanga::registry::Manifest;
use hanga::sampling::{SamplerKind, ScheduleKind, TorchGenerator};
use hanga::text::LongPrompt;

const CASES: [&str; 5] = [
    "sdxl_dpmpp2m-karras_64x128_neg-empty-string",
    "sdxl_euler-a_64x64_neg",
    "sdxl_euler_64x64_neg-none",
    "sdxl_euler_64x64_no-cfg_long-prompt",
    "sdxl_euler_96x64_neg",
];

fn case(id: &str) -> PipelineCase {
    load_case(&fixtures().join("sdxl/cases").join(id))
}

/// A recorded SDXL case (txt2img or img2img), with diffusers' scheduler names as ours.
pub fn load_case(dir: &std::path::Path) -> PipelineCase {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("case.json"))
            .unwrap()
            .replace("-Infinity", "null"),
    )
    .unwrap();
    let (sampler, scheduler) = match json["scheduler_name"].as_str().unwrap() {
        "euler" => (SamplerKind::Euler, ScheduleKind::Normal),
        "euler_a" => (SamplerKind::EulerAncestral, ScheduleKind::Normal),
        "dpmpp_2m_karras" => (SamplerKind::DpmPp2m, ScheduleKind::Karras),
        other => panic!("unexpected scheduler {other}"),
    };
    PipelineCase::load(dir, sampler, scheduler)
}

pub fn single_file_manifest() -> Manifest {
    Manifest::from_file(&repo().join("model_manifests/sdxl-tiny-demo.toml")).unwrap()
}

fn diffusers_manifest() -> Manifest {
    Manifest::from_file(&fixtures().join("sdxl/diffusers.toml")).unwrap()
}

fn run_case(pipeline: &SdxlPipeline<B>, layout: &str, id: &str) {
    let case = case(id);
    let t = &case.tensors;
    let p = &case.params;

    // Text encoding (diagnostic tolerance 1e-4).
    let (cond, pooled) = pipeline.encode_prompt(&p.prompt, p.long_prompt).unwrap();
    assert_close(
        &format!("{layout}/{id} prompt_embeds"),
        &values(cond),
        &t["text.prompt_embeds"].f32(),
        1e-4,
    );
    assert_close(
        &format!("{layout}/{id} pooled"),
        &values(pooled),
        &t["text.pooled_prompt_embeds"].f32(),
        1e-4,
    );

    // Initial noise and latents.
    let mut rng = TorchGenerator::new(p.seed);
    let (init, schedule) = pipeline.initial_latents(p, &mut rng).unwrap();
    let noise = values(init.clone().div_scalar(schedule.init_noise_sigma));
    let noise_err = max_abs_diff(&noise, &t["noise"].f32());
    assert!(
        noise_err <= 1e-6,
        "{layout}/{id}: noise error {noise_err:e}"
    );
    assert_close(
        &format!("{layout}/{id} timesteps"),
        &schedule.timesteps,
        &t["timesteps"].f32(),
        1e-4,
    );
    assert_close(
        &format!("{layout}/{id} sigmas"),
        &schedule.sigmas,
        &t["sigmas"].f32(),
        1e-4,
    );

    // Every step's latents, then the image.
    let (worst_step, pixel) = case.check_run(&format!("{layout}/{id}"), |on_step| {
        pipeline.generate(p, on_step).unwrap()
    });
    println!("{layout}/{id}: noise {noise_err:e}, latents {worst_step:e}, image {pixel}/255");
}

#[test]
fn single_file_checkpoint_matches_diffusers() {
    let pipeline = SdxlPipeline::<B>::load(&single_file_manifest(), &Default::default()).unwrap();
    for id in CASES {
        run_case(&pipeline, "single-file", id);
    }
}

#[test]
fn diffusers_folder_matches_diffusers() {
    let pipeline = SdxlPipeline::<B>::load(&diffusers_manifest(), &Default::default()).unwrap();
    for id in CASES {
        run_case(&pipeline, "diffusers", id);
    }
}

#[test]
fn vae_decode_matches_diffusers() {
    let pipeline = SdxlPipeline::<B>::load(&single_file_manifest(), &Default::default()).unwrap();
    let t = case(CASES[2]).tensors;
    let decoded = pipeline.decode(t["latents.final"].tensor());
    assert_close("vae.output", &values(decoded), &t["vae.output"].f32(), 1e-4);
}

#[test]
fn cli_generate_writes_the_reference_image() {
    let out_dir = std::env::temp_dir().join(format!("hanga-cli-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    for id in CASES {
        let case = case(id);
        let p = &case.params;
        let out = out_dir.join(format!("{id}.png"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hanga"));
        cmd.current_dir(repo()).args([
            "generate",
            "--model",
            "sdxl-tiny-demo",
            "--prompt",
            &p.prompt,
        ]);
        if let Some(n) = &p.negative_prompt {
            cmd.args(["--negative-prompt", n]);
        }
        cmd.args([
            "--width",
            &p.width.to_string(),
            "--height",
            &p.height.to_string(),
        ])
        .args([
            "--steps",
            &p.steps.to_string(),
            "--guidance-scale",
            &p.guidance_scale.to_string(),
        ])
        .args([
            "--sampler",
            p.sampler.name(),
            "--scheduler",
            p.scheduler.name(),
        ])
        .args([
            "--seed",
            &p.seed.to_string(),
            "--long-prompt",
            "truncate",
            "--device",
            "cpu",
        ])
        .arg("-o")
        .arg(&out);
        let status = cmd.output().unwrap();
        assert!(
            status.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let bytes = std::fs::read(&out).unwrap();
        let image = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let pixel = max_pixel_diff(&image, &case.png);
        assert!(pixel <= 2, "{id}: CLI image differs by {pixel}/255");
        let parameters = hanga::output::png::read_parameters(&bytes).expect("parameters chunk");
        assert!(parameters.starts_with(&p.prompt), "{parameters}");
        assert!(
            parameters.contains(&format!("Seed: {}", p.seed)),
            "{parameters}"
        );
        assert!(
            parameters.contains(&format!("Size: {}x{}", p.width, p.height)),
            "{parameters}"
        );
    }
    std::fs::remove_dir_all(&out_dir).ok();
}

#[test]
fn wrong_checkpoint_gets_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("hanga-wrong-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vae = fixtures().join("components/sdxl_vae/diffusion_pytorch_model.safetensors");
    let manifest_path = dir.join("wrong.toml");
    std::fs::write(
        &manifest_path,
        format!(
            "id = \"wrong\"\nname = \"w\"\nfamily = \"sdxl\"\n[files]\ncheckpoint = {:?}\n",
            vae.display().to_string()
        ),
    )
    .unwrap();
    let manifest = Manifest::from_file(&manifest_path).unwrap();
    let err = SdxlPipeline::<B>::load(&manifest, &Default::default())
        .err()
        .expect("a VAE is not an SDXL checkpoint");
    let message = err.to_string();
    assert!(
        message.contains("not an SDXL checkpoint") && message.contains("a VAE"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn long_prompts_chunk_and_emphasis_rescales() {
    let pipeline = SdxlPipeline::<B>::load(&single_file_manifest(), &Default::default()).unwrap();
    let case = case("sdxl_euler_64x64_no-cfg_long-prompt");
    let prompt = &case.params.prompt;
    let (truncated, pooled_t) = pipeline
        .encode_prompt(prompt, LongPrompt::Truncate)
        .unwrap();
    let (chunked, pooled_c) = pipeline.encode_prompt(prompt, LongPrompt::Chunk).unwrap();
    assert_eq!(truncated.dims(), [1, 77, 96]);
    let [_, tokens, width] = chunked.dims();
    assert!(
        tokens > 77 && tokens % 77 == 0 && width == 96,
        "whole 77-token chunks: {tokens}"
    );
    assert_eq!(
        pooled_t.dims(),
        pooled_c.dims(),
        "one pooled vector, the first chunk's"
    );
    let mut chunked_params = case.params.clone();
    chunked_params.long_prompt = LongPrompt::Chunk;
    let image = pipeline
        .generate(&chunked_params, &mut |_| Flow::Continue)
        .unwrap();
    assert_ne!(image, case.png, "the second chunk conditions the image");

    // Emphasis scales the token's states and keeps each chunk's mean (A1111 "Original").
    let (plain, _) = pipeline
        .encode_prompt("a red sofa", LongPrompt::Chunk)
        .unwrap();
    let (weighted, _) = pipeline
        .encode_prompt("a (red:1.3) sofa", LongPrompt::Chunk)
        .unwrap();
    let (plain, weighted) = (values(plain), values(weighted));
    assert!(max_abs_diff(&plain, &weighted) > 1e-3);
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    // Means per encoder (L: first 32 channels, G: the other 64) are restored separately.
    for (lo, hi) in [(0, 32), (32, 96)] {
        let part = |v: &[f32]| {
            v.chunks(96)
                .flat_map(|row| row[lo..hi].to_vec())
                .collect::<Vec<f32>>()
        };
        assert!((mean(&part(&plain)) - mean(&part(&weighted))).abs() < 1e-5);
    }
}

#[test]
fn cancelling_stops_between_steps() {
    let pipeline = SdxlPipeline::<B>::load(&single_file_manifest(), &Default::default()).unwrap();
    let mut seen = 0;
    let result = pipeline.generate(&case(CASES[2]).params, &mut |p| {
        seen = p.step;
        if p.step == 2 {
            Flow::Cancel
        } else {
            Flow::Continue
        }
    });
    assert!(matches!(result, Err(hanga::Error::Cancelled)));
    assert_eq!(seen, 2);
}
