//! Z-Image Turbo end to end against diffusers' ZImagePipeline on a tiny checkpoint, from the
//! original-layout files and from the diffusers folder (fixtures:
//! ../shared/reference/pipelines/z-image-turbo). Tolerances (issue #6): noise ≤ 1e-6, each
//! step's latents ≤ 1e-3, image ≤ 2/255.

use crate::common::{B, PipelineCase, assert_close, fixtures, max_abs_diff, values};
use hanga::pipelines::ZImagePipeline;
use hanga::registry::Manifest;
use hanga::sampling::{SamplerKind, ScheduleKind};

const CASES: [&str; 3] = [
    "z-image-turbo_64x128_cfg_neg",
    "z-image-turbo_64x64",
    "z-image-turbo_96x64",
];

#[test]
fn z_image_turbo_matches_diffusers() {
    for manifest in ["z-image-turbo.toml", "z-image-turbo-diffusers.toml"] {
        let manifest = Manifest::from_file(&fixtures().join("zimage").join(manifest)).unwrap();
        let mut pipeline = ZImagePipeline::<B>::load(&manifest, &Default::default()).unwrap();
        for id in CASES {
            let label = format!("{}/{id}", manifest.id);
            let dir = fixtures().join("zimage/cases").join(id);
            let case = PipelineCase::load(&dir, SamplerKind::Euler, ScheduleKind::Normal);
            let (t, p) = (&case.tensors, &case.params);

            assert_close(
                &format!("{label} prompt_embeds"),
                &values(pipeline.encode_prompt(&p.prompt).unwrap()),
                &t["text.prompt_embeds.0"].f32(),
                1e-4,
            );
            let noise_err = max_abs_diff(&values(pipeline.initial_latents(p)), &t["noise"].f32());
            assert!(noise_err <= 1e-6, "{label}: noise error {noise_err:e}");
            assert_close(
                &format!("{label} sigmas"),
                &pipeline.sigmas(p).unwrap(),
                &t["sigmas"].f32(),
                1e-7,
            );

            let (worst_step, pixels) = case.check_run(&label, |on_step| {
                pipeline.generate(p, None, on_step).unwrap()
            });
            println!("{label}: noise {noise_err:e}, worst step {worst_step:e}, image {pixels}/255");
        }
    }
}
