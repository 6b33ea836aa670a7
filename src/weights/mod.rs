//! Model files: safetensors mmap, renaming of the single-file layouts, module builders.

mod bfl;
mod detect;
mod ldm;
mod loader;
mod lora;
mod store;
mod zimage;

pub use bfl::{bfl_prefix, flux_store};
pub use detect::{FileKind, TransformerKind, describe, kind as file_kind};
pub use ldm::{open_clip_store, unet_store, vae_store};
pub use loader::Weights;
pub use lora::{LoraComponent, LoraFile, LoraModule, LoraPatch};
pub use store::{LoadedParam, SafetensorsFile, TensorInfo, TensorSlot, TensorStore};
pub use zimage::{zimage_prefix, zimage_store};
