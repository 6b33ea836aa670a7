//! The Stable Diffusion safety checker against diffusers' `StableDiffusionSafetyChecker` and
//! transformers' `CLIPImageProcessor` on tiny random weights
//! (tests/fixtures/components/safety_checker, made by its make_fixture.py). Concept scores
//! within 1e-4; the flags, special-care hits and rounded scores exactly.

use crate::common::{B, assert_close, fixtures, load, values};
use hanga::models::safety_checker::SafetyChecker;
use hanga::pipelines::safety::{check_images, clip_input, load_checker};
use hanga::registry::{CheckerFiles, CheckerManifest};

const TOL: f32 = 1e-4;

fn dir() -> std::path::PathBuf {
    fixtures().join("components/safety_checker")
}

fn checker() -> SafetyChecker<B> {
    let manifest = CheckerManifest {
        id: "tiny-checker".into(),
        name: "tiny".into(),
        description: None,
        files: CheckerFiles {
            weights: "model.safetensors".into(),
            config: Some("config.json".into()),
        },
        dir: dir(),
    };
    load_checker(&manifest, &Default::default()).unwrap()
}

fn fixture_images(
    io: &std::collections::HashMap<String, crate::common::Recorded>,
) -> Vec<image::RgbImage> {
    (0..4)
        .map(|i| {
            let t = &io[&format!("in.images_{i}")];
            let bytes: Vec<u8> = t.values.iter().map(|&v| v as u8).collect();
            image::RgbImage::from_raw(t.shape[1] as u32, t.shape[0] as u32, bytes).unwrap()
        })
        .collect()
}

#[test]
fn safety_checker_preprocessing_matches_clip_image_processor() {
    let io = load(&dir().join("io.safetensors"));
    let expected = io["in.pixel_values"].f32();
    let plane = 3 * 224 * 224;
    for (i, image) in fixture_images(&io).iter().enumerate() {
        let got = clip_input(image, 224).unwrap();
        let e = assert_close(
            &format!(
                "pixel_values of image {i} ({}×{})",
                image.width(),
                image.height()
            ),
            &got,
            &expected[i * plane..(i + 1) * plane],
            // Pillow's resampling to the bit, then the same float32 arithmetic.
            1e-6,
        );
        println!("image {i}: pixel_values {e:e}");
    }
}

#[test]
fn safety_checker_matches_diffusers() {
    let io = load(&dir().join("io.safetensors"));
    let model = checker();
    let pixels = io["in.pixel_values"].tensor::<4>();
    let e = assert_close(
        "embeddings",
        &values(model.embeddings(pixels.clone())),
        &io["inter.embeddings"].f32(),
        TOL,
    );
    let embeds = model.image_embeds(pixels.clone());
    let e2 = assert_close(
        "image_embeds",
        &values(embeds.clone()),
        &io["out.image_embeds"].f32(),
        TOL,
    );
    let (concepts, special) = model.similarities(embeds);
    let e3 = assert_close(
        "cos_dist",
        &values(concepts),
        &io["out.cos_dist"].f32(),
        TOL,
    );
    let e4 = assert_close(
        "special_cos_dist",
        &values(special),
        &io["out.special_cos_dist"].f32(),
        TOL,
    );
    println!("embeddings {e:e}, image_embeds {e2:e}, cos {e3:e}, special cos {e4:e}");

    let verdicts = model.check(pixels).unwrap();
    let flags: Vec<bool> = verdicts.iter().map(|v| v.is_nsfw).collect();
    let expected_flags: Vec<bool> = io["out.has_nsfw_concepts"]
        .values
        .iter()
        .map(|&v| v != 0.0)
        .collect();
    assert_eq!(flags, expected_flags);
    // The fixture's thresholds make image 2 flagged only through the special-care adjustment.
    assert_eq!(flags, [true, false, true, false]);
    assert_eq!(verdicts[2].special_care, [2]);
    let concept_scores: Vec<f32> = verdicts
        .iter()
        .flat_map(|v| v.concept_scores.clone())
        .collect();
    let special_scores: Vec<f32> = verdicts
        .iter()
        .flat_map(|v| v.special_scores.clone())
        .collect();
    // Rounded to thousandths on both sides, so equal up to the float32 spelling of each.
    assert_close(
        "concept_scores",
        &concept_scores,
        &io["out.concept_scores"].f32(),
        1e-6,
    );
    assert_close(
        "special_scores",
        &special_scores,
        &io["out.special_scores"].f32(),
        1e-6,
    );
}

#[test]
fn safety_checker_flags_the_fixture_images_from_their_pixels() {
    let io = load(&dir().join("io.safetensors"));
    let images = fixture_images(&io);
    let refs: Vec<&image::RgbImage> = images.iter().collect();
    let verdicts = check_images(&checker(), &refs, &Default::default()).unwrap();
    let flags: Vec<bool> = verdicts.iter().map(|v| v.is_nsfw).collect();
    assert_eq!(flags, [true, false, true, false]);
    let similarity: Vec<f32> = verdicts
        .iter()
        .flat_map(|v| v.concept_similarity.clone())
        .collect();
    assert_close(
        "cos_dist from pixels",
        &similarity,
        &io["out.cos_dist"].f32(),
        TOL,
    );
}
