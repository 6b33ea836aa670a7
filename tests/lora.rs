//! LoRA files against the deltas diffusers fused into the weights (fixtures:
//! ../shared/reference/pipelines/sdxl/lora; tolerance 1e-6). Our convention for a kohya
//! module without `.alpha` is sd-scripts' (alpha = rank), so `sdxl_lora_kohya.safetensors`
//! must give the `kohya_sdscripts-equivalent` deltas.

mod common;

use common::{fixtures, load, max_abs_diff};
use hanga::weights::LoraFile;

const LORA_SCALE: f32 = 0.8;

fn check(lora: &str, fused: &str) {
    let dir = fixtures().join("sdxl/lora");
    let file = LoraFile::open(&dir.join(lora)).unwrap();
    let expected = load(&dir.join(fused));
    // Fused keys are `<component>.<module>`; transformers 5 drops CLIP-L's `text_model.`.
    let normalize = |key: &str| {
        let (component, module) = key.split_once('.').unwrap();
        if component.starts_with("text_encoder") && !module.starts_with("text_model.") {
            format!("{component}.text_model.{module}")
        } else {
            key.to_owned()
        }
    };
    let expected: std::collections::HashMap<String, _> = expected
        .into_iter()
        .map(|(k, v)| (normalize(&k), v))
        .collect();
    assert_eq!(
        file.modules.len(),
        expected.len(),
        "{lora}: one module per fused delta"
    );
    let mut worst = 0.0f32;
    for module in &file.modules {
        let key = format!("{}.{}", module.component.name(), module.module);
        let reference = expected
            .get(&key)
            .unwrap_or_else(|| panic!("{lora}: no fused delta for {key}"));
        let (delta, shape) = module.delta(LORA_SCALE).unwrap();
        assert_eq!(shape, reference.shape, "{key}");
        let err = max_abs_diff(&delta, &reference.f32());
        assert!(err <= 1e-6, "{lora} {key}: max abs error {err:e}");
        worst = worst.max(err);
    }
    println!("{lora}: {} modules, worst {worst:e}", file.modules.len());
}

#[test]
fn peft_lora_reproduces_diffusers_deltas() {
    check(
        "sdxl_lora_peft.safetensors",
        "fused_deltas_peft.safetensors",
    );
}

#[test]
fn kohya_lora_follows_sd_scripts_alpha_convention() {
    check(
        "sdxl_lora_kohya.safetensors",
        "fused_deltas_kohya_sdscripts-equivalent.safetensors",
    );
    check(
        "sdxl_lora_kohya_sdscripts-equivalent.safetensors",
        "fused_deltas_kohya_sdscripts-equivalent.safetensors",
    );
}
