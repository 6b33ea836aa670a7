//! LoRA files as civitai and diffusers write them, read into per-module low-rank deltas under
//! the diffusers/transformers module names the networks load with.
//!
//! - kohya / sd-scripts: `lora_unet_*`, `lora_te1_*`, `lora_te2_*` with `.lora_down.weight`
//!   [r, in(, kh, kw)], `.lora_up.weight` [out, r(, 1, 1)] and an optional `.alpha`. SDXL files
//!   name UNet modules in the LDM layout (`input_blocks_4_1_…`), some in diffusers' layout.
//! - diffusers / PEFT: `unet.`, `text_encoder.`, `text_encoder_2.` + module path +
//!   `.lora_A.weight` / `.lora_B.weight`.
//!
//! Scale = alpha / rank, and a module without `.alpha` uses alpha = rank: the sd-scripts and
//! ComfyUI convention (kohya `networks/lora.py`, ComfyUI `weight_adapter/lora.py`). diffusers
//! instead reuses the file's one alpha for such modules (see the fixture README). OpenCLIP-G's
//! fused q/k/v need no row slicing here: `open_clip_store` already exposes them as separate
//! q/k/v projections.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::ldm::unet_name;
use super::{SafetensorsFile, TensorSlot, TensorStore};
use crate::Error;

/// Which network a LoRA module patches (the diffusers pipeline component names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoraComponent {
    Unet,
    TextEncoder,
    TextEncoder2,
}

impl LoraComponent {
    pub fn name(self) -> &'static str {
        match self {
            LoraComponent::Unet => "unet",
            LoraComponent::TextEncoder => "text_encoder",
            LoraComponent::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// One low-rank update `ΔW = scale · up @ down`.
pub struct LoraModule {
    pub component: LoraComponent,
    /// The patched module in diffusers/transformers naming (its `.weight` is the target).
    pub module: String,
    up: TensorSlot,
    down: TensorSlot,
    pub scale: f32,
}

impl LoraModule {
    pub fn rank(&self) -> usize {
        self.down.shape()[0]
    }

    /// ΔW · `weight`, shaped like the target weight: [out, in] or [out, in, kh, kw].
    pub fn delta(&self, weight: f32) -> Result<(Vec<f32>, Vec<usize>), Error> {
        let (up_shape, down_shape) = (self.up.shape(), self.down.shape());
        let rank = down_shape[0];
        let out = up_shape[0];
        let inner: usize = down_shape[1..].iter().product();
        if up_shape.iter().skip(1).product::<usize>() != rank {
            return Err(Error::weights(format!(
                "LoRA module `{}`: up {up_shape:?} does not match down {down_shape:?}",
                self.module
            )));
        }
        let (up, down) = (self.up.to_f32()?, self.down.to_f32()?);
        let factor = self.scale * weight;
        let mut delta = vec![0.0f32; out * inner];
        for o in 0..out {
            let row = &mut delta[o * inner..(o + 1) * inner];
            for r in 0..rank {
                let u = up[o * rank + r] * factor;
                for (d, x) in row.iter_mut().zip(&down[r * inner..(r + 1) * inner]) {
                    *d += u * x;
                }
            }
        }
        let mut shape = vec![out];
        shape.extend(&down_shape[1..]);
        Ok((delta, shape))
    }
}

pub struct LoraFile {
    pub modules: Vec<LoraModule>,
    /// The file's `__metadata__` (kohya writes `ss_*` training details there).
    pub metadata: HashMap<String, String>,
}

/// Word pieces that kohya's `.` → `_` flattening joined inside one module name.
const COMPOUNDS: [&str; 33] = [
    "input_blocks",
    "middle_block",
    "output_blocks",
    "transformer_blocks",
    "proj_in",
    "proj_out",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    "in_layers",
    "out_layers",
    "emb_layers",
    "skip_connection",
    "time_embed",
    "label_emb",
    "down_blocks",
    "up_blocks",
    "mid_block",
    "conv_shortcut",
    "time_emb_proj",
    "conv_in",
    "conv_out",
    "time_embedding",
    "add_embedding",
    "linear_1",
    "linear_2",
    "text_model",
    "self_attn",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
];

/// `input_blocks_4_1_transformer_blocks_0_attn1_to_q` → `input_blocks.4.1.transformer_blocks.0.attn1.to_q`
fn kohya_path(flat: &str) -> String {
    let pieces: Vec<&str> = flat.split('_').collect();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let joined = pieces
            .get(i + 1)
            .map(|next| format!("{}_{next}", pieces[i]));
        match joined.filter(|j| COMPOUNDS.contains(&j.as_str())) {
            Some(j) => {
                parts.push(j);
                i += 2;
            }
            None => {
                parts.push(pieces[i].to_owned());
                i += 1;
            }
        }
    }
    parts.join(".")
}

/// transformers 5 saves CLIP without `text_model.`; the networks load with it.
fn text_module(module: &str) -> String {
    if module.starts_with("text_model.") {
        module.to_owned()
    } else {
        format!("text_model.{module}")
    }
}

/// A kohya UNet module path in LDM naming → diffusers naming (paths already in diffusers naming
/// pass through). SDXL UNets have 2 resnets per level.
fn unet_module(path: &str) -> Option<String> {
    let ldm = [
        "input_blocks.",
        "middle_block.",
        "output_blocks.",
        "time_embed.",
        "label_emb.",
        "out.",
    ];
    if ldm.iter().any(|p| path.starts_with(p)) {
        unet_name(&format!("{path}.weight"), 2).map(|n| n.trim_end_matches(".weight").to_owned())
    } else {
        Some(path.to_owned())
    }
}

impl LoraFile {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = SafetensorsFile::open(path)?;
        // One index of the file's tensors, so that each module's up / alpha lookup is O(1).
        let store = TensorStore::from_file_prefix(&file, "");
        let slot = |name: &str| store.get(name).cloned();
        let mut modules = Vec::new();
        for (name, _) in file.tensors() {
            // kohya: `<prefix>_<module>.lora_down.weight`
            if let Some(base) = name.strip_suffix(".lora_down.weight") {
                let (component, flat) = if let Some(rest) = base.strip_prefix("lora_unet_") {
                    (LoraComponent::Unet, rest)
                } else if let Some(rest) = base.strip_prefix("lora_te1_") {
                    (LoraComponent::TextEncoder, rest)
                } else if let Some(rest) = base.strip_prefix("lora_te2_") {
                    (LoraComponent::TextEncoder2, rest)
                } else {
                    return Err(Error::weights(format!(
                        "{}: unknown LoRA key `{name}`",
                        path.display()
                    )));
                };
                let module_path = kohya_path(flat);
                let module = match component {
                    LoraComponent::Unet => unet_module(&module_path).ok_or_else(|| {
                        Error::weights(format!("{}: no UNet module for `{base}`", path.display()))
                    })?,
                    _ => text_module(&module_path),
                };
                let up = slot(&format!("{base}.lora_up.weight")).ok_or_else(|| {
                    Error::weights(format!("{}: `{base}` has no lora_up", path.display()))
                })?;
                let down = slot(name).expect("listed");
                let rank = down.shape()[0] as f32;
                let alpha = match slot(&format!("{base}.alpha")) {
                    Some(a) => a.to_f32()?.first().copied().unwrap_or(rank),
                    None => rank,
                };
                let alpha = if alpha == 0.0 { rank } else { alpha };
                modules.push(LoraModule {
                    component,
                    module,
                    up,
                    down,
                    scale: alpha / rank,
                });
            } else if let Some(base) = name.strip_suffix(".lora_A.weight") {
                // diffusers / PEFT: `<component>.<module>.lora_A.weight`
                let (prefix, module_path) = base.split_once('.').unwrap_or(("", base));
                let (component, module) = match prefix {
                    "unet" => (LoraComponent::Unet, module_path.to_owned()),
                    "text_encoder" => (LoraComponent::TextEncoder, text_module(module_path)),
                    "text_encoder_2" => (LoraComponent::TextEncoder2, text_module(module_path)),
                    _ => {
                        return Err(Error::weights(format!(
                            "{}: unknown LoRA key `{name}`",
                            path.display()
                        )));
                    }
                };
                let up = slot(&format!("{base}.lora_B.weight")).ok_or_else(|| {
                    Error::weights(format!("{}: `{base}` has no lora_B", path.display()))
                })?;
                let down = slot(name).expect("listed");
                let rank = down.shape()[0] as f32;
                let scale = match slot(&format!("{base}.alpha")) {
                    Some(a) => a.to_f32()?.first().copied().unwrap_or(rank) / rank,
                    None => 1.0,
                };
                modules.push(LoraModule {
                    component,
                    module,
                    up,
                    down,
                    scale,
                });
            }
        }
        if modules.is_empty() {
            return Err(Error::weights(format!(
                "{} holds no LoRA modules this build can read",
                path.display()
            )));
        }
        modules
            .sort_by(|a, b| (a.component.name(), &a.module).cmp(&(b.component.name(), &b.module)));
        Ok(Self {
            modules,
            metadata: file.metadata().clone(),
        })
    }
}

/// Summed LoRA deltas for one network, merged into its loaded parameters for a job and taken
/// off afterwards: the originals are kept and put back, so nothing of a LoRA outlives its job
/// and the base weights come back bit for bit.
pub struct LoraPatch<B: Backend> {
    deltas: HashMap<ParamId, (Vec<f32>, Vec<usize>)>,
    originals: HashMap<ParamId, Box<dyn Any + Send>>,
    _backend: PhantomData<B>,
}

impl<B: Backend> LoraPatch<B> {
    /// The deltas of `loras` (file, weight) for `component`; `params` maps the network's weight
    /// names to its parameters (`TensorStore::param_ids`).
    pub fn new(
        component: LoraComponent,
        loras: &[(&LoraFile, f32)],
        params: &HashMap<String, ParamId>,
    ) -> Result<Self, Error> {
        let mut deltas: HashMap<ParamId, (Vec<f32>, Vec<usize>)> = HashMap::new();
        for (file, weight) in loras {
            for module in file.modules.iter().filter(|m| m.component == component) {
                let name = format!("{}.weight", module.module);
                let id = params.get(&name).ok_or_else(|| {
                    Error::request(format!(
                        "the LoRA patches `{}` `{name}`, which this model does not have",
                        component.name()
                    ))
                })?;
                let (delta, shape) = module.delta(*weight)?;
                match deltas.get_mut(id) {
                    Some((sum, existing)) if *existing == shape => {
                        sum.iter_mut().zip(&delta).for_each(|(s, d)| *s += d)
                    }
                    Some(_) => {
                        return Err(Error::request(format!(
                            "LoRAs disagree on the shape of `{name}`"
                        )));
                    }
                    None => {
                        deltas.insert(*id, (delta, shape));
                    }
                }
            }
        }
        Ok(Self {
            deltas,
            originals: HashMap::new(),
            _backend: PhantomData,
        })
    }

    /// `module` with every delta added (W + ΔW).
    pub fn apply<M: Module<B>>(&mut self, module: M) -> M {
        module.map(&mut Apply(self))
    }

    /// `module` with the original parameters back.
    pub fn restore<M: Module<B>>(&mut self, module: M) -> M {
        module.map(&mut Restore(self))
    }
}

struct Apply<'a, B: Backend>(&'a mut LoraPatch<B>);

impl<B: Backend> ModuleMapper<B> for Apply<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some((delta, shape)) = self.0.deltas.get(&param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let delta = Tensor::<B, D>::from_data(
            TensorData::new(delta.clone(), shape.clone()),
            &tensor.device(),
        );
        // Linear weights are kept as [in, out] (burn's layout); deltas come as PyTorch's [out, in].
        let delta = if D == 2 { delta.transpose() } else { delta };
        self.0.originals.insert(id, Box::new(tensor.clone()));
        Param::from_mapped_value(id, tensor + delta, mapper)
    }
}

struct Restore<'a, B: Backend>(&'a mut LoraPatch<B>);

impl<B: Backend> ModuleMapper<B> for Restore<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(original) = self.0.originals.remove(&param.id) else {
            return param;
        };
        let (id, _, mapper) = param.consume();
        let original = *original
            .downcast::<Tensor<B, D>>()
            .expect("the tensor this patch replaced");
        Param::from_mapped_value(id, original, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kohya_names_become_module_paths() {
        assert_eq!(
            unet_module(&kohya_path(
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q"
            ))
            .unwrap(),
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
        );
        assert_eq!(
            unet_module(&kohya_path(
                "output_blocks_5_1_transformer_blocks_1_ff_net_0_proj"
            ))
            .unwrap(),
            "up_blocks.1.attentions.2.transformer_blocks.1.ff.net.0.proj"
        );
        assert_eq!(
            unet_module(&kohya_path("middle_block_1_proj_in")).unwrap(),
            "mid_block.attentions.0.proj_in"
        );
        assert_eq!(
            unet_module(&kohya_path("input_blocks_1_0_in_layers_2")).unwrap(),
            "down_blocks.0.resnets.0.conv1"
        );
        assert_eq!(
            text_module(&kohya_path("text_model_encoder_layers_0_self_attn_k_proj")),
            "text_model.encoder.layers.0.self_attn.k_proj"
        );
    }
}
