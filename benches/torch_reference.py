"""PyTorch/diffusers timings of the configurations benches/denoise.rs measures.

Prints one JSON object {"<config>/<op>": seconds}. Configurations: the tiny test UNet/VAE
(tests/fixtures/components/*/config.json) and a "small" one with every width ×8
(64/128/256 channels). Exits with code 3 and a message if torch or diffusers is missing.
"""
import json, os, sys, time

try:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
except ImportError as e:
    print(f"skipped: {e}", file=sys.stderr)
    sys.exit(3)

torch.set_grad_enabled(False)
threads = int(os.environ.get("HANGA_BENCH_THREADS", "0"))
if threads:
    torch.set_num_threads(threads)
root = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "components")
unet_tiny = json.load(open(os.path.join(root, "sdxl_unet", "config.json")))
vae_tiny = json.load(open(os.path.join(root, "sdxl_vae", "config.json")))
SCALE = 8

def scaled_unet(cfg):
    cfg = dict(cfg)
    for k in ("block_out_channels",):
        cfg[k] = [c * SCALE for c in cfg[k]]
    for k in ("cross_attention_dim", "projection_class_embeddings_input_dim", "addition_time_embed_dim"):
        cfg[k] = cfg[k] * SCALE
    return cfg

def scaled_vae(cfg):
    cfg = dict(cfg)
    cfg["block_out_channels"] = [c * SCALE for c in cfg["block_out_channels"]]
    return cfg

def median_time(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]

LATENT, TOKENS = 32, 77
results = {}
for name, ucfg, vcfg, runs in (("tiny", unet_tiny, vae_tiny, 5), ("small", scaled_unet(unet_tiny), scaled_vae(vae_tiny), 3)):
    unet = UNet2DConditionModel.from_config({k: v for k, v in ucfg.items() if not k.startswith("_")}).eval()
    pooled = ucfg["projection_class_embeddings_input_dim"] - 6 * ucfg["addition_time_embed_dim"]
    sample = torch.randn(2, 4, LATENT, LATENT)
    ctx = torch.randn(2, TOKENS, ucfg["cross_attention_dim"])
    added = {"text_embeds": torch.randn(2, pooled), "time_ids": torch.tensor([[256.0, 256, 0, 0, 256, 256]] * 2)}
    t = torch.tensor([500.0, 500.0])
    results[f"{name}/unet_step"] = median_time(lambda: unet(sample, t, ctx, added_cond_kwargs=added), runs)
    vae = AutoencoderKL.from_config({k: v for k, v in vcfg.items() if not k.startswith("_")}).eval()
    z = torch.randn(1, 4, LATENT, LATENT)
    results[f"{name}/vae_decode"] = median_time(lambda: vae.decode(z), runs)
print(json.dumps(results))
