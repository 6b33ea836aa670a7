//! The networks, one file each, as burn modules with `load` + `forward`.

pub mod blocks;
pub mod chroma;
pub mod clip;
pub mod flux;
pub mod linear;
pub mod qwen3;
pub mod safety_checker;
pub mod t5;
pub mod unet_sdxl;
pub mod vae;
pub mod zimage;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

/// Bytes a network's parameters take on its device, in the types they are held in (fp8
/// weights one byte each, see [`linear`]).
pub fn weight_bytes<B: Backend, M: Module<B>>(module: &M) -> u64 {
    struct Count(u64);
    fn bytes<B: Backend, const D: usize, K: burn::tensor::BasicOps<B>>(t: &Tensor<B, D, K>) -> u64 {
        (t.shape().num_elements() * t.dtype().size()) as u64
    }
    impl<B: Backend> ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0 += bytes(&param.val());
        }
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
            self.0 += bytes(&param.val());
        }
    }
    let mut count = Count(0);
    module.visit(&mut count);
    count.0
}
