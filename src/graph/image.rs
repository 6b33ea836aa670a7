//! ComfyUI's IMAGE values: float RGB in [0, 1], channels last [B, H, W, 3].

use burn::prelude::*;

/// VAEDecode: the decoder's output [B, 3, H, W] → `clamp((x + 1) / 2, 0, 1)` as [B, H, W, 3].
pub fn vae_output_to_image<B: Backend>(decoded: Tensor<B, 4>) -> Tensor<B, 4> {
    ((decoded + 1.0) / 2.0)
        .clamp(0.0, 1.0)
        .permute([0, 2, 3, 1])
}

/// SaveImage's `np.clip(255. * v, 0, 255).astype(np.uint8)`: truncation, not rounding.
pub fn to_uint8(v: f32) -> u8 {
    (255.0 * v).clamp(0.0, 255.0) as u8
}
