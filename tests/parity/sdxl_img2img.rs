//! SDXL image-to-image against diffusers' StableDiffusionXLImg2ImgPipeline on the tiny
//! checkpoint (fixtures: tests/fixtures/sdxl/img2img, made by its make_fixture.py): the
//! noised starting latents (Lanczos resize, VAE posterior sample, `add_noise` at the strength's
//! first step), every step's latents and the image, for Euler, Euler ancestral and DPM++ 2M
//! Karras. Tolerances as txt2img's: starting latents ≤ 1e-4, each step ≤ 1e-3, image ≤ 2/255.

use crate::common::{B, assert_close, fixtures, values};
use crate::sdxl_pipeline::{load_case, single_file_manifest};
use hanga::pipelines::SdxlPipeline;
use hanga::registry::Family;
use hanga::sampling::TorchGenerator;

const CASES: [&str; 3] = [
    "img2img_dpmpp2m-karras_72x56_s0.75",
    "img2img_euler-a_64x64_s0.5_no-cfg",
    "img2img_euler_64x64_s0.6_neg",
];

#[test]
fn img2img_matches_diffusers() {
    let pipeline = SdxlPipeline::<B>::load(&single_file_manifest(), &Default::default()).unwrap();
    let dir = fixtures().join("sdxl/img2img");
    for id in CASES {
        let case = load_case(&dir.join(id));
        let p = &case.params;
        let init = p.init_image.as_ref().expect("an img2img case");
        let image = image::open(dir.join(&init.path)).unwrap().to_rgb8();

        let mut rng = TorchGenerator::new(p.seed);
        let (latents, sampler) = pipeline.image_latents(p, &image, &mut rng).unwrap();
        assert_eq!(
            sampler.steps(),
            p.steps_run(Family::Sdxl),
            "{id}: steps run"
        );
        assert_close(
            &format!("{id} timesteps"),
            &sampler.schedule().timesteps,
            &case.tensors["timesteps"].f32(),
            1e-4,
        );
        let start = assert_close(
            &format!("{id} latents.init"),
            &values(latents),
            &case.tensors["latents.init"].f32(),
            1e-4,
        );

        let (worst_step, pixel) = case.check_run(id, |on_step| {
            pipeline.generate_from_image(p, &image, on_step).unwrap()
        });
        println!("{id}: start {start:e}, latents {worst_step:e}, image {pixel}/255");
    }
}

/// `hanga generate --init-image` makes diffusers' image, at the image's size.
#[test]
fn cli_generates_from_an_image() {
    let dir = fixtures().join("sdxl/img2img");
    let id = "img2img_euler_64x64_s0.6_neg";
    let case = load_case(&dir.join(id));
    let p = &case.params;
    let out = crate::common::temp_dir("cli-img2img").join("out.png");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hanga"))
        .current_dir(crate::common::repo())
        .args([
            "generate",
            "--model",
            "sdxl-tiny-demo",
            "--prompt",
            &p.prompt,
        ])
        .args(["--negative-prompt", p.negative_prompt.as_deref().unwrap()])
        .arg("--init-image")
        .arg(dir.join("init_64x64.png"))
        .args(["--strength", "0.6", "--steps", "4", "--guidance-scale", "5"])
        .args(["--sampler", "euler", "--scheduler", "normal", "--seed", "0"])
        .args(["--long-prompt", "truncate", "--device", "cpu", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    let image = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let pixel = crate::common::max_pixel_diff(&image, &case.png);
    assert!(pixel <= 2, "the CLI's image is {pixel}/255 from diffusers'");
    let parameters = hanga::output::png::read_parameters(&bytes).unwrap();
    assert!(
        parameters.contains("Denoising strength: 0.6") && parameters.contains("Size: 64x64"),
        "{parameters}"
    );
}
