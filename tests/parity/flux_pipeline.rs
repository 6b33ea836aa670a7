//! FLUX.1 dev, FLUX.1 schnell and Chroma end to end against diffusers' FluxPipeline and
//! ChromaPipeline on tiny checkpoints, from the BFL / ComfyUI files and from the diffusers
//! folders (fixtures: ../shared/reference/pipelines/{flux-dev,flux-schnell,chroma}).
//! Tolerances (issue #5): noise ≤ 1e-6, each step's latents ≤ 1e-3, image ≤ 2/255.

use crate::common::{B, PipelineCase, assert_close, fixtures, max_abs_diff, values};
use hanga::pipelines::{Flow, FluxPipeline, GenerationParams};
use hanga::registry::{Family, Manifest, Registry};
use hanga::sampling::{SamplerKind, ScheduleKind};
use image::RgbImage;

fn run_family(family: &str, cases: &[&str]) {
    for manifest in [format!("{family}.toml"), format!("{family}-diffusers.toml")] {
        let manifest = Manifest::from_file(&fixtures().join("flux").join(&manifest)).unwrap();
        run_cases(&manifest, family, cases);
    }
}

/// diffusers' recorded runs `cases` of `family` on the model of `manifest`.
fn run_cases(manifest: &Manifest, family: &str, cases: &[&str]) {
    {
        let mut pipeline = FluxPipeline::<B>::load(manifest, &Default::default()).unwrap();
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

            let (worst_step, pixels) = case.check_run(&label, |on_step| {
                pipeline.generate(p, None, on_step).unwrap()
            });
            println!("{label}: noise {noise_err:e}, worst step {worst_step:e}, image {pixels}/255");
        }
    }
}

/// The files of a ComfyUI models folder, read from their tensors and `<stem>.toml`s, make
/// models that reproduce diffusers' runs as the manifests' do.
#[test]
fn models_folder_files_match_diffusers() {
    let dir = crate::common::temp_dir("flux-models-dir");
    let mut registry = Registry::default();
    registry
        .add_models_dir(&crate::common::tiny_models_dir(&dir))
        .unwrap();
    let ids: Vec<(&str, Family)> = registry
        .models()
        .map(|m| (m.id.as_str(), m.family))
        .collect();
    assert_eq!(
        ids,
        [
            ("chroma-tiny", Family::Chroma),
            ("flux1-dev-tiny", Family::FluxDev),
            ("sd_xl_tiny", Family::Sdxl),
            ("z_image_turbo-tiny", Family::ZImageTurbo),
        ]
    );
    run_cases(
        registry.get("flux1-dev-tiny").unwrap(),
        "flux-dev",
        &["flux-dev_64x64"],
    );
    run_cases(
        registry.get("chroma-tiny").unwrap(),
        "chroma",
        &["chroma_64x64_neg"],
    );
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
    let mut pipeline = pipeline.unwrap();
    let case_dir = dir.join("flux-dev/cases/flux-dev_64x64");
    let case = PipelineCase::load(&case_dir, SamplerKind::Euler, ScheduleKind::Normal);
    let (worst, pixels) = case.check_run("all-in-one", |on_step| {
        pipeline.generate(&case.params, None, on_step).unwrap()
    });
    println!("all-in-one: worst step {worst:e}, image {pixels}/255");
}

fn load_pipeline(manifest: &str, keep_text_encoder: bool) -> FluxPipeline<B> {
    let mut manifest = Manifest::from_file(&fixtures().join("flux").join(manifest)).unwrap();
    manifest.keep_text_encoder = keep_text_encoder;
    FluxPipeline::<B>::load(&manifest, &Default::default()).unwrap()
}

fn dev_case() -> PipelineCase {
    PipelineCase::load(
        &fixtures().join("flux/flux-dev/cases/flux-dev_64x64"),
        SamplerKind::Euler,
        ScheduleKind::Normal,
    )
}

/// Each step's latents and the image.
fn run(pipeline: &mut FluxPipeline<B>, params: &GenerationParams) -> (Vec<Vec<f32>>, RgbImage) {
    let mut steps = Vec::new();
    let image = pipeline
        .generate(params, None, &mut |progress| {
            steps.push(values(progress.latents.clone()));
            Flow::Continue
        })
        .unwrap();
    (steps, image)
}

fn held(pipeline: &FluxPipeline<B>, network: &str) -> u64 {
    let parts = pipeline.weight_bytes();
    parts.iter().find(|(name, _)| *name == network).unwrap().1
}

/// fp8 files as users download them — a ComfyUI "scaled fp8" transformer and a plain e4m3fn
/// T5, made from the tiny checkpoints by fp8/make_fp8.py — keep their linear weights in fp8 on
/// the device (one byte each) and run exactly as the same weights widened to f32 by torch.
#[test]
fn fp8_files_stay_fp8_and_run_as_their_widened_weights() {
    let case = dev_case();
    let mut fp8 = load_pipeline("flux-dev-fp8.toml", true);
    let mut widened = load_pipeline("flux-dev-fp8-widened.toml", true);
    let (fp8_steps, fp8_image) = run(&mut fp8, &case.params);
    let (widened_steps, widened_image) = run(&mut widened, &case.params);
    let worst = fp8_steps
        .iter()
        .zip(&widened_steps)
        .map(|(a, b)| max_abs_diff(a, b))
        .fold(0.0, f32::max);
    assert!(
        worst <= 1e-6,
        "fp8 vs widened: step latents differ by {worst:e}"
    );
    assert_eq!(crate::common::max_pixel_diff(&fp8_image, &widened_image), 0);

    // The widened files hold every value in f32; the fp8 ones their linear weights in one
    // byte (T5's embedding table is widened on load: half of the tiny T5, 3% of T5-XXL).
    for (network, at_most) in [("transformer", 0.3), ("t5", 0.6)] {
        let (kept, wide) = (held(&fp8, network), held(&widened, network));
        println!("{network}: fp8 {kept} bytes, widened {wide} bytes");
        assert!(
            kept as f64 <= at_most * wide as f64,
            "{network}: {kept} bytes held for fp8, {wide} widened"
        );
    }
    println!("fp8 vs widened: worst step {worst:e}");
}

/// T5 loads when a prompt needs encoding and is released before the first step (a run
/// cancelled at its first step finds it gone); encodings are kept per prompt, so another
/// image of the same prompt does not load it again and gives the reference image, and a new
/// prompt does. `keep_text_encoder = true` keeps it loaded.
#[test]
fn t5_is_released_before_sampling_and_loaded_again_only_for_new_prompts() {
    let case = dev_case();
    let mut pipeline = load_pipeline("flux-dev.toml", false);
    assert_eq!((pipeline.t5_loads(), held(&pipeline, "t5")), (0, 0));
    let cancelled = pipeline.generate(&case.params, None, &mut |_| Flow::Cancel);
    assert!(matches!(cancelled, Err(hanga::Error::Cancelled)));
    assert_eq!((pipeline.t5_loads(), held(&pipeline, "t5")), (1, 0));

    let (_, image) = run(&mut pipeline, &case.params);
    assert!(crate::common::max_pixel_diff(&image, &case.png) <= 2);
    assert_eq!((pipeline.t5_loads(), held(&pipeline, "t5")), (1, 0));
    let other_prompt = GenerationParams {
        prompt: "a lighthouse at dusk".into(),
        ..case.params.clone()
    };
    run(&mut pipeline, &other_prompt);
    assert_eq!(pipeline.t5_loads(), 2);

    let mut kept = load_pipeline("flux-dev.toml", true);
    run(&mut kept, &case.params);
    run(&mut kept, &other_prompt);
    assert_eq!(kept.t5_loads(), 1);
    assert!(held(&kept, "t5") > 0);
}
