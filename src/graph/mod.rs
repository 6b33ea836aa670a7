//! The graph executor: ComfyUI API-format prompts, validated against node definitions and run
//! on the runner thread over the pipelines' stages, with ComfyUI's numbers.

pub mod ksampler;
mod image;

pub use image::{to_uint8, vae_output_to_image};
pub mod definitions;
pub mod validate;
pub mod execute;
pub mod nodes;
pub mod outputs;
pub mod folders;
