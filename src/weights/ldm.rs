//! Renaming the original single-file layouts (Stability's SGM/LDM checkpoints as civitai
//! distributes them) to diffusers/transformers names, so that every network loads one layout.
//!
//! The mappings follow diffusers `loaders/single_file_utils.py`
//! (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_open_clip_checkpoint`).

use std::sync::Arc;

use super::{SafetensorsFile, TensorSlot, TensorStore};

/// `model.diffusion_model.*` → diffusers `UNet2DConditionModel` names.
pub fn unet_store(file: &Arc<SafetensorsFile>, prefix: &str) -> TensorStore {
    let raw = TensorStore::from_file_prefix(file, prefix);
    // The first downsampler sits right after `layers_per_block` resnets: `input_blocks.{lpb+1}.0.op`.
    let layers_per_block = (1..16)
        .find(|i| raw.contains(&format!("input_blocks.{i}.0.op.weight")))
        .map_or(2, |i| i - 1);
    raw.renamed(|name| unet_name(name, layers_per_block))
}

pub(super) fn unet_name(name: &str, layers_per_block: usize) -> Option<String> {
    let per_level = layers_per_block + 1;
    let (head, rest) = name.split_once('.')?;
    let renamed = match head {
        "time_embed" => linear_pair(rest, "time_embedding")?,
        "label_emb" => linear_pair(rest.strip_prefix("0.")?, "add_embedding")?,
        "out" => {
            let (idx, param) = rest.split_once('.')?;
            match idx {
                "0" => format!("conv_norm_out.{param}"),
                "2" => format!("conv_out.{param}"),
                _ => return None,
            }
        }
        "input_blocks" => {
            let (i, rest) = split_index(rest)?;
            let (j, rest) = split_index(rest)?;
            if i == 0 {
                format!("conv_in.{rest}")
            } else {
                let (level, layer) = ((i - 1) / per_level, (i - 1) % per_level);
                if layer == layers_per_block {
                    format!(
                        "down_blocks.{level}.downsamplers.0.conv.{}",
                        rest.strip_prefix("op.")?
                    )
                } else if j == 0 {
                    format!("down_blocks.{level}.resnets.{layer}.{}", resnet_name(rest)?)
                } else {
                    format!("down_blocks.{level}.attentions.{layer}.{rest}")
                }
            }
        }
        "middle_block" => {
            let (j, rest) = split_index(rest)?;
            match j {
                0 => format!("mid_block.resnets.0.{}", resnet_name(rest)?),
                1 => format!("mid_block.attentions.0.{rest}"),
                2 => format!("mid_block.resnets.1.{}", resnet_name(rest)?),
                _ => return None,
            }
        }
        "output_blocks" => {
            let (i, rest) = split_index(rest)?;
            let (j, rest) = split_index(rest)?;
            let (level, layer) = (i / per_level, i % per_level);
            if j == 0 {
                format!("up_blocks.{level}.resnets.{layer}.{}", resnet_name(rest)?)
            } else if let Some(param) = rest.strip_prefix("conv.") {
                format!("up_blocks.{level}.upsamplers.0.conv.{param}")
            } else {
                format!("up_blocks.{level}.attentions.{layer}.{rest}")
            }
        }
        _ => return None,
    };
    Some(renamed)
}

/// `time_embed.0` / `time_embed.2` (Linear, SiLU, Linear) → `linear_1` / `linear_2`.
fn linear_pair(rest: &str, target: &str) -> Option<String> {
    let (idx, param) = rest.split_once('.')?;
    let layer = match idx {
        "0" => "linear_1",
        "2" => "linear_2",
        _ => return None,
    };
    Some(format!("{target}.{layer}.{param}"))
}

fn split_index(s: &str) -> Option<(usize, &str)> {
    let (idx, rest) = s.split_once('.')?;
    Some((idx.parse().ok()?, rest))
}

/// LDM `ResBlock` sub-modules → diffusers `ResnetBlock2D`.
fn resnet_name(rest: &str) -> Option<String> {
    const MAP: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    MAP.iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|p| format!("{to}{p}")))
}

/// LDM `AutoencoderKL` (`first_stage_model.*`, or BFL's `ae.safetensors` with no prefix) →
/// diffusers `AutoencoderKL` names. The decoder's `up.N` runs in reverse order of `up_blocks`.
pub fn vae_store(file: &Arc<SafetensorsFile>, prefix: &str) -> TensorStore {
    let raw = TensorStore::from_file_prefix(file, prefix);
    let levels = raw.count_indexed("decoder.up");
    raw.renamed(|name| vae_name(name, levels))
}

fn vae_name(name: &str, levels: usize) -> Option<String> {
    if name.starts_with("quant_conv.") || name.starts_with("post_quant_conv.") {
        return Some(name.to_owned());
    }
    let (part, rest) = name.split_once('.')?;
    if part != "encoder" && part != "decoder" {
        return None;
    }
    let inner = if let Some(rest) = rest.strip_prefix("down.") {
        let (n, rest) = split_index(rest)?;
        level_name("down_blocks", n, rest, "downsample.", "downsamplers")?
    } else if let Some(rest) = rest.strip_prefix("up.") {
        let (n, rest) = split_index(rest)?;
        level_name(
            "up_blocks",
            levels.checked_sub(n + 1)?,
            rest,
            "upsample.",
            "upsamplers",
        )?
    } else if let Some(rest) = rest.strip_prefix("mid.") {
        let (block, param) = rest.split_once('.')?;
        match block {
            "block_1" => format!("mid_block.resnets.0.{}", vae_resnet_name(param)),
            "block_2" => format!("mid_block.resnets.1.{}", vae_resnet_name(param)),
            "attn_1" => {
                let (layer, param) = param.split_once('.')?;
                let layer = match layer {
                    "norm" => "group_norm",
                    "q" => "to_q",
                    "k" => "to_k",
                    "v" => "to_v",
                    "proj_out" => "to_out.0",
                    _ => return None,
                };
                format!("mid_block.attentions.0.{layer}.{param}")
            }
            _ => return None,
        }
    } else if let Some(param) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{param}")
    } else {
        rest.to_owned()
    };
    Some(format!("{part}.{inner}"))
}

fn level_name(
    blocks: &str,
    level: usize,
    rest: &str,
    sampler: &str,
    samplers: &str,
) -> Option<String> {
    if let Some(rest) = rest.strip_prefix("block.") {
        let (m, param) = split_index(rest)?;
        Some(format!(
            "{blocks}.{level}.resnets.{m}.{}",
            vae_resnet_name(param)
        ))
    } else {
        let param = rest.strip_prefix(sampler)?;
        Some(format!("{blocks}.{level}.{samplers}.0.{param}"))
    }
}

fn vae_resnet_name(param: &str) -> String {
    match param.strip_prefix("nin_shortcut.") {
        Some(p) => format!("conv_shortcut.{p}"),
        None => param.to_owned(),
    }
}

/// OpenCLIP text tower (`conditioner.embedders.1.model.*`) → transformers
/// `CLIPTextModelWithProjection` names. The fused `attn.in_proj_weight` [3d, d] is split into
/// q, k, v rows; `text_projection` is stored for `x @ P`, i.e. transposed from `nn.Linear`.
pub fn open_clip_store(file: &Arc<SafetensorsFile>, prefix: &str) -> TensorStore {
    let mut store = TensorStore::default();
    for (name, info) in file.tensors() {
        let Some(name) = name.strip_prefix(prefix) else {
            continue;
        };
        let slot = TensorSlot::new(file.clone(), info.clone());
        if !slot.is_float() {
            continue;
        }
        if let Some(rest) = name.strip_prefix("transformer.resblocks.") {
            let Some((layer, param)) = split_index(rest) else {
                continue;
            };
            let base = format!("text_model.encoder.layers.{layer}");
            if let Some(kind) = param.strip_prefix("attn.in_proj_") {
                let d = info.shape[0] / 3;
                for (i, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    store.insert(
                        format!("{base}.self_attn.{proj}.{kind}"),
                        slot.clone().rows(i * d..(i + 1) * d),
                    );
                }
                continue;
            }
            const MAP: [(&str, &str); 5] = [
                ("ln_1.", "layer_norm1."),
                ("ln_2.", "layer_norm2."),
                ("attn.out_proj.", "self_attn.out_proj."),
                ("mlp.c_fc.", "mlp.fc1."),
                ("mlp.c_proj.", "mlp.fc2."),
            ];
            if let Some(n) = MAP
                .iter()
                .find_map(|(f, t)| param.strip_prefix(f).map(|p| format!("{base}.{t}{p}")))
            {
                store.insert(n, slot);
            }
            continue;
        }
        let renamed = match name {
            "token_embedding.weight" => "text_model.embeddings.token_embedding.weight".to_owned(),
            "positional_embedding" => "text_model.embeddings.position_embedding.weight".to_owned(),
            "text_projection" => {
                store.insert("text_projection.weight".to_owned(), slot.transposed());
                continue;
            }
            _ => match name.strip_prefix("ln_final.") {
                Some(p) => format!("text_model.final_layer_norm.{p}"),
                None => continue,
            },
        };
        store.insert(renamed, slot);
    }
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_names_follow_diffusers_converter() {
        let cases = [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.2.weight",
                "down_blocks.0.resnets.0.conv1.weight",
            ),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.5.1.transformer_blocks.0.attn1.to_q.weight",
                "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q.weight",
            ),
            (
                "middle_block.2.out_layers.3.weight",
                "mid_block.resnets.1.conv2.weight",
            ),
            (
                "middle_block.1.proj_in.weight",
                "mid_block.attentions.0.proj_in.weight",
            ),
            (
                "output_blocks.2.2.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.1.norm.bias",
                "up_blocks.1.attentions.2.norm.bias",
            ),
            (
                "output_blocks.8.0.emb_layers.1.weight",
                "up_blocks.2.resnets.2.time_emb_proj.weight",
            ),
            ("time_embed.2.weight", "time_embedding.linear_2.weight"),
            ("label_emb.0.0.bias", "add_embedding.linear_1.bias"),
            ("out.2.weight", "conv_out.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(unet_name(ldm, 2).as_deref(), Some(diffusers), "{ldm}");
        }
    }

    #[test]
    fn vae_names_follow_diffusers_converter() {
        let cases = [
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.2.downsample.conv.bias",
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
            ),
            (
                "decoder.up.3.block.2.conv1.weight",
                "decoder.up_blocks.0.resnets.2.conv1.weight",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            (
                "decoder.mid.attn_1.proj_out.weight",
                "decoder.mid_block.attentions.0.to_out.0.weight",
            ),
            (
                "encoder.mid.attn_1.norm.bias",
                "encoder.mid_block.attentions.0.group_norm.bias",
            ),
            ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
            ("decoder.conv_in.weight", "decoder.conv_in.weight"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(vae_name(ldm, 4).as_deref(), Some(diffusers), "{ldm}");
        }
    }
}
