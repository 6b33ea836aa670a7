//! The parity suite: each network and scheduler (`components`) and each pipeline end to end
//! (`sdxl_pipeline`, `sdxl_img2img`, `flux_pipeline`, `zimage_pipeline`, `flow_img2img`) against the reference code's runs on
//! the same tiny weights. One test binary, so it links once, and so a GPU lease carries one
//! file (`make gpu-bundle`). Runs on the CPU, on wgpu (`make test-wgpu`) or on CUDA, as
//! `common::B` says.

#[path = "../common/mod.rs"]
mod common;

mod components;
mod flow_img2img;
mod flux_pipeline;
mod safety_checker;
mod sdxl_img2img;
mod sdxl_pipeline;
mod zimage_pipeline;
