//! The tensors (names and shapes, PyTorch layout) of a diffusers model built from its
//! `config.json`, as `model.state_dict()` lists them: what `hanga bench` fills with random
//! values so full-size networks can be timed without their files. Each function follows the
//! diffusers class's `__init__` (cited per function); `tests/bench.rs` checks each against the
//! tiny checkpoints diffusers wrote for the parity tests.

use serde::Deserialize;

use crate::Error;

/// (name, shape) in the order the modules are built.
pub type Shapes = Vec<(String, Vec<usize>)>;

#[derive(Default)]
struct Builder(Shapes);

impl Builder {
    fn push(&mut self, name: String, shape: Vec<usize>) {
        self.0.push((name, shape));
    }

    /// `nn.Linear(d_in, d_out, bias)`.
    fn linear(&mut self, name: &str, d_in: usize, d_out: usize, bias: bool) {
        self.push(format!("{name}.weight"), vec![d_out, d_in]);
        if bias {
            self.push(format!("{name}.bias"), vec![d_out]);
        }
    }

    /// `nn.Conv2d(c_in, c_out, kernel)` with a bias.
    fn conv(&mut self, name: &str, c_in: usize, c_out: usize, kernel: usize) {
        self.push(format!("{name}.weight"), vec![c_out, c_in, kernel, kernel]);
        self.push(format!("{name}.bias"), vec![c_out]);
    }

    /// `nn.GroupNorm` / `nn.LayerNorm` with affine weight and bias.
    fn norm(&mut self, name: &str, channels: usize) {
        self.push(format!("{name}.weight"), vec![channels]);
        self.push(format!("{name}.bias"), vec![channels]);
    }

    /// `RMSNorm` with a weight only.
    fn rms_norm(&mut self, name: &str, dim: usize) {
        self.push(format!("{name}.weight"), vec![dim]);
    }

    /// diffusers `ResnetBlock2D` (resnet.py); `temb`: the time-embedding width, if it has one.
    fn resnet(&mut self, name: &str, c_in: usize, c_out: usize, temb: Option<usize>) {
        self.norm(&format!("{name}.norm1"), c_in);
        self.conv(&format!("{name}.conv1"), c_in, c_out, 3);
        if let Some(temb) = temb {
            self.linear(&format!("{name}.time_emb_proj"), temb, c_out, true);
        }
        self.norm(&format!("{name}.norm2"), c_out);
        self.conv(&format!("{name}.conv2"), c_out, c_out, 3);
        if c_in != c_out {
            self.conv(&format!("{name}.conv_shortcut"), c_in, c_out, 1);
        }
    }

    /// diffusers `Transformer2DModel` with `use_linear_projection` (SDXL), `depth`
    /// `BasicTransformerBlock`s of self-attention, cross-attention to `context` and a GEGLU
    /// feed-forward (attention.py).
    fn spatial_transformer(&mut self, name: &str, dim: usize, depth: usize, context: usize) {
        self.norm(&format!("{name}.norm"), dim);
        self.linear(&format!("{name}.proj_in"), dim, dim, true);
        for i in 0..depth {
            let block = format!("{name}.transformer_blocks.{i}");
            for (attn, kv) in [("attn1", dim), ("attn2", context)] {
                self.linear(&format!("{block}.{attn}.to_q"), dim, dim, false);
                self.linear(&format!("{block}.{attn}.to_k"), kv, dim, false);
                self.linear(&format!("{block}.{attn}.to_v"), kv, dim, false);
                self.linear(&format!("{block}.{attn}.to_out.0"), dim, dim, true);
            }
            for norm in ["norm1", "norm2", "norm3"] {
                self.norm(&format!("{block}.{norm}"), dim);
            }
            self.linear(&format!("{block}.ff.net.0.proj"), dim, 8 * dim, true);
            self.linear(&format!("{block}.ff.net.2"), 4 * dim, dim, true);
        }
        self.linear(&format!("{name}.proj_out"), dim, dim, true);
    }
}

fn parse<T: for<'de> Deserialize<'de>>(config: &serde_json::Value, what: &str) -> Result<T, Error> {
    serde_json::from_value(config.clone()).map_err(|e| Error::config(format!("{what} config: {e}")))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PerLevel {
    One(usize),
    Each(Vec<usize>),
}

impl PerLevel {
    fn expand(&self, levels: usize) -> Vec<usize> {
        match self {
            PerLevel::One(n) => vec![*n; levels],
            PerLevel::Each(v) => v.clone(),
        }
    }
}

#[derive(Deserialize)]
struct UNetArch {
    in_channels: usize,
    out_channels: usize,
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    transformer_layers_per_block: PerLevel,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    cross_attention_dim: usize,
    projection_class_embeddings_input_dim: usize,
}

/// diffusers `UNet2DConditionModel` (unet_2d_condition.py) as SDXL configures it: linear
/// projections, "text_time" added conditioning, a cross-attention mid block.
pub fn sdxl_unet(config: &serde_json::Value) -> Result<Shapes, Error> {
    let a: UNetArch = parse(config, "UNet")?;
    let ch = &a.block_out_channels;
    let levels = ch.len();
    let temb = 4 * ch[0];
    let depth = a.transformer_layers_per_block.expand(levels);
    let mut b = Builder::default();
    b.conv("conv_in", a.in_channels, ch[0], 3);
    b.linear("time_embedding.linear_1", ch[0], temb, true);
    b.linear("time_embedding.linear_2", temb, temb, true);
    b.linear(
        "add_embedding.linear_1",
        a.projection_class_embeddings_input_dim,
        temb,
        true,
    );
    b.linear("add_embedding.linear_2", temb, temb, true);
    let mut c_out = ch[0];
    for (i, kind) in a.down_block_types.iter().enumerate() {
        let c_in = c_out;
        c_out = ch[i];
        for j in 0..a.layers_per_block {
            let resnet_in = if j == 0 { c_in } else { c_out };
            b.resnet(
                &format!("down_blocks.{i}.resnets.{j}"),
                resnet_in,
                c_out,
                Some(temb),
            );
            if kind.starts_with("CrossAttn") {
                let name = format!("down_blocks.{i}.attentions.{j}");
                b.spatial_transformer(&name, c_out, depth[i], a.cross_attention_dim);
            }
        }
        if i + 1 < levels {
            b.conv(
                &format!("down_blocks.{i}.downsamplers.0.conv"),
                c_out,
                c_out,
                3,
            );
        }
    }
    let top = ch[levels - 1];
    b.resnet("mid_block.resnets.0", top, top, Some(temb));
    b.spatial_transformer(
        "mid_block.attentions.0",
        top,
        depth[levels - 1],
        a.cross_attention_dim,
    );
    b.resnet("mid_block.resnets.1", top, top, Some(temb));
    // Up block i mirrors down level levels-1-i: its first resnet takes the previous block's
    // output, each takes one skip, and the last skip comes from the level below.
    let mut prev = top;
    for (i, kind) in a.up_block_types.iter().enumerate() {
        let level = levels - 1 - i;
        let out = ch[level];
        let skip_last = ch[level.saturating_sub(1)];
        for j in 0..=a.layers_per_block {
            let skip = if j == a.layers_per_block {
                skip_last
            } else {
                out
            };
            let resnet_in = if j == 0 { prev } else { out };
            b.resnet(
                &format!("up_blocks.{i}.resnets.{j}"),
                resnet_in + skip,
                out,
                Some(temb),
            );
            if kind.starts_with("CrossAttn") {
                let name = format!("up_blocks.{i}.attentions.{j}");
                b.spatial_transformer(&name, out, depth[level], a.cross_attention_dim);
            }
        }
        if i + 1 < levels {
            b.conv(&format!("up_blocks.{i}.upsamplers.0.conv"), out, out, 3);
        }
        prev = out;
    }
    b.norm("conv_norm_out", ch[0]);
    b.conv("conv_out", ch[0], a.out_channels, 3);
    Ok(b.0)
}

#[derive(Deserialize)]
struct FluxArch {
    in_channels: usize,
    num_layers: usize,
    num_single_layers: usize,
    attention_head_dim: usize,
    num_attention_heads: usize,
    joint_attention_dim: usize,
    pooled_projection_dim: usize,
    guidance_embeds: bool,
}

/// diffusers `FluxTransformer2DModel` (transformer_flux.py): `mlp_ratio` 4, patch size 1.
pub fn flux_transformer(config: &serde_json::Value) -> Result<Shapes, Error> {
    let a: FluxArch = parse(config, "Flux transformer")?;
    let d = a.num_attention_heads * a.attention_head_dim;
    let (head, mlp) = (a.attention_head_dim, 4 * d);
    let mut b = Builder::default();
    let embed = "time_text_embed";
    let mut embedders = vec![("timestep_embedder", 256)];
    if a.guidance_embeds {
        embedders.push(("guidance_embedder", 256));
    }
    embedders.push(("text_embedder", a.pooled_projection_dim));
    for (name, d_in) in embedders {
        b.linear(&format!("{embed}.{name}.linear_1"), d_in, d, true);
        b.linear(&format!("{embed}.{name}.linear_2"), d, d, true);
    }
    b.linear("context_embedder", a.joint_attention_dim, d, true);
    b.linear("x_embedder", a.in_channels, d, true);
    for i in 0..a.num_layers {
        let block = format!("transformer_blocks.{i}");
        b.linear(&format!("{block}.norm1.linear"), d, 6 * d, true);
        b.linear(&format!("{block}.norm1_context.linear"), d, 6 * d, true);
        for proj in [
            "to_q",
            "to_k",
            "to_v",
            "add_q_proj",
            "add_k_proj",
            "add_v_proj",
        ] {
            b.linear(&format!("{block}.attn.{proj}"), d, d, true);
        }
        for norm in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
            b.rms_norm(&format!("{block}.attn.{norm}"), head);
        }
        b.linear(&format!("{block}.attn.to_out.0"), d, d, true);
        b.linear(&format!("{block}.attn.to_add_out"), d, d, true);
        for ff in ["ff", "ff_context"] {
            b.linear(&format!("{block}.{ff}.net.0.proj"), d, mlp, true);
            b.linear(&format!("{block}.{ff}.net.2"), mlp, d, true);
        }
    }
    for i in 0..a.num_single_layers {
        let block = format!("single_transformer_blocks.{i}");
        b.linear(&format!("{block}.norm.linear"), d, 3 * d, true);
        b.linear(&format!("{block}.proj_mlp"), d, mlp, true);
        b.linear(&format!("{block}.proj_out"), d + mlp, d, true);
        for proj in ["to_q", "to_k", "to_v"] {
            b.linear(&format!("{block}.attn.{proj}"), d, d, true);
        }
        for norm in ["norm_q", "norm_k"] {
            b.rms_norm(&format!("{block}.attn.{norm}"), head);
        }
    }
    b.linear("norm_out.linear", d, 2 * d, true);
    b.linear("proj_out", d, a.in_channels, true);
    Ok(b.0)
}

#[derive(Deserialize)]
struct VaeArch {
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    latent_channels: usize,
    out_channels: usize,
    #[serde(default = "yes")]
    use_post_quant_conv: bool,
}

fn yes() -> bool {
    true
}

/// The decoder half of diffusers `AutoencoderKL` (autoencoder_kl.py, vae.py `Decoder`) and its
/// `post_quant_conv`: what a decode runs.
pub fn vae_decoder(config: &serde_json::Value) -> Result<Shapes, Error> {
    let a: VaeArch = parse(config, "VAE")?;
    let reversed: Vec<usize> = a.block_out_channels.iter().rev().copied().collect();
    let top = reversed[0];
    let mut b = Builder::default();
    if a.use_post_quant_conv {
        b.conv("post_quant_conv", a.latent_channels, a.latent_channels, 1);
    }
    b.conv("decoder.conv_in", a.latent_channels, top, 3);
    b.resnet("decoder.mid_block.resnets.0", top, top, None);
    let attn = "decoder.mid_block.attentions.0";
    b.norm(&format!("{attn}.group_norm"), top);
    for proj in ["to_q", "to_k", "to_v", "to_out.0"] {
        b.linear(&format!("{attn}.{proj}"), top, top, true);
    }
    b.resnet("decoder.mid_block.resnets.1", top, top, None);
    let mut prev = top;
    for (i, &out) in reversed.iter().enumerate() {
        for j in 0..=a.layers_per_block {
            let c_in = if j == 0 { prev } else { out };
            b.resnet(
                &format!("decoder.up_blocks.{i}.resnets.{j}"),
                c_in,
                out,
                None,
            );
        }
        if i + 1 < reversed.len() {
            b.conv(
                &format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                out,
                out,
                3,
            );
        }
        prev = out;
    }
    let bottom = a.block_out_channels[0];
    b.norm("decoder.conv_norm_out", bottom);
    b.conv("decoder.conv_out", bottom, a.out_channels, 3);
    Ok(b.0)
}
