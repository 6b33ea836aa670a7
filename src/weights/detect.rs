//! Telling what a weights file holds from its tensor names, so that a wrong file gets an
//! error that says what was found. Keys follow the detection order of ../shared models.md §6
//! (after ComfyUI `model_detection.py` and diffusers `CHECKPOINT_KEY_NAMES`).

use super::SafetensorsFile;

/// A short description of the checkpoint `file`, e.g. "a Flux transformer (BFL layout)".
pub fn describe(file: &SafetensorsFile) -> String {
    let has = |needle: &str| file.tensors().iter().any(|(n, _)| n.contains(needle));
    let starts = |prefix: &str| file.tensors().iter().any(|(n, _)| n.starts_with(prefix));
    let what = if starts("lora_unet_") || starts("lora_te") || has(".lora_A.") || has(".lora_down.")
    {
        "a LoRA"
    } else if has("conditioner.embedders.1.model.transformer.resblocks")
        && has("model.diffusion_model.")
    {
        "an SDXL checkpoint"
    } else if has("conditioner.embedders.0.model.") && has("model.diffusion_model.") {
        "an SDXL refiner checkpoint"
    } else if has("cond_stage_model.transformer.") {
        "a Stable Diffusion 1.x checkpoint"
    } else if has("cond_stage_model.model.") {
        "a Stable Diffusion 2.x checkpoint"
    } else if has("distilled_guidance_layer.") {
        "a Chroma transformer"
    } else if has("double_blocks.") && has("guidance_in.") {
        "a Flux Dev transformer"
    } else if has("double_blocks.") {
        "a Flux Schnell transformer"
    } else if has("cap_embedder.") && has("noise_refiner.") {
        "a Z-Image transformer"
    } else if has("transformer_blocks.") && has("single_transformer_blocks.") {
        "a Flux transformer (diffusers layout)"
    } else if has("down_blocks.") && has("add_embedding.") {
        "an SDXL UNet (diffusers layout)"
    } else if starts("encoder.down") && starts("decoder.up") && !has("model.diffusion_model.") {
        "a VAE"
    } else if has("text_model.encoder.layers.") {
        "a CLIP text encoder"
    } else if has("encoder.block.") && has("SelfAttention") {
        "a T5 text encoder"
    } else if has("self_attn.q_norm") {
        "a Qwen3 text encoder"
    } else {
        "no model this build recognises"
    };
    let mut names: Vec<&str> = file.tensors().iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let sample: Vec<&str> = names.into_iter().take(3).collect();
    format!(
        "{what} ({} tensors, e.g. {})",
        file.tensors().len(),
        sample.join(", ")
    )
}
