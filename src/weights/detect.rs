//! Telling what a weights file holds from its tensor names and shapes: so that a wrong file
//! gets an error that says what was found, and so that a ComfyUI `models/` folder needs no
//! manifest. Keys follow the detection order of ../shared models.md §6 (after ComfyUI
//! `model_detection.py` / `sd.py` `detect_te_model` and diffusers `CHECKPOINT_KEY_NAMES`).

use super::SafetensorsFile;

/// What a file holds, as far as this build can use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Lora,
    /// UNet, VAE and both text encoders in the SGM layout civitai distributes.
    SdxlCheckpoint,
    SdxlRefinerCheckpoint,
    Sd1Checkpoint,
    Sd2Checkpoint,
    Transformer(TransformerKind),
    /// A Flux transformer with diffusers names (dev or schnell: `guidance_embedder` tells).
    FluxDiffusersTransformer,
    SdxlDiffusersUnet,
    /// An autoencoder with `latent_channels` channels (4: SD/SDXL, 16: Flux).
    Vae {
        latent_channels: usize,
    },
    /// CLIP ViT-L/14's text tower (SD 1.x, SDXL's first encoder, Flux's pooled vector).
    ClipL,
    /// OpenCLIP ViT-bigG's text tower (SDXL's second encoder).
    ClipG,
    T5,
    Qwen3,
    Unknown,
}

/// The transformers of the families this build runs, in their original (BFL / Z-Image) names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransformerKind {
    FluxDev,
    FluxSchnell,
    Chroma,
    ZImage,
}

/// What `file` holds.
pub fn kind(file: &SafetensorsFile) -> FileKind {
    let names = file.tensors();
    let has = |needle: &str| names.iter().any(|(n, _)| n.contains(needle));
    let starts = |prefix: &str| names.iter().any(|(n, _)| n.starts_with(prefix));
    let shape = |suffix: &str| {
        names
            .iter()
            .find(|(n, _)| n.ends_with(suffix))
            .map(|(_, info)| info.shape.clone())
    };
    if starts("lora_unet_") || starts("lora_te") || has(".lora_A.") || has(".lora_down.") {
        FileKind::Lora
    } else if has("conditioner.embedders.1.model.transformer.resblocks")
        && has("model.diffusion_model.")
    {
        FileKind::SdxlCheckpoint
    } else if has("conditioner.embedders.0.model.") && has("model.diffusion_model.") {
        FileKind::SdxlRefinerCheckpoint
    } else if has("cond_stage_model.transformer.") {
        FileKind::Sd1Checkpoint
    } else if has("cond_stage_model.model.") {
        FileKind::Sd2Checkpoint
    } else if has("distilled_guidance_layer.") {
        FileKind::Transformer(TransformerKind::Chroma)
    } else if has("double_blocks.") && has("guidance_in.") {
        FileKind::Transformer(TransformerKind::FluxDev)
    } else if has("double_blocks.") {
        FileKind::Transformer(TransformerKind::FluxSchnell)
    } else if has("cap_embedder.") && has("noise_refiner.") {
        FileKind::Transformer(TransformerKind::ZImage)
    } else if has("transformer_blocks.") && has("single_transformer_blocks.") {
        FileKind::FluxDiffusersTransformer
    } else if has("down_blocks.") && has("add_embedding.") {
        FileKind::SdxlDiffusersUnet
    } else if starts("encoder.down") && starts("decoder.up") {
        // `quant_conv` / the encoder's last conv give 2 × the latent channels (mean, logvar).
        let moments = shape("encoder.conv_out.weight").map_or(0, |s| s[0]);
        FileKind::Vae {
            latent_channels: moments / 2,
        }
    } else if has("text_model.encoder.layers.") {
        // `detect_te_model`: bigG has 32 layers (ComfyUI tests layer 30), L has 12.
        if has("text_model.encoder.layers.30.") {
            FileKind::ClipG
        } else {
            FileKind::ClipL
        }
    } else if has("encoder.block.") && has("SelfAttention") {
        FileKind::T5
    } else if has("self_attn.q_norm") {
        FileKind::Qwen3
    } else {
        FileKind::Unknown
    }
}

impl FileKind {
    fn described(self) -> String {
        match self {
            FileKind::Lora => "a LoRA".into(),
            FileKind::SdxlCheckpoint => "an SDXL checkpoint".into(),
            FileKind::SdxlRefinerCheckpoint => "an SDXL refiner checkpoint".into(),
            FileKind::Sd1Checkpoint => "a Stable Diffusion 1.x checkpoint".into(),
            FileKind::Sd2Checkpoint => "a Stable Diffusion 2.x checkpoint".into(),
            FileKind::Transformer(TransformerKind::Chroma) => "a Chroma transformer".into(),
            FileKind::Transformer(TransformerKind::FluxDev) => "a Flux Dev transformer".into(),
            FileKind::Transformer(TransformerKind::FluxSchnell) => {
                "a Flux Schnell transformer".into()
            }
            FileKind::Transformer(TransformerKind::ZImage) => "a Z-Image transformer".into(),
            FileKind::FluxDiffusersTransformer => "a Flux transformer (diffusers layout)".into(),
            FileKind::SdxlDiffusersUnet => "an SDXL UNet (diffusers layout)".into(),
            FileKind::Vae { latent_channels } => format!("a VAE ({latent_channels} channels)"),
            FileKind::ClipL => "a CLIP-L text encoder".into(),
            FileKind::ClipG => "a CLIP-G text encoder".into(),
            FileKind::T5 => "a T5 text encoder".into(),
            FileKind::Qwen3 => "a Qwen3 text encoder".into(),
            FileKind::Unknown => "no model this build recognises".into(),
        }
    }
}

/// A short description of the checkpoint `file`, e.g. "a Flux Dev transformer (…)".
pub fn describe(file: &SafetensorsFile) -> String {
    let mut names: Vec<&str> = file.tensors().iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let sample: Vec<&str> = names.into_iter().take(3).collect();
    format!(
        "{} ({} tensors, e.g. {})",
        kind(file).described(),
        file.tensors().len(),
        sample.join(", ")
    )
}
