//! FLUX.1 dev, FLUX.1 schnell and Chroma end to end against diffusers' FluxPipeline and
//! ChromaPipeline on tiny checkpoints, from the BFL / ComfyUI files and from the diffusers
//! folders (fixtures: ../shared/reference/pipelines/{flux-dev,flux-schnell,chroma}).
//! Tolerances (issue #5): noise ≤ 1e-6, each step's latents ≤ 1e-3, image ≤ 2/255.

mod common;

use common::{B, PipelineCase, assert_close, fixtures, max_abs_diff, values};
use hanga::pipelines::FluxPipeline;
use hanga::registry::Manifest;
use hanga::sampling::{SamplerKind, ScheduleKind};

fn run_family(family: &str, cases: &[&str]) {
    for manifest in [format!("{family}.toml"), format!("{family}-diffusers.toml")] {
        let manifest = Manifest::from_file(&fixtures().join("flux").join(&manifest)).unwrap();
        let pipeline = FluxPipeline::<B>::load(&manifest, &Default::default()).unwrap();
        for id in cases {
            let label = format!("{}/{id}", manifest.id);
            let dir = fixtures().join("flux").join(family).join("cases").join(id);
            let case = PipelineCase::load(&dir, SamplerKind::Euler, ScheduleKind::Normal);
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

            let (worst_step, pixels) =
                case.check_run(&label, |on_step| pipeline.generate(p, on_step).unwrap());
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

/// ComfyUI's all-in-one files: every part in one checkpoint, under `model.diffusion_model.`,
/// `vae.`, `text_encoders.clip_l.transformer.` and `text_encoders.t5xxl.transformer.`.
#[test]
fn all_in_one_checkpoint_matches_diffusers() {
    let dir = fixtures().join("flux");
    let parts = [
        ("flux1-dev-tiny.safetensors", "model.diffusion_model."),
        ("common/ae.safetensors", "vae."),
        (
            "common/clip_l.safetensors",
            "text_encoders.clip_l.transformer.",
        ),
        (
            "common/t5xxl-tiny.safetensors",
            "text_encoders.t5xxl.transformer.",
        ),
    ];
    let bytes: Vec<Vec<u8>> = parts
        .iter()
        .map(|(file, _)| std::fs::read(dir.join(file)).unwrap())
        .collect();
    let mut tensors = Vec::new();
    for ((_, prefix), bytes) in parts.iter().zip(&bytes) {
        let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
        for (name, view) in file.tensors() {
            tensors.push((format!("{prefix}{name}"), view));
        }
    }
    let out = std::env::temp_dir().join(format!("hanga-flux-aio-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let checkpoint = out.join("flux1-dev-all-in-one.safetensors");
    safetensors::serialize_to_file(tensors, None, &checkpoint).unwrap();
    let manifest = std::fs::read_to_string(dir.join("flux-dev.toml"))
        .unwrap()
        .lines()
        .filter(|l| {
            !["transformer", "vae ", "t5 ", "clip_l "]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.replace("\"common/", &format!("\"{}/common/", dir.display())))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "[files]",
            &format!("[files]\ncheckpoint = \"{}\"", checkpoint.display()),
        );
    std::fs::write(out.join("aio.toml"), manifest).unwrap();
    let manifest = Manifest::from_file(&out.join("aio.toml")).unwrap();
    let pipeline = FluxPipeline::<B>::load(&manifest, &Default::default());
    std::fs::remove_dir_all(&out).unwrap();
    let pipeline = pipeline.unwrap();
    let case_dir = dir.join("flux-dev/cases/flux-dev_64x64");
    let case = PipelineCase::load(&case_dir, SamplerKind::Euler, ScheduleKind::Normal);
    let (worst, pixels) = case.check_run("all-in-one", |on_step| {
        pipeline.generate(&case.params, on_step).unwrap()
    });
    println!("all-in-one: worst step {worst:e}, image {pixels}/255");
}
