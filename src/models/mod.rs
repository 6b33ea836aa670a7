//! The networks, one file each, as burn modules with `load` + `forward`.

pub mod blocks;
pub mod chroma;
pub mod clip;
pub mod flux;
pub mod qwen3;
pub mod t5;
pub mod unet_sdxl;
pub mod vae;
pub mod zimage;
