//! Building burn modules from a [`TensorStore`], in the manner of candle's `VarBuilder`:
//! a view with a name prefix (`.pp("down_blocks.0")`) that checks every shape it loads.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, GroupNorm, LayerNorm, LayerNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::store::transpose;
use super::{TensorSlot, TensorStore};
use crate::Error;
use crate::models::linear::{Fp8Matrix, Linear, LinearWeight};

#[derive(Clone)]
pub struct Weights<'a, B: Backend> {
    store: &'a TensorStore,
    prefix: String,
    device: B::Device,
}

impl<'a, B: Backend> Weights<'a, B> {
    pub fn new(store: &'a TensorStore, device: &B::Device) -> Self {
        Self {
            store,
            prefix: String::new(),
            device: device.clone(),
        }
    }

    /// A view one level down: `w.pp("mid_block").pp("resnets.0")`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            store: self.store,
            prefix,
            device: self.device.clone(),
        }
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.path(name))
    }

    /// Shape of a tensor under this view.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>, Error> {
        let path = self.path(name);
        self.store
            .shape(&path)
            .ok_or_else(|| Error::weights(format!("missing tensor `{path}`")))
    }

    /// A tensor of exactly `shape`. A 1×1 conv kernel `[o, i, 1, 1]` is accepted where a matrix
    /// `[o, i]` is asked for (the LDM VAE stores its attention projections that way).
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, Error> {
        let data = TensorData::new(self.slot(name, &shape)?.to_f32()?, shape);
        Ok(Tensor::from_data(data, &self.device))
    }

    /// The slot of `name`, checked to hold `shape`.
    fn slot(&self, name: &str, shape: &[usize]) -> Result<&'a TensorSlot, Error> {
        let path = self.path(name);
        let slot = self
            .store
            .get(&path)
            .ok_or_else(|| Error::weights(format!("missing tensor `{path}`")))?;
        let stored = slot.shape();
        let mut trimmed = stored.clone();
        while trimmed.len() > shape.len() && trimmed.last() == Some(&1) {
            trimmed.pop();
        }
        if trimmed != shape {
            return Err(Error::weights(format!(
                "tensor `{path}` has shape {stored:?}, expected {shape:?}"
            )));
        }
        Ok(slot)
    }

    /// A parameter for weight `name`, remembered by the store so LoRAs can patch it.
    fn param<const D: usize>(&self, tensor: Tensor<B, D>, name: &str) -> Param<Tensor<B, D>> {
        let param = Param::from_tensor(tensor);
        self.store.record_param(&self.path(name), param.id, false);
        param
    }

    /// PyTorch `nn.Linear` (`weight [out, in]`); burn computes with `[in, out]`. The weight is
    /// transposed here, on the host, so the device holds it dense: with burn's fusion on, a
    /// matmul reading a transposed view and adding a bias gave wrong rows on wgpu (issue #14).
    /// An fp8 weight stays fp8 (see `models::linear`).
    pub fn linear(
        &self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear<B>, Error> {
        let w = self.pp(name);
        let slot = w.slot("weight", &[d_out, d_in])?;
        let weight = match slot.fp8_codes() {
            Some((codes, values)) => {
                let codes = transpose(&codes, d_out, d_in);
                let matrix = Fp8Matrix::new(&codes, [d_in, d_out], values, &self.device);
                self.store
                    .record_param(&w.path("weight"), matrix.codes_id(), true);
                LinearWeight::Fp8(matrix)
            }
            None => {
                let data = TensorData::new(transpose(&slot.to_f32()?, d_out, d_in), [d_in, d_out]);
                LinearWeight::Float(w.param(Tensor::from_data(data, &self.device), "weight"))
            }
        };
        let bias = if bias {
            Some(Param::from_tensor(w.tensor("bias", [d_out])?))
        } else {
            None
        };
        Ok(Linear::new(weight, bias))
    }

    /// `nn.Linear` whose sizes are read from the stored weight, returning `(layer, d_in, d_out)`.
    pub fn linear_any(&self, name: &str, bias: bool) -> Result<(Linear<B>, usize, usize), Error> {
        let shape = self.pp(name).shape("weight")?;
        let (d_out, d_in) = (shape[0], shape[1]);
        Ok((self.linear(name, d_in, d_out, bias)?, d_in, d_out))
    }

    /// `nn.Conv2d` with a square kernel, given stride and symmetric padding.
    pub fn conv2d(
        &self,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Conv2d<B>, Error> {
        let w = self.pp(name);
        let weight = w.param(w.tensor("weight", [c_out, c_in, kernel, kernel])?, "weight");
        let bias = w.tensor("bias", [c_out])?;
        Ok(Conv2d {
            weight,
            bias: Some(Param::from_tensor(bias)),
            stride: [stride, stride],
            kernel_size: [kernel, kernel],
            dilation: [1, 1],
            groups: 1,
            padding: PaddingConfig2d::Explicit(padding, padding, padding, padding),
        })
    }

    pub fn group_norm(
        &self,
        name: &str,
        groups: usize,
        channels: usize,
        eps: f64,
    ) -> Result<GroupNorm<B>, Error> {
        if !channels.is_multiple_of(groups) {
            return Err(Error::weights(format!(
                "`{}`: {channels} channels do not split into {groups} groups (set norm_num_groups)",
                self.path(name)
            )));
        }
        let w = self.pp(name);
        Ok(GroupNorm {
            gamma: Some(Param::from_tensor(w.tensor("weight", [channels])?)),
            beta: Some(Param::from_tensor(w.tensor("bias", [channels])?)),
            num_groups: groups,
            num_channels: channels,
            epsilon: eps,
            affine: true,
        })
    }

    pub fn layer_norm(&self, name: &str, dim: usize, eps: f64) -> Result<LayerNorm<B>, Error> {
        let w = self.pp(name);
        let mut norm = LayerNormConfig::new(dim)
            .with_epsilon(eps)
            .init(&self.device);
        norm.gamma = Param::from_tensor(w.tensor("weight", [dim])?);
        norm.beta = Some(Param::from_tensor(w.tensor("bias", [dim])?));
        Ok(norm)
    }

    pub fn embedding(&self, name: &str, count: usize, dim: usize) -> Result<Embedding<B>, Error> {
        Ok(Embedding {
            weight: Param::from_tensor(self.pp(name).tensor("weight", [count, dim])?),
        })
    }
}
