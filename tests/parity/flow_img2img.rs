//! FLUX.1 dev, Chroma and Z-Image Turbo image-to-image against diffusers'
//! FluxImg2ImgPipeline, ChromaImg2ImgPipeline and ZImageImg2ImgPipeline on the tiny diffusers
//! folders (fixtures: tests/fixtures/flux_img2img, made by its make_fixture.py): the σ kept by
//! the strength, the noised starting latents (VAE posterior sample, `scale_noise`), every step's
//! latents and the image. Tolerances as txt2img's: starting latents ≤ 1e-4, each step ≤ 1e-3,
//! image ≤ 2/255.

use crate::common::{B, PipelineCase, assert_close, fixtures, values};
use hanga::pipelines::{FluxPipeline, ZImagePipeline};
use hanga::registry::Manifest;
use hanga::sampling::{SamplerKind, ScheduleKind};

/// Each case and the manifest of the model it ran on.
const CASES: [(&str, &str); 3] = [
    (
        "flux-dev_img2img_64x64_s0.6",
        "flux/flux-dev-diffusers.toml",
    ),
    (
        "chroma_img2img_64x64_s0.7_neg",
        "flux/chroma-diffusers.toml",
    ),
    (
        "z-image-turbo_img2img_64x64_s0.5",
        "zimage/z-image-turbo-diffusers.toml",
    ),
];

#[test]
fn flow_img2img_matches_diffusers() {
    let image = image::open(fixtures().join("sdxl/img2img/init_64x64.png"))
        .unwrap()
        .to_rgb8();
    for (id, manifest) in CASES {
        let manifest = Manifest::from_file(&fixtures().join(manifest)).unwrap();
        let case = PipelineCase::load(
            &fixtures().join("flux_img2img").join(id),
            SamplerKind::Euler,
            ScheduleKind::Normal,
        );
        let (p, t) = (&case.params, &case.tensors);
        let full = t["sigmas.full"].f32();
        let check_start = |(latents, sigmas): (burn::prelude::Tensor<B, 4>, Vec<f32>)| {
            let cut = full.len() - sigmas.len();
            assert_close(&format!("{id} sigmas"), &sigmas, &full[cut..], 1e-6);
            let start = values(latents);
            assert_close(
                &format!("{id} latents.init"),
                &start,
                &t["latents.init"].f32(),
                1e-4,
            )
        };
        let (start, (worst_step, pixel)) = if id.starts_with("z-image") {
            let mut pipeline = ZImagePipeline::<B>::load(&manifest, &Default::default()).unwrap();
            let start = check_start(pipeline.start(p, Some(&image)).unwrap());
            let run = case.check_run(id, |on_step| {
                pipeline.generate(p, Some(&image), on_step).unwrap()
            });
            (start, run)
        } else {
            let mut pipeline = FluxPipeline::<B>::load(&manifest, &Default::default()).unwrap();
            let start = check_start(pipeline.start(p, Some(&image)).unwrap());
            let run = case.check_run(id, |on_step| {
                pipeline.generate(p, Some(&image), on_step).unwrap()
            });
            (start, run)
        };
        println!("{id}: start {start:e}, latents {worst_step:e}, image {pixel}/255");
    }
}
