//! Z-Image Turbo end to end against diffusers' ZImagePipeline on a tiny checkpoint, from the
//! original-layout files and from the diffusers folder (fixtures:
//! ../shared/reference/pipelines/z-image-turbo). Tolerances (issue #6): noise ≤ 1e-6, each
//! step's latents ≤ 1e-3, image ≤ 2/255.

mod common;

use common::{B, assert_close, fixtures, load, max_abs_diff, max_pixel_diff, values};
use hanga::pipelines::{Flow, GenerationParams, ZImagePipeline};
use hanga::registry::Manifest;
use hanga::sampling::{SamplerKind, ScheduleKind};
use hanga::text::LongPrompt;

const CASES: [&str; 3] = [
    "z-image-turbo_64x128_cfg_neg",
    "z-image-turbo_64x64",
    "z-image-turbo_96x64",
];

#[test]
fn z_image_turbo_matches_diffusers() {
    for manifest in ["z-image-turbo.toml", "z-image-turbo-diffusers.toml"] {
        let manifest = Manifest::from_file(&fixtures().join("zimage").join(manifest)).unwrap();
        let pipeline = ZImagePipeline::<B>::load(&manifest, &Default::default()).unwrap();
        for id in CASES {
            let label = format!("{}/{id}", manifest.id);
            let dir = fixtures().join("zimage/cases").join(id);
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap())
                    .unwrap();
            let p = GenerationParams {
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
            let t = load(&dir.join("case.safetensors"));

            assert_close(
                &format!("{label} prompt_embeds"),
                &values(pipeline.encode_prompt(&p.prompt).unwrap()),
                &t["text.prompt_embeds.0"].f32(),
                1e-4,
            );
            let noise_err = max_abs_diff(&values(pipeline.initial_latents(&p)), &t["noise"].f32());
            assert!(noise_err <= 1e-6, "{label}: noise error {noise_err:e}");
            assert_close(
                &format!("{label} sigmas"),
                &pipeline.sigmas(&p).unwrap(),
                &t["sigmas"].f32(),
                1e-7,
            );

            let mut worst_step = 0.0f32;
            let image = pipeline
                .generate(&p, &mut |progress| {
                    let key = format!("latents.step{}", progress.step - 1);
                    let err = max_abs_diff(&values(progress.latents.clone()), &t[&key].f32());
                    assert!(err <= 1e-3, "{label} {key}: {err:e}");
                    worst_step = worst_step.max(err);
                    Flow::Continue
                })
                .unwrap();
            let png = image::open(dir.join("image.png")).unwrap().to_rgb8();
            let pixels = max_pixel_diff(&image, &png);
            assert!(pixels <= 2, "{label}: image differs by {pixels}/255");
            println!("{label}: noise {noise_err:e}, worst step {worst_step:e}, image {pixels}/255");
        }
    }
}
