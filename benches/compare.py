#!/usr/bin/env python3
"""hanga beside diffusers on the same networks, sizes, dtype and device.

The cases (diffusers class, config, input sizes) come from `hanga bench --list`, so both sides
build the same networks. diffusers' side: the class `from_config` (random weights), in `--dtype`,
its default attention (PyTorch SDPA), under `torch.inference_mode()`, timed with CUDA events
(wall clock on a CPU) as the median of `--runs` after `--warmup`; peak memory is
`torch.cuda.max_memory_allocated()` per case. hanga's side runs `hanga bench` (or reads the JSON
it wrote, `--hanga-json`). One line per network: both times, diffusers/hanga (above 1: hanga is
faster), and both peaks.

  benches/compare.py --hanga target/release/hanga --device cuda --dtype bf16
"""

import argparse
import json
import subprocess
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hanga", default="target/release/hanga", help="the hanga binary")
    p.add_argument("--size", choices=["full", "small"], default="full")
    p.add_argument("--device", default="cuda", help="cuda or cpu (diffusers); hanga gets the same")
    p.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated case names (see `hanga bench --list`)")
    p.add_argument("--cases-json", help="what `hanga bench --list` wrote; then no hanga is needed for the cases")
    p.add_argument("--hanga-json", help="rows `hanga bench --json` already wrote; skips running it")
    p.add_argument("--diffusers-only", action="store_true", help="time diffusers alone (write them with --out)")
    p.add_argument("--diffusers-json", help="what an earlier --diffusers-only run wrote; skips diffusers")
    p.add_argument("--out", help="write both sides' rows and the ratios here as JSON")
    return p.parse_args()


def hanga_cases(args):
    if args.cases_json:
        with open(args.cases_json) as f:
            cases = json.load(f)
    else:
        out = subprocess.run([args.hanga, "bench", "--list", "--size", args.size],
                             check=True, capture_output=True, text=True)
        cases = json.loads(out.stdout)
    only = [n for n in args.only.split(",") if n]
    return [c for c in cases if not only or c["name"] in only]


def hanga_rows(args, cases):
    if args.hanga_json:
        with open(args.hanga_json) as f:
            return {r["name"]: r for r in json.load(f)["rows"]}
    path = "/tmp/hanga-bench-rows.json"
    cmd = [args.hanga, "bench", "--device", args.device, "--dtype", args.dtype, "--size", args.size,
           "--runs", str(args.runs), "--warmup", str(args.warmup), "--json", path,
           "--only", ",".join(c["name"] for c in cases)]
    subprocess.run(cmd, check=True)
    with open(path) as f:
        return {r["name"]: r for r in json.load(f)["rows"]}


def build(case, device, dtype):
    """The diffusers model and a function running one forward on fixed inputs."""
    import torch
    import diffusers

    cls = getattr(diffusers, case["class"])
    # Initialised where it runs: FLUX.1's 12B random weights take minutes on a CPU.
    with device:
        model = cls.from_config(case["config"])
    model = model.to(dtype=dtype).eval()
    latent = case["image"] // 8
    b, tokens = case["batch"], case["text_tokens"]
    randn = lambda *shape: torch.randn(*shape, device=device, dtype=dtype)
    cfg = case["config"]
    if case["network"] == "sdxl_unet":
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        sample, context = randn(b, 4, latent, latent), randn(b, tokens, cfg["cross_attention_dim"])
        side = float(case["image"])
        cond = {"text_embeds": randn(b, pooled),
                "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * b, device=device, dtype=dtype)}
        t = torch.full((b,), 500.0, device=device)
        return model, lambda: model(sample, t, encoder_hidden_states=context, added_cond_kwargs=cond).sample
    if case["network"] == "flux_transformer":
        rows = latent // 2
        img, txt = randn(1, rows * rows, cfg["in_channels"]), randn(1, tokens, cfg["joint_attention_dim"])
        pooled = randn(1, cfg["pooled_projection_dim"])
        ids = torch.zeros(rows, rows, 3, device=device)
        ids[..., 1] += torch.arange(rows, device=device)[:, None]
        ids[..., 2] += torch.arange(rows, device=device)[None, :]
        img_ids, txt_ids = ids.reshape(-1, 3), torch.zeros(tokens, 3, device=device)
        t, g = torch.ones(1, device=device, dtype=dtype), torch.full((1,), 3.5, device=device, dtype=dtype)
        return model, lambda: model(img, encoder_hidden_states=txt, pooled_projections=pooled, timestep=t,
                                    guidance=g, img_ids=img_ids, txt_ids=txt_ids).sample
    z = randn(1, cfg["latent_channels"], latent, latent)
    return model, lambda: model.decode(z).sample


def time_diffusers(case, args):
    import torch

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        model, forward = build(case, device, dtype)
        times = []
        for i in range(args.warmup + args.runs):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                forward()
                end.record()
                torch.cuda.synchronize()
                seconds = start.elapsed_time(end) / 1000.0
            else:
                t = time.perf_counter()
                forward()
                seconds = time.perf_counter() - t
            if i >= args.warmup:
                times.append(seconds)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    del model, forward
    times.sort()
    return {"median_s": times[len(times) // 2], "peak_bytes": peak, "weight_bytes": weights}


def main():
    args = parse_args()
    cases = hanga_cases(args)
    mib = lambda b: "-" if b is None else f"{b / 2**20:.0f}"
    print(f"{args.device}, {args.dtype}, size {args.size}, median of {args.runs} after {args.warmup} warm-up")
    if args.diffusers_json:
        with open(args.diffusers_json) as f:
            theirs = json.load(f)
    else:
        theirs = {}
        for case in cases:
            theirs[case["name"]] = time_diffusers(case, args)
            print(f"diffusers {case['name']:<22} {theirs[case['name']]['median_s']:.4f} s, "
                  f"peak {mib(theirs[case['name']]['peak_bytes'])} MiB", flush=True)
    if args.diffusers_only:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(theirs, f, indent=2)
        return
    ours = hanga_rows(args, cases)
    print(f"{'network':<22} {'hanga (s)':>10} {'diffusers (s)':>14} {'diffusers/hanga':>16} "
          f"{'hanga peak (MiB)':>17} {'diffusers peak (MiB)':>21}")
    report = []
    for case in cases:
        mine, other = ours[case["name"]], theirs[case["name"]]
        ratio = other["median_s"] / mine["median_s"]
        print(f"{case['name']:<22} {mine['median_s']:>10.4f} {other['median_s']:>14.4f} {ratio:>16.2f} "
              f"{mib(mine.get('peak_bytes')):>17} {mib(other['peak_bytes']):>21}", flush=True)
        report.append({"name": case["name"], "hanga": mine, "diffusers": other, "ratio": ratio})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
