//! LoRA files as civitai and diffusers write them, read into per-module weight updates under
//! the diffusers/transformers module names the networks load with.
//!
//! - kohya / sd-scripts: `lora_unet_*`, `lora_te1_*`, `lora_te2_*` with `.lora_down.weight`
//!   [r, in(, kh, kw)], `.lora_up.weight` [out, r(, 1, 1)] and an optional `.alpha`. SDXL files
//!   name UNet modules in the LDM layout (`input_blocks_4_1_…`), some in diffusers' layout.
//! - diffusers / PEFT: `unet.`, `text_encoder.`, `text_encoder_2.` + module path +
//!   `.lora_A.weight` / `.lora_B.weight`.
//! - LyCORIS, under the kohya module names: LoHa (`hada_w1_a/b`, `hada_w2_a/b`, Tucker cores
//!   `hada_t1/t2`), ΔW = (w1a @ w1b) ⊙ (w2a @ w2b); LoKr (`lokr_w1` or `lokr_w1_a/b`, `lokr_w2`
//!   or `lokr_w2_a/b`, core `lokr_t2`), ΔW = w1 ⊗ w2 (LyCORIS `functional/{loha,lokr}.py`,
//!   A1111 `extensions-builtin/Lora/network_{hada,lokr}.py`).
//!
//! Scale = alpha / rank, and a module without `.alpha` has scale 1 (alpha = rank): the sd-scripts,
//! LyCORIS and ComfyUI convention (kohya `networks/lora.py`, ComfyUI `weight_adapter/*.py`). The
//! rank is the low-rank factor's inner size; a LoKr whose factors are both whole has scale 1.
//! diffusers instead reuses the file's one alpha for modules without one (see the fixture
//! README). OpenCLIP-G's fused q/k/v need no row slicing here: `open_clip_store` already exposes
//! them as separate q/k/v projections.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::ldm::unet_name;
use super::store::transpose;
use super::{LoadedParam, SafetensorsFile, TensorSlot, TensorStore};
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

/// One factor of a module's update.
enum Factor {
    /// A tensor used as stored.
    Whole(TensorSlot),
    /// `a @ b`: a [m, r(, 1, 1)], b [r, n(, kh, kw)] → [m, n(, kh, kw)].
    Product { a: TensorSlot, b: TensorSlot },
    /// A Tucker (CP) conv factor, LyCORIS `make_weight_cp`: `einsum("ijkl,jr,ip->prkl", core, b,
    /// a)`; core [r, r, kh, kw], a [r, m], b [r, n] → [m, n, kh, kw].
    Tucker {
        core: TensorSlot,
        a: TensorSlot,
        b: TensorSlot,
    },
}

impl Factor {
    /// `<name>` whole, or `<name>_a` / `<name>_b` with the optional Tucker `core`.
    fn find(parts: &HashMap<&str, TensorSlot>, name: &str, core: &str) -> Option<Self> {
        if let Some(whole) = parts.get(name) {
            return Some(Factor::Whole(whole.clone()));
        }
        let a = parts.get(format!("{name}_a").as_str())?.clone();
        let b = parts.get(format!("{name}_b").as_str())?.clone();
        Some(match parts.get(core) {
            Some(core) => Factor::Tucker {
                core: core.clone(),
                a,
                b,
            },
            None => Factor::Product { a, b },
        })
    }

    /// The inner size of a decomposed factor.
    fn rank(&self) -> Option<usize> {
        match self {
            Factor::Whole(_) => None,
            Factor::Product { b, .. } | Factor::Tucker { b, .. } => Some(b.shape()[0]),
        }
    }

    /// The factor's values and shape.
    fn materialize(&self, module: &str) -> Result<(Vec<f32>, Vec<usize>), Error> {
        let mismatch = |what: &str| {
            Error::weights(format!(
                "LoRA module `{module}`: {what} factor shapes do not fit together"
            ))
        };
        match self {
            Factor::Whole(w) => Ok((w.to_f32()?, w.shape())),
            Factor::Product { a, b } => {
                let (a_shape, b_shape) = (a.shape(), b.shape());
                let (m, r) = (a_shape[0], b_shape[0]);
                let n: usize = b_shape[1..].iter().product();
                if a_shape.iter().product::<usize>() != m * r {
                    return Err(mismatch("low-rank"));
                }
                let mut shape = vec![m];
                shape.extend(&b_shape[1..]);
                Ok((matmul(&a.to_f32()?, &b.to_f32()?, m, r, n), shape))
            }
            Factor::Tucker { core, a, b } => {
                let (core_shape, a_shape, b_shape) = (core.shape(), a.shape(), b.shape());
                let [r1, r2, kh, kw] = core_shape[..] else {
                    return Err(mismatch("Tucker"));
                };
                let (m, n) = (a_shape[1], b_shape[1]);
                if a_shape != [r1, m] || b_shape != [r2, n] {
                    return Err(mismatch("Tucker"));
                }
                let (core, a, b) = (core.to_f32()?, a.to_f32()?, b.to_f32()?);
                let k = kh * kw;
                // core contracted with b over j: [r1, n, k], then with a over i: [m, n, k].
                let mut core_b = vec![0.0f32; r1 * n * k];
                for i in 0..r1 {
                    for j in 0..r2 {
                        let t = &core[(i * r2 + j) * k..(i * r2 + j + 1) * k];
                        for q in 0..n {
                            let bj = b[j * n + q];
                            let out = &mut core_b[(i * n + q) * k..(i * n + q + 1) * k];
                            out.iter_mut().zip(t).for_each(|(o, t)| *o += bj * t);
                        }
                    }
                }
                let a_t: Vec<f32> = (0..m * r1).map(|x| a[(x % r1) * m + x / r1]).collect();
                Ok((matmul(&a_t, &core_b, m, r1, n * k), vec![m, n, kh, kw]))
            }
        }
    }
}

/// [m, r] @ [r, n], row-major.
fn matmul(a: &[f32], b: &[f32], m: usize, r: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for (row, a_row) in out.chunks_mut(n).zip(a.chunks(r)) {
        for (x, b_row) in a_row.iter().zip(b.chunks(n)) {
            row.iter_mut().zip(b_row).for_each(|(o, b)| *o += x * b);
        }
    }
    out
}

/// The Kronecker product of two tensors, the shorter shape padded with trailing 1s
/// (`torch.kron` after LyCORIS unsqueezes a 2-D w1 for a conv w2).
fn kron(w1: &[f32], s1: &[usize], w2: &[f32], s2: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let dims = s1.len().max(s2.len());
    let pad = |s: &[usize]| -> Vec<usize> { (0..dims).map(|d| *s.get(d).unwrap_or(&1)).collect() };
    let (s1, s2) = (pad(s1), pad(s2));
    let shape: Vec<usize> = s1.iter().zip(&s2).map(|(a, b)| a * b).collect();
    let index = |s: &[usize], mut flat: usize| -> Vec<usize> {
        let mut idx = vec![0; dims];
        for d in (0..dims).rev() {
            idx[d] = flat % s[d];
            flat /= s[d];
        }
        idx
    };
    let mut out = vec![0.0f32; shape.iter().product()];
    let idx2: Vec<Vec<usize>> = (0..w2.len()).map(|j| index(&s2, j)).collect();
    for (i, x) in w1.iter().enumerate() {
        let idx1 = index(&s1, i);
        for (y, idx2) in w2.iter().zip(&idx2) {
            let flat = (0..dims).fold(0, |acc, d| acc * shape[d] + idx1[d] * s2[d] + idx2[d]);
            out[flat] = x * y;
        }
    }
    (out, shape)
}

/// How a module's update is built from its factors.
enum Update {
    /// LoRA: one low-rank product.
    LowRank(Factor),
    /// LoHa: the element-wise product of two factors.
    Hadamard(Factor, Factor),
    /// LoKr: the Kronecker product of two factors.
    Kronecker(Factor, Factor),
}

/// One module's weight update `ΔW = scale · update`.
pub struct LoraModule {
    pub component: LoraComponent,
    /// The patched module in diffusers/transformers naming (its `.weight` is the target).
    pub module: String,
    update: Update,
    pub scale: f32,
}

impl LoraModule {
    fn new(component: LoraComponent, module: String, update: Update, alpha: Option<f32>) -> Self {
        let rank = match &update {
            Update::LowRank(f) => f.rank(),
            Update::Hadamard(w1, _) => w1.rank(),
            Update::Kronecker(w1, w2) => w1.rank().or(w2.rank()),
        };
        let scale = match (alpha, rank) {
            (Some(alpha), Some(rank)) if alpha != 0.0 => alpha / rank as f32,
            _ => 1.0,
        };
        Self {
            component,
            module,
            update,
            scale,
        }
    }

    /// The rank of the update's low-rank factors (`None` for a LoKr of whole factors).
    pub fn rank(&self) -> Option<usize> {
        match &self.update {
            Update::LowRank(f) | Update::Hadamard(f, _) => f.rank(),
            Update::Kronecker(w1, w2) => w1.rank().or(w2.rank()),
        }
    }

    /// ΔW · `weight`, row-major in PyTorch's layout ([out, in] or [out, in, kh, kw]), with the
    /// shape its factors give: some formats store conv factors flattened ([out, in·kh·kw]), so
    /// only the element count and the rows are fixed; the caller reshapes to the target weight.
    pub fn delta(&self, weight: f32) -> Result<(Vec<f32>, Vec<usize>), Error> {
        let (mut delta, shape) = match &self.update {
            Update::LowRank(f) => f.materialize(&self.module)?,
            Update::Hadamard(w1, w2) => {
                let (mut d1, shape) = w1.materialize(&self.module)?;
                let (d2, _) = w2.materialize(&self.module)?;
                if d1.len() != d2.len() {
                    return Err(Error::weights(format!(
                        "LoHa module `{}`: its two factors differ in size",
                        self.module
                    )));
                }
                d1.iter_mut().zip(&d2).for_each(|(a, b)| *a *= b);
                (d1, shape)
            }
            Update::Kronecker(w1, w2) => {
                let (d1, s1) = w1.materialize(&self.module)?;
                let (d2, s2) = w2.materialize(&self.module)?;
                kron(&d1, &s1, &d2, &s2)
            }
        };
        let factor = self.scale * weight;
        delta.iter_mut().for_each(|d| *d *= factor);
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
        // The longest compound starting here (three pieces: `time_emb_proj`), else one piece.
        let len = (2..=3)
            .rev()
            .find(|&n| {
                i + n <= pieces.len() && COMPOUNDS.contains(&pieces[i..i + n].join("_").as_str())
            })
            .unwrap_or(1);
        parts.push(pieces[i..i + len].join("_"));
        i += len;
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

/// The component and diffusers module a kohya-named module (`lora_unet_…`) patches.
fn kohya_module(base: &str) -> Option<(LoraComponent, String)> {
    let (component, flat) = if let Some(rest) = base.strip_prefix("lora_unet_") {
        (LoraComponent::Unet, rest)
    } else if let Some(rest) = base.strip_prefix("lora_te1_") {
        (LoraComponent::TextEncoder, rest)
    } else if let Some(rest) = base.strip_prefix("lora_te2_") {
        (LoraComponent::TextEncoder2, rest)
    } else {
        return None;
    };
    let path = kohya_path(flat);
    let module = match component {
        LoraComponent::Unet => unet_module(&path)?,
        _ => text_module(&path),
    };
    Some((component, module))
}

/// A kohya-named module's update, from its tensors by suffix (`lora_down.weight`, `hada_w1_a`, …).
fn kohya_update(parts: &HashMap<&str, TensorSlot>) -> Result<Update, String> {
    for unsupported in ["dora_scale", "lora_mid.weight"] {
        if parts.contains_key(unsupported) {
            return Err(format!(
                "uses `{unsupported}`, which this build cannot apply"
            ));
        }
    }
    if let (Some(up), Some(down)) = (parts.get("lora_up.weight"), parts.get("lora_down.weight")) {
        return Ok(Update::LowRank(Factor::Product {
            a: up.clone(),
            b: down.clone(),
        }));
    }
    let pair = |w1: &str, t1: &str, w2: &str, t2: &str| {
        Factor::find(parts, w1, t1).zip(Factor::find(parts, w2, t2))
    };
    if let Some((w1, w2)) = pair("hada_w1", "hada_t1", "hada_w2", "hada_t2") {
        return Ok(Update::Hadamard(w1, w2));
    }
    if let Some((w1, w2)) = pair("lokr_w1", "lokr_t1", "lokr_w2", "lokr_t2") {
        return Ok(Update::Kronecker(w1, w2));
    }
    let mut found: Vec<&str> = parts.keys().copied().collect();
    found.sort_unstable();
    Err(format!(
        "has no complete LoRA, LoHa or LoKr factors (found {found:?})"
    ))
}

impl LoraFile {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = SafetensorsFile::open(path)?;
        let err = |what: String| Error::weights(format!("{}: {what}", path.display()));
        let store = TensorStore::from_file_prefix(&file, "");
        let alpha = |base: &str| -> Result<Option<f32>, Error> {
            match store.get(&format!("{base}.alpha")) {
                Some(a) => Ok(a.to_f32()?.first().copied()),
                None => Ok(None),
            }
        };
        // kohya and LyCORIS: `<prefix>_<module>.<suffix>`, grouped by module.
        let mut kohya: BTreeMap<&str, HashMap<&str, TensorSlot>> = BTreeMap::new();
        let mut modules = Vec::new();
        for name in store.names() {
            if let Some(base) = name.strip_suffix(".lora_A.weight") {
                // diffusers / PEFT: `<component>.<module>.lora_A.weight`
                let (prefix, module_path) = base.split_once('.').unwrap_or(("", base));
                let (component, module) = match prefix {
                    "unet" => (LoraComponent::Unet, module_path.to_owned()),
                    "text_encoder" => (LoraComponent::TextEncoder, text_module(module_path)),
                    "text_encoder_2" => (LoraComponent::TextEncoder2, text_module(module_path)),
                    _ => return Err(err(format!("unknown LoRA key `{name}`"))),
                };
                let up = store
                    .get(&format!("{base}.lora_B.weight"))
                    .ok_or_else(|| err(format!("`{base}` has no lora_B")))?;
                let update = Update::LowRank(Factor::Product {
                    a: up.clone(),
                    b: store.get(name).expect("listed").clone(),
                });
                modules.push(LoraModule::new(component, module, update, alpha(base)?));
            } else if let Some((base, suffix)) = name.split_once('.')
                && base.starts_with("lora_")
                && suffix != "alpha"
            {
                let slot = store.get(name).expect("listed").clone();
                kohya.entry(base).or_default().insert(suffix, slot);
            }
        }
        for (base, parts) in &kohya {
            let (component, module) = kohya_module(base)
                .ok_or_else(|| err(format!("no SDXL module for LoRA key `{base}`")))?;
            let update = kohya_update(parts).map_err(|why| err(format!("`{base}` {why}")))?;
            modules.push(LoraModule::new(component, module, update, alpha(base)?));
        }
        if modules.is_empty() {
            return Err(err("holds no LoRA modules this build can read".into()));
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
    /// names to its parameters (`TensorStore::loaded_params`).
    pub fn new(
        component: LoraComponent,
        loras: &[(&LoraFile, f32)],
        params: &HashMap<String, LoadedParam>,
    ) -> Result<Self, Error> {
        let mut deltas: HashMap<ParamId, (Vec<f32>, Vec<usize>)> = HashMap::new();
        for (file, weight) in loras {
            for module in file.modules.iter().filter(|m| m.component == component) {
                let name = format!("{}.weight", module.module);
                let target = params.get(&name).ok_or_else(|| {
                    Error::request(format!(
                        "the LoRA patches `{}` `{name}`, which this model does not have",
                        component.name()
                    ))
                })?;
                if target.fp8 {
                    return Err(Error::request(format!(
                        "`{}` `{name}` is stored in fp8 and kept so; LoRAs patch float \
                         weights (use a bf16 or fp16 checkpoint with LoRAs)",
                        component.name()
                    )));
                }
                let (delta, shape) = module.delta(*weight)?;
                if delta.len() != target.shape.iter().product::<usize>()
                    || shape[0] != target.shape[0]
                {
                    return Err(Error::request(format!(
                        "the LoRA's update of `{}` `{name}` is {shape:?}, the weight is {:?}",
                        component.name(),
                        target.shape
                    )));
                }
                match deltas.get_mut(&target.id) {
                    Some((sum, _)) => sum.iter_mut().zip(&delta).for_each(|(s, d)| *s += d),
                    None => {
                        deltas.insert(target.id, (delta, target.shape.clone()));
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
        // Linear weights are held as dense [in, out] (see `Weights::linear`); deltas come as
        // PyTorch's [out, in].
        let data = match shape[..] {
            [rows, cols] => TensorData::new(transpose(delta, rows, cols), [cols, rows]),
            _ => TensorData::new(delta.clone(), shape.clone()),
        };
        let delta = Tensor::<B, D>::from_data(data, &tensor.device());
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
            kohya_path("down_blocks_1_resnets_0_time_emb_proj"),
            "down_blocks.1.resnets.0.time_emb_proj"
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
