//! Every family end to end in bf16 (`--dtype bf16`): weights load as bf16 and every tensor
//! the networks create follows the device's float type, so a run must not mix types anywhere
//! and must stay near the f32 reference image: mean |Δ| ≤ 2/255 (measured 0.7–1.1/255 on the
//! tiny checkpoints, max 10–12/255). Before T5 took bf16's own finite minimum for its padding
//! mask, Chroma's masked T5 gave NaN here (f32::MIN is -inf in bf16, and 0 · -inf = NaN).

mod common;

use std::path::Path;

use burn::tensor::DType;
use common::{B, PipelineCase, fixtures, mean_pixel_diff, repo};
use hanga::backend::{Precision, set_precision};
use hanga::pipelines::{Flow, Pipeline};
use hanga::registry::Manifest;
use hanga::sampling::{SamplerKind, ScheduleKind};

fn run_in_bf16(manifest: &Path, case: &Path, sampler: SamplerKind) {
    let device = Default::default();
    set_precision::<B>(&device, Precision::Bf16).unwrap();
    let manifest = Manifest::from_file(manifest).unwrap();
    let mut pipeline = Pipeline::<B>::load(&manifest, &device).unwrap();
    let case = PipelineCase::load(case, sampler, ScheduleKind::Normal);
    let mut dtypes = Vec::new();
    let image = pipeline
        .generate(&case.params, None, &mut |progress| {
            dtypes.push(progress.latents.dtype());
            Flow::Continue
        })
        .unwrap();
    assert!(dtypes.iter().all(|d| *d == DType::BF16), "{dtypes:?}");
    let (mean, max) = (
        mean_pixel_diff(&image, &case.png),
        common::max_pixel_diff(&image, &case.png),
    );
    println!(
        "{}: bf16 vs f32 reference: mean {mean:.2}/255, max {max}/255",
        manifest.id
    );
    assert!(mean <= 2.0, "{}: mean difference {mean}/255", manifest.id);
}

#[test]
fn sdxl_runs_in_bf16() {
    run_in_bf16(
        &repo().join("model_manifests/sdxl-tiny-demo.toml"),
        &fixtures().join("sdxl/cases/sdxl_euler_64x64_neg-none"),
        SamplerKind::Euler,
    );
}

#[test]
fn flux_dev_runs_in_bf16() {
    run_in_bf16(
        &fixtures().join("flux/flux-dev.toml"),
        &fixtures().join("flux/flux-dev/cases/flux-dev_64x64"),
        SamplerKind::Euler,
    );
}

#[test]
fn chroma_runs_in_bf16() {
    run_in_bf16(
        &fixtures().join("flux/chroma.toml"),
        &fixtures().join("flux/chroma/cases/chroma_64x64_neg"),
        SamplerKind::Euler,
    );
}

#[test]
fn z_image_runs_in_bf16() {
    run_in_bf16(
        &fixtures().join("zimage/z-image-turbo.toml"),
        &fixtures().join("zimage/cases/z-image-turbo_64x128_cfg_neg"),
        SamplerKind::Euler,
    );
}
