//! What leaves a run: PNG files with metadata, latent previews.

pub mod png;
pub mod preview;
