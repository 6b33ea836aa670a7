//! Renaming the original Z-Image layout (Tongyi-MAI's checkpoint, ComfyUI's repackaged
//! `z_image_turbo_*.safetensors`, optionally under `model.diffusion_model.`) to diffusers names.
//!
//! The mapping follows diffusers `convert_z_image_transformer_checkpoint_to_diffusers` and
//! ComfyUI `utils.z_image_to_diffusers`: fused `attention.qkv` becomes q, k, v row views,
//! `attention.out` → `attention.to_out.0`, `q_norm`/`k_norm` → `norm_q`/`norm_k`, the embedder
//! and final layer gain their `all_…2-1` names, and the unused `norm_final` is dropped.

use std::sync::Arc;

use super::{SafetensorsFile, TensorStore};

/// The key both Z-Image layouts have (diffusers' detection key).
const ZIMAGE_KEY: &str = "layers.0.adaLN_modulation.0.weight";

/// The prefix in front of the Z-Image names in `file`, if it holds a Z-Image transformer.
pub fn zimage_prefix(file: &SafetensorsFile) -> Option<String> {
    file.tensors()
        .iter()
        .find_map(|(name, _)| name.strip_suffix(ZIMAGE_KEY).map(str::to_owned))
}

/// The Z-Image transformer under `prefix` in `file`, in either layout, with diffusers names.
pub fn zimage_store(file: &Arc<SafetensorsFile>, prefix: &str) -> TensorStore {
    let raw = TensorStore::from_file_prefix(file, prefix);
    if raw.contains("all_x_embedder.2-1.weight") {
        return raw;
    }
    let mut store = TensorStore::default();
    for (name, slot) in raw.into_slots() {
        if name == "norm_final.weight" {
            continue;
        }
        if let Some(base) = name.strip_suffix(".attention.qkv.weight") {
            let d = slot.shape()[0] / 3;
            for (i, proj) in ["to_q", "to_k", "to_v"].iter().enumerate() {
                let view = slot.clone().rows(i * d..(i + 1) * d);
                store.insert(format!("{base}.attention.{proj}.weight"), view);
            }
            continue;
        }
        let renamed = if let Some(rest) = name.strip_prefix("x_embedder.") {
            format!("all_x_embedder.2-1.{rest}")
        } else if let Some(rest) = name.strip_prefix("final_layer.") {
            format!("all_final_layer.2-1.{rest}")
        } else {
            name.replace(".attention.out.", ".attention.to_out.0.")
                .replace(".attention.q_norm.", ".attention.norm_q.")
                .replace(".attention.k_norm.", ".attention.norm_k.")
        };
        store.insert(renamed, slot);
    }
    store
}
