//! The graph executor: ComfyUI API-format prompts, validated against node definitions and run
//! on the runner thread over the pipelines' stages, with ComfyUI's numbers.

mod image;
pub mod ksampler;
pub mod models;

pub use image::{to_uint8, vae_output_to_image};
pub mod definitions;
pub mod execute;
pub mod folders;
pub mod nodes;
pub mod outputs;
mod resize;
pub mod validate;
