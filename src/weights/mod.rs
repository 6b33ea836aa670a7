//! Model files: safetensors mmap, renaming of the single-file layouts, module builders.

mod bfl;
mod detect;
mod ldm;
mod loader;
mod lora;
mod store;

pub use bfl::{bfl_prefix, flux_store};
pub use detect::describe;
pub use ldm::{open_clip_store, unet_store, vae_store};
pub use loader::Weights;
pub use lora::{LoraComponent, LoraFile, LoraModule, LoraPatch};
pub use store::{LoadedParam, SafetensorsFile, TensorInfo, TensorSlot, TensorStore};
