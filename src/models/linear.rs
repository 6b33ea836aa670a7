//! PyTorch `nn.Linear` as the networks load it: the weight in the compute type, or, when the
//! file stores it in fp8, kept as stored (one byte per value) and widened at each use.
//!
//! Keeping fp8 weights as they are is ComfyUI's "manual cast" (`comfy/ops.py`,
//! `cast_bias_weight`: `weight.to(dtype)`, times `scale_weight` in "scaled fp8" files): it is
//! how a 12B Flux transformer fits beside its activations on a 24 GB card. Widening happens
//! one layer at a time, so only that layer's weight exists in the compute type at once.

use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use burn::tensor::module::linear;
use burn::tensor::{DType, ElementConversion, TensorData};

#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    weight: LinearWeight<B>,
    bias: Option<Param<Tensor<B, 1>>>,
}

#[derive(Module, Debug)]
pub enum LinearWeight<B: Backend> {
    /// [in, out] (burn's layout) in the compute type.
    Float(Param<Tensor<B, 2>>),
    Fp8(Fp8Matrix<B>),
}

/// An fp8 e4m3fn matrix in one byte per value: its codes [in, out], row-major, packed four
/// to an i32 word (lowest byte first). WGSL has no 8-bit integers (cubecl-wgpu 0.10 refuses
/// a u8 tensor in any kernel), and every backend has i32 and its bitwise ops.
#[derive(Module, Debug)]
pub struct Fp8Matrix<B: Backend> {
    packed: Param<Tensor<B, 1, Int>>,
    shape: [usize; 2],
    /// The value of each of the 256 codes, times the file's `scale_weight`, in the compute
    /// type: widening is one lookup.
    values: Param<Tensor<B, 1>>,
}

impl<B: Backend> Fp8Matrix<B> {
    /// `codes` row-major [in, out]; `values`: what each code stands for (already scaled).
    pub fn new(codes: &[u8], shape: [usize; 2], values: Vec<f32>, device: &B::Device) -> Self {
        let words: Vec<i32> = codes
            .chunks(4)
            .map(|bytes| {
                let mut word = [0u8; 4];
                word[..bytes.len()].copy_from_slice(bytes);
                i32::from_le_bytes(word)
            })
            .collect();
        let len = words.len();
        Self {
            packed: Param::initialized(
                ParamId::new(),
                Tensor::from_data(TensorData::new(words, [len]), (device, DType::I32)),
            ),
            shape,
            values: Param::from_tensor(Tensor::from_data(TensorData::new(values, [256]), device)),
        }
    }

    pub fn codes_id(&self) -> ParamId {
        self.packed.id
    }

    /// The matrix in the compute type, [in, out].
    fn widen(&self) -> Tensor<B, 2> {
        let packed = self.packed.val();
        let words = packed.dims()[0];
        // Byte k of every word, then the bytes of each word side by side: [words, 4].
        let bytes = (0..4)
            .map(|k| {
                packed
                    .clone()
                    .bitwise_right_shift_scalar((8 * k).elem())
                    .bitwise_and_scalar(0xff.elem())
            })
            .collect();
        let [rows, cols] = self.shape;
        let codes = Tensor::<B, 1, Int>::stack::<2>(bytes, 1)
            .reshape([words * 4])
            .slice(0..rows * cols);
        self.values.val().select(0, codes).reshape([rows, cols])
    }
}

impl<B: Backend> Linear<B> {
    pub fn new(weight: LinearWeight<B>, bias: Option<Param<Tensor<B, 1>>>) -> Self {
        Self { weight, bias }
    }

    /// x: [..., in] → [..., out].
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let weight = match &self.weight {
            LinearWeight::Float(w) => w.val(),
            LinearWeight::Fp8(w) => w.widen(),
        };
        linear(x, weight, self.bias.as_ref().map(Param::val))
    }
}
