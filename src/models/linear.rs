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
use burn::tensor::{DType, IntDType, TensorData};

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

/// An fp8 e4m3fn matrix as stored: codes [out, in] (PyTorch's layout), one byte each.
#[derive(Module, Debug)]
pub struct Fp8Matrix<B: Backend> {
    codes: Param<Tensor<B, 2, Int>>,
    /// The value of each of the 256 codes, times the file's `scale_weight`, in the compute
    /// type: widening is one lookup.
    values: Param<Tensor<B, 1>>,
}

impl<B: Backend> Fp8Matrix<B> {
    /// `codes` row-major [out, in]; `values`: what each code stands for (already scaled).
    pub fn new(codes: Vec<u8>, shape: [usize; 2], values: Vec<f32>, device: &B::Device) -> Self {
        Self {
            codes: Param::initialized(
                ParamId::new(),
                Tensor::from_data(TensorData::new(codes, shape), (device, DType::U8)),
            ),
            values: Param::from_tensor(Tensor::from_data(TensorData::new(values, [256]), device)),
        }
    }

    pub fn codes_id(&self) -> ParamId {
        self.codes.id
    }

    /// The matrix in the compute type, [in, out].
    fn widen(&self) -> Tensor<B, 2> {
        let codes = self.codes.val();
        let [rows, cols] = codes.dims();
        // Index with i32: every backend gathers with it (flex takes u8 as well).
        let indices = codes.reshape([rows * cols]).cast(IntDType::I32);
        self.values
            .val()
            .select(0, indices)
            .reshape([rows, cols])
            .transpose()
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
