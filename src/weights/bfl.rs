//! Renaming Black Forest Labs' Flux layout (`flux1-dev.safetensors`, ComfyUI's split
//! `diffusion_models/*.safetensors`) and Chroma's (the same names, plus
//! `distilled_guidance_layer`) to diffusers names, so one network serves both layouts.
//!
//! The mapping follows diffusers `loaders/single_file_utils.py`
//! (`convert_flux_transformer_checkpoint_to_diffusers`,
//! `convert_chroma_transformer_checkpoint_to_diffusers`): fused `qkv` and `linear1` become row
//! views, and the final adaLN's (shift, scale) halves are swapped to diffusers' (scale, shift).

use std::sync::Arc;

use super::{SafetensorsFile, TensorSlot, TensorStore};

/// The key every Flux-trunk file has (diffusers `CHECKPOINT_KEY_NAMES["flux"]`).
const FLUX_KEY: &str = "double_blocks.0.img_attn.norm.key_norm.scale";

/// The prefix in front of the BFL names (`model.diffusion_model.`, `diffusion_model.` or none),
/// if `file` is in that layout.
pub fn bfl_prefix(file: &SafetensorsFile) -> Option<String> {
    file.tensors()
        .iter()
        .find_map(|(name, _)| name.strip_suffix(FLUX_KEY).map(str::to_owned))
}

/// The BFL-layout transformer under `prefix` in `file`, with diffusers names.
pub fn flux_store(file: &Arc<SafetensorsFile>, prefix: &str) -> TensorStore {
    let raw = TensorStore::from_file_prefix(file, prefix);
    // Hidden size from linear2 [D, D + mlp]; the MLP width is what linear1 has beyond q, k, v.
    let hidden = raw
        .shape("single_blocks.0.linear2.weight")
        .or_else(|| raw.shape("img_in.weight"))
        .map_or(0, |s| s[0]);
    let mut store = TensorStore::default();
    for (name, slot) in raw.into_slots() {
        for (renamed, slot) in rename(&name, slot, hidden) {
            store.insert(renamed, slot);
        }
    }
    store
}

/// One BFL tensor as the diffusers tensor(s) it holds.
fn rename(name: &str, slot: TensorSlot, hidden: usize) -> Vec<(String, TensorSlot)> {
    let one = |n: String| vec![(n, slot.clone())];
    let (module, param) = match name.rsplit_once('.') {
        Some(split) => split,
        None => return Vec::new(),
    };
    // Norm scales: `….norm.query_norm.scale` → `….norm_q.weight`.
    let param = if param == "scale" { "weight" } else { param };
    const TOP: [(&str, &str); 9] = [
        ("img_in", "x_embedder"),
        ("txt_in", "context_embedder"),
        (
            "time_in.in_layer",
            "time_text_embed.timestep_embedder.linear_1",
        ),
        (
            "time_in.out_layer",
            "time_text_embed.timestep_embedder.linear_2",
        ),
        (
            "vector_in.in_layer",
            "time_text_embed.text_embedder.linear_1",
        ),
        (
            "vector_in.out_layer",
            "time_text_embed.text_embedder.linear_2",
        ),
        (
            "guidance_in.in_layer",
            "time_text_embed.guidance_embedder.linear_1",
        ),
        (
            "guidance_in.out_layer",
            "time_text_embed.guidance_embedder.linear_2",
        ),
        ("final_layer.linear", "proj_out"),
    ];
    if let Some((_, to)) = TOP.iter().find(|(from, _)| *from == module) {
        return one(format!("{to}.{param}"));
    }
    if module == "final_layer.adaLN_modulation.1" {
        let rows = slot.shape()[0] / 2;
        let swapped = slot.clone().row_blocks(vec![rows..2 * rows, 0..rows]);
        return vec![(format!("norm_out.linear.{param}"), swapped)];
    }
    if let Some(rest) = module.strip_prefix("distilled_guidance_layer.") {
        let rest = rest
            .replace(".in_layer", ".linear_1")
            .replace(".out_layer", ".linear_2");
        return one(format!("distilled_guidance_layer.{rest}.{param}"));
    }
    let split = |names: &[(&str, usize)], base: &str| {
        let mut start = 0;
        names
            .iter()
            .map(|(n, len)| {
                let view = slot.clone().rows(start..start + len);
                start += len;
                (format!("{base}.{n}.{param}"), view)
            })
            .collect::<Vec<_>>()
    };
    if let Some(rest) = module.strip_prefix("double_blocks.") {
        let Some((i, part)) = rest.split_once('.') else {
            return Vec::new();
        };
        let base = format!("transformer_blocks.{i}");
        let d = slot.shape()[0] / 3;
        return match part {
            "img_mod.lin" => one(format!("{base}.norm1.linear.{param}")),
            "txt_mod.lin" => one(format!("{base}.norm1_context.linear.{param}")),
            "img_attn.qkv" => split(
                &[("to_q", d), ("to_k", d), ("to_v", d)],
                &format!("{base}.attn"),
            ),
            "txt_attn.qkv" => split(
                &[("add_q_proj", d), ("add_k_proj", d), ("add_v_proj", d)],
                &format!("{base}.attn"),
            ),
            "img_attn.norm.query_norm" => one(format!("{base}.attn.norm_q.{param}")),
            "img_attn.norm.key_norm" => one(format!("{base}.attn.norm_k.{param}")),
            "txt_attn.norm.query_norm" => one(format!("{base}.attn.norm_added_q.{param}")),
            "txt_attn.norm.key_norm" => one(format!("{base}.attn.norm_added_k.{param}")),
            "img_attn.proj" => one(format!("{base}.attn.to_out.0.{param}")),
            "txt_attn.proj" => one(format!("{base}.attn.to_add_out.{param}")),
            "img_mlp.0" => one(format!("{base}.ff.net.0.proj.{param}")),
            "img_mlp.2" => one(format!("{base}.ff.net.2.{param}")),
            "txt_mlp.0" => one(format!("{base}.ff_context.net.0.proj.{param}")),
            "txt_mlp.2" => one(format!("{base}.ff_context.net.2.{param}")),
            _ => Vec::new(),
        };
    }
    if let Some(rest) = module.strip_prefix("single_blocks.") {
        let Some((i, part)) = rest.split_once('.') else {
            return Vec::new();
        };
        let base = format!("single_transformer_blocks.{i}");
        return match part {
            "linear1" => {
                let mlp = slot.shape()[0] - 3 * hidden;
                let (q, k, v) = (
                    ("attn.to_q", hidden),
                    ("attn.to_k", hidden),
                    ("attn.to_v", hidden),
                );
                split(&[q, k, v, ("proj_mlp", mlp)], &base)
            }
            "linear2" => one(format!("{base}.proj_out.{param}")),
            "modulation.lin" => one(format!("{base}.norm.linear.{param}")),
            "norm.query_norm" => one(format!("{base}.attn.norm_q.{param}")),
            "norm.key_norm" => one(format!("{base}.attn.norm_k.{param}")),
            _ => Vec::new(),
        };
    }
    Vec::new()
}
