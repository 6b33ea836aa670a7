//! hanga: text-to-image generation (SDXL, Flux, Chroma, Z-Image) on burn, served over HTTP.
//!
//! - `weights/`: safetensors files, layout renaming, module builders.
//! - `models/`: one file per network (CLIP, SDXL UNet, VAE).
//! - `text/`: prompt emphasis and tokenization.
//! - `sampling/`: torch-compatible noise, schedules, samplers.
//! - `pipelines/`: tokenize → encode → sample → decode, per family.
//! - `registry/`: model manifests.
//! - `output/`: PNG with A1111 metadata, latent previews.
//! - `server/`: HTTP (where HTTP ends; the dashboard too); `queue/`: jobs, priorities, events;
//!   `runner.rs`: the thread that owns the device; `store/`: images and the sled index;
//!   `metrics.rs`: what /metrics reports.
//! - `auth/`: API keys (hashed in the data directory) and per-key rate limits.
//! - `chat/`: chat messages (Japanese, English) read as generation parameters, by rules.
//! - `bench/`: `hanga bench`, full-size networks with random weights, timed.

pub mod auth;
pub mod backend;
pub mod bench;
pub mod chat;
mod error;
pub mod graph;
pub mod metrics;
pub mod models;
pub mod output;
pub mod pipelines;
pub mod queue;
pub mod registry;
pub mod runner;
pub mod sampling;
pub mod server;
pub mod store;
pub mod templates;
pub mod text;
pub mod weights;

pub use error::Error;
