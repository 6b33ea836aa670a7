//! Memory-mapped safetensors files and a name → tensor index over them.
//!
//! A [`TensorStore`] holds the tensors of one network (a UNet, a VAE, a text encoder) under
//! diffusers/transformers names, whatever layout they came from: the single-file layouts are
//! renamed on open (see `ldm.rs`), so network code asks for one set of names only. A slot may
//! stand for a row range of a fused tensor (OpenCLIP's `in_proj_weight` = [q; k; v]) or for a
//! transposed matrix (OpenCLIP's `text_projection`, stored as `x @ P`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::module::ParamId;

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::Error;

/// One safetensors file, mapped read-only.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    tensors: Vec<(String, TensorInfo)>,
    metadata: HashMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Range<usize>,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Arc<Self>, Error> {
        let file = File::open(path)
            .map_err(|e| Error::weights(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: the file is mapped read-only; a user replacing it while we run is outside what
        // any mmap-based loader (safetensors, diffusers, ComfyUI) protects against.
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::weights(format!("cannot map {}: {e}", path.display())))?;
        Self::from_mmap(path, mmap)
    }

    /// A safetensors file already in memory (`path` names it in messages).
    pub fn from_mmap(path: &Path, mmap: Mmap) -> Result<Arc<Self>, Error> {
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            Error::weights(format!("{} is not a safetensors file: {e}", path.display()))
        })?;
        let file_metadata = metadata.metadata().clone().unwrap_or_default();
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (start, end) = info.data_offsets;
                let info = TensorInfo {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    bytes: start..end,
                };
                (name, info)
            })
            .collect();
        Ok(Arc::new(Self {
            path: path.to_owned(),
            mmap,
            data_start: 8 + header_len,
            tensors,
            metadata: file_metadata,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The free-form `__metadata__` strings of the header.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Every tensor of the file, in no particular order.
    pub fn tensors(&self) -> &[(String, TensorInfo)] {
        &self.tensors
    }

    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[self.data_start + info.bytes.start..self.data_start + info.bytes.end]
    }
}

/// Where the values of one named tensor come from.
#[derive(Clone)]
pub struct TensorSlot {
    file: Arc<SafetensorsFile>,
    info: TensorInfo,
    /// Rows (along dim 0) of a fused tensor, in this order.
    rows: Option<Vec<Range<usize>>>,
    /// Stored as the transpose of what the name means (a 2-D tensor).
    transposed: bool,
    /// Multiplies every value ("scaled fp8" files store `weight / scale_weight`).
    scale: Option<f32>,
}

impl TensorSlot {
    pub fn new(file: Arc<SafetensorsFile>, info: TensorInfo) -> Self {
        Self {
            file,
            info,
            rows: None,
            transposed: false,
            scale: None,
        }
    }

    /// Rows `rows` of the stored tensor (one part of a fused tensor).
    pub fn rows(self, rows: Range<usize>) -> Self {
        self.row_blocks(vec![rows])
    }

    /// The stored rows in blocks, concatenated in the given order (e.g. halves swapped).
    pub fn row_blocks(mut self, blocks: Vec<Range<usize>>) -> Self {
        self.rows = Some(blocks);
        self
    }

    pub fn scaled(mut self, factor: f32) -> Self {
        self.scale = Some(factor);
        self
    }

    pub fn transposed(mut self) -> Self {
        self.transposed = true;
        self
    }

    /// Shape of the tensor this slot stands for.
    pub fn shape(&self) -> Vec<usize> {
        let mut shape = self.info.shape.clone();
        if let Some(blocks) = &self.rows {
            shape[0] = blocks.iter().map(|r| r.len()).sum();
        }
        if self.transposed {
            shape.reverse();
        }
        shape
    }

    pub fn is_float(&self) -> bool {
        matches!(
            self.info.dtype,
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F8_E4M3 | Dtype::F64
        )
    }

    /// The stored bytes of the rows this slot stands for, in its order.
    fn stored_bytes(&self) -> Cow<'_, [u8]> {
        let bytes = self.file.bytes(&self.info);
        let Some(blocks) = &self.rows else {
            return Cow::Borrowed(bytes);
        };
        let row_bytes =
            self.info.shape.iter().skip(1).product::<usize>() * self.info.dtype.bitsize() / 8;
        let mut out = Vec::new();
        for rows in blocks {
            out.extend_from_slice(&bytes[rows.start * row_bytes..rows.end * row_bytes]);
        }
        Cow::Owned(out)
    }

    /// An fp8 (e4m3fn) tensor as stored: its codes, row-major, and the value each of the 256
    /// codes stands for (times `scale_weight` in "scaled fp8" files). `None` for other dtypes
    /// and transposed slots.
    pub fn fp8_codes(&self) -> Option<(Vec<u8>, Vec<f32>)> {
        if self.info.dtype != Dtype::F8_E4M3 || self.transposed {
            return None;
        }
        let factor = self.scale.unwrap_or(1.0);
        let values = (0..=255u8).map(|c| f8_e4m3_to_f32(c) * factor).collect();
        Some((self.stored_bytes().into_owned(), values))
    }

    /// The values as f32, row-major, upcast from the stored dtype.
    pub fn to_f32(&self) -> Result<Vec<f32>, Error> {
        let mut values = decode_f32(self.info.dtype, &self.stored_bytes()).ok_or_else(|| {
            Error::weights(format!(
                "{}: tensor of dtype {:?} cannot be read as floats",
                self.file.path().display(),
                self.info.dtype
            ))
        })?;
        if let Some(factor) = self.scale {
            values.iter_mut().for_each(|v| *v *= factor);
        }
        if !self.transposed {
            return Ok(values);
        }
        let stored = self.shape();
        Ok(transpose(&values, stored[1], stored[0]))
    }
}

/// The transpose of a row-major `rows × cols` matrix, row-major (`cols × rows`).
pub fn transpose<T: Copy + Default>(values: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F8_E4M3 => bytes.iter().map(|&b| f8_e4m3_to_f32(b)).collect(),
        _ => return None,
    })
}

/// OCP FP8 E4M3 ("fn" variant used by torch.float8_e4m3fn): bias 7, no infinities,
/// S.1111.111 is NaN.
fn f8_e4m3_to_f32(byte: u8) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = ((byte >> 3) & 0x0f) as i32;
    let mantissa = (byte & 0x07) as f32;
    if exponent == 0x0f && byte & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exponent == 0 {
        sign * mantissa / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7)
    }
}

/// A loaded weight's burn parameter and its shape as stored (PyTorch layout: [out, in] for a
/// linear weight, which burn holds as [in, out]).
#[derive(Clone, Debug)]
pub struct LoadedParam {
    pub id: ParamId,
    pub shape: Vec<usize>,
    /// Kept in fp8 as stored (see `models::linear`): no float parameter to patch.
    pub fp8: bool,
}

/// The tensors of one network, by name. It also remembers which burn parameter each weight
/// became (see [`TensorStore::loaded_params`]), so that LoRA deltas can find them by name.
#[derive(Clone, Default)]
pub struct TensorStore {
    slots: HashMap<String, TensorSlot>,
    loaded: Arc<Mutex<HashMap<String, (ParamId, bool)>>>,
}

impl TensorStore {
    /// All float tensors of `file` whose name starts with `prefix`, with the prefix removed.
    /// Integer buffers (`position_ids`) are skipped. In "scaled fp8" files (ComfyUI), each
    /// `<m>.weight` is multiplied by its `<m>.scale_weight`, which is not listed itself.
    pub fn from_file_prefix(file: &Arc<SafetensorsFile>, prefix: &str) -> Self {
        let mut store = Self::default();
        let mut scales = Vec::new();
        for (name, info) in file.tensors() {
            if let Some(rest) = name.strip_prefix(prefix) {
                let slot = TensorSlot::new(file.clone(), info.clone());
                if let Some(module) = rest.strip_suffix(".scale_weight") {
                    scales.push((format!("{module}.weight"), slot));
                } else if slot.is_float() {
                    store.insert(rest.to_owned(), slot);
                }
            }
        }
        for (weight, scale) in scales {
            let factor = scale.to_f32().ok().and_then(|v| v.first().copied());
            if let (Some(slot), Some(factor)) = (store.slots.get_mut(&weight), factor) {
                *slot = slot.clone().scaled(factor);
            }
        }
        store
    }

    pub fn insert(&mut self, name: String, slot: TensorSlot) {
        self.slots.insert(name, slot);
    }

    pub fn extend(&mut self, other: TensorStore) {
        self.slots.extend(other.slots);
    }

    pub fn get(&self, name: &str) -> Option<&TensorSlot> {
        self.slots.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.slots.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    /// Shape of a named tensor, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.slots.get(name).map(TensorSlot::shape)
    }

    /// How many consecutive indices `prefix.{0,1,..}.` have at least one tensor.
    pub fn count_indexed(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                let p = format!("{prefix}.{i}.");
                self.names().any(|n| n.starts_with(&p))
            })
            .count()
    }

    /// Whether any tensor lives under `prefix.`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        let p = format!("{prefix}.");
        self.names().any(|n| n.starts_with(&p))
    }

    /// A store of the tensors under `prefix.`, with the prefix removed.
    pub fn sub(&self, prefix: &str) -> TensorStore {
        let p = format!("{prefix}.");
        let slots = self
            .slots
            .iter()
            .filter_map(|(n, s)| n.strip_prefix(&p).map(|rest| (rest.to_owned(), s.clone())))
            .collect();
        TensorStore {
            slots,
            loaded: Default::default(),
        }
    }

    /// Notes that weight `name` was loaded as parameter `id` (`fp8`: kept as stored).
    pub fn record_param(&self, name: &str, id: ParamId, fp8: bool) {
        self.loaded
            .lock()
            .expect("param ids lock")
            .insert(name.to_owned(), (id, fp8));
    }

    /// The parameter each loaded weight became, with its stored shape, by weight name
    /// (`….to_q.weight`).
    pub fn loaded_params(&self) -> HashMap<String, LoadedParam> {
        let loaded = self.loaded.lock().expect("param ids lock");
        loaded
            .iter()
            .filter_map(|(name, &(id, fp8))| {
                let shape = self.shape(name)?;
                Some((name.clone(), LoadedParam { id, shape, fp8 }))
            })
            .collect()
    }

    /// Every (name, tensor).
    pub fn into_slots(self) -> impl Iterator<Item = (String, TensorSlot)> {
        self.slots.into_iter()
    }

    /// The same tensors renamed by `rename` (names it maps to `None` are dropped).
    pub fn renamed(self, rename: impl Fn(&str) -> Option<String>) -> TensorStore {
        let slots = self
            .slots
            .into_iter()
            .filter_map(|(n, s)| rename(&n).map(|n| (n, s)))
            .collect();
        TensorStore {
            slots,
            loaded: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_e4m3_decodes_torch_values() {
        // torch.tensor([1.0, -2.0, 0.015625, 448.0]).to(torch.float8_e4m3fn).view(torch.uint8)
        assert_eq!(f8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(f8_e4m3_to_f32(0xc0), -2.0);
        assert_eq!(f8_e4m3_to_f32(0x08), 0.015625);
        assert_eq!(f8_e4m3_to_f32(0x7e), 448.0);
        assert!(f8_e4m3_to_f32(0x7f).is_nan());
        // Subnormal: 2^-9 is the smallest.
        assert_eq!(f8_e4m3_to_f32(0x01), 2f32.powi(-9));
    }

    /// A "scaled fp8" file (ComfyUI): `w.weight` in F8_E4M3 times `w.scale_weight`; and row
    /// blocks in a chosen order (how BFL's swapped adaLN halves are read).
    #[test]
    fn scaled_fp8_weights_and_row_blocks_read_as_meant() {
        use safetensors::{Dtype as D, tensor::TensorView};
        let path =
            std::env::temp_dir().join(format!("hanga-fp8-{}.safetensors", std::process::id()));
        let (weight, scale) = ([0x38u8, 0xc0, 0x40, 0x08], 0.5f32.to_le_bytes());
        let rows: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let tensors = [
            (
                "w.weight",
                TensorView::new(D::F8_E4M3, vec![2, 2], &weight).unwrap(),
            ),
            (
                "w.scale_weight",
                TensorView::new(D::F32, vec![], &scale).unwrap(),
            ),
            ("r", TensorView::new(D::F32, vec![4, 1], &rows).unwrap()),
        ];
        safetensors::serialize_to_file(tensors, None, &path).unwrap();
        let file = SafetensorsFile::open(&path).unwrap();
        let store = TensorStore::from_file_prefix(&file, "");
        std::fs::remove_file(&path).unwrap();
        assert!(!store.contains("w.scale_weight"));
        let w = store.get("w.weight").unwrap();
        assert_eq!(w.to_f32().unwrap(), [0.5, -1.0, 1.0, 0.0078125]);
        let swapped = store.get("r").unwrap().clone().row_blocks(vec![2..4, 0..2]);
        assert_eq!(swapped.shape(), [4, 1]);
        assert_eq!(swapped.to_f32().unwrap(), [3.0, 4.0, 1.0, 2.0]);
    }
}
