//! What leaves a run: PNG files with metadata, latent previews, images hidden for NSFW.

pub mod nsfw_filter;
pub mod png;
pub mod preview;
