"""webuiapi (PyPI), the A1111 client, against a running `hanga serve`: the model list and
util_set_model, txt2img with A1111's sampler names, seeds and batches, `info` parsed, a LoRA
through `<lora:name:weight>` (its image saved for the caller to compare with the native API's),
img2img from an image file (its image saved for the caller to compare with diffusers'), and
A1111's 422 for bad values.

    python webuiapi_check.py <port> <lora name> <out.png> <init.png> <img2img out.png>

Prints one line per check; exits non-zero on the first failure.
"""

import sys

import webuiapi
from PIL import Image

port, lora, out, init, img2img_out = sys.argv[1:6]
api = webuiapi.WebUIApi(host="127.0.0.1", port=int(port))

titles = [m["title"] for m in api.get_sd_models()]
assert "sdxl-tiny-demo" in titles, titles
api.util_set_model("SDXL-tiny-demo")  # matched as webuiapi matches: lower-cased, closest title
assert api.util_get_current_model() == "sdxl-tiny-demo", api.util_get_current_model()
print("get_sd_models, util_set_model:", titles)

samplers = [s["name"] for s in api.get_samplers()]
assert "Euler a" in samplers and "DPM++ 2M" in samplers, samplers
assert [s["name"] for s in api.get_schedulers()] == ["automatic", "karras"]
assert lora in [l["name"] for l in api.get_loras()]
print("samplers:", samplers)

result = api.txt2img(
    prompt="a cat on a sofa", negative_prompt="blurry", seed=5, steps=4, cfg_scale=5.0,
    width=64, height=64, sampler_name="DPM++ 2M", scheduler="Karras", batch_size=2,
)
assert len(result.images) == 2 and all(i.size == (64, 64) for i in result.images)
info = result.info
assert info["seed"] == 5 and info["all_seeds"] == [5, 6], info
assert info["sampler_name"] == "DPM++ 2M" and info["scheduler"] == "karras", info
assert info["prompt"] == "a cat on a sofa" and info["negative_prompt"] == "blurry", info
assert "Steps: 4" in info["infotexts"][0] and "Seed: 5" in info["infotexts"][0], info["infotexts"]
assert result.parameters["seed"] == 5, result.parameters
print("txt2img batch 2:", info["infotexts"][0].replace("\n", " | "))

# -1: a random seed, reported in info.
result = api.txt2img(prompt="a cat", seed=-1, steps=2, width=64, height=64)
assert result.info["seed"] >= 0, result.info
print("txt2img seed -1 ->", result.info["seed"])

result = api.txt2img(
    prompt=f"a cat <lora:{lora}:0.8>", seed=7, steps=4, cfg_scale=5.0, width=64, height=64,
    sampler_name="Euler", scheduler="automatic",
)
assert result.info["prompt"] == "a cat", result.info
result.image.save(out)
print("txt2img with <lora:%s:0.8> saved to %s" % (lora, out))

# diffusers' img2img case `img2img_euler_64x64_s0.6_neg`, as an A1111 user sends it.
init_image = Image.open(init)
result = api.img2img(
    images=[init_image], prompt="a photo of a cat sitting on a red sofa",
    negative_prompt="blurry, low quality", denoising_strength=0.6, steps=4, cfg_scale=5.0,
    seed=0, sampler_name="Euler", scheduler="automatic", width=64, height=64,
)
assert result.image.size == (64, 64), result.image.size
assert result.info["denoising_strength"] == 0.6 and result.info["seed"] == 0, result.info
assert "Denoising strength: 0.6" in result.info["infotexts"][0], result.info["infotexts"]
assert result.parameters["init_images"] is None, "A1111 leaves the images out of parameters"
result.image.save(img2img_out)
print("img2img at denoising_strength 0.6 saved to", img2img_out)

def refused(call, field):
    """`call` must fail as A1111 refuses bad values: 422 naming `field`."""
    try:
        call()
    except RuntimeError as e:
        status, text = e.args
        assert status == 422 and f'"{field}"' in text, (field, status, text)
    else:
        raise AssertionError(f"a bad {field} was accepted")


for kwargs, field in [
    ({"images": [init_image], "mask_image": init_image}, "mask"),
    ({"images": []}, "init_images"),
    ({"images": [init_image], "denoising_strength": 1.5}, "denoising_strength"),
]:
    refused(lambda: api.img2img(prompt="x", steps=4, width=64, height=64, **kwargs), field)
    print(f"img2img {field}: 422")

for kwargs, field in [
    ({"width": 13}, "width"),
    ({"sampler_name": "LMS"}, "sampler_name"),
    ({"steps": 0}, "steps"),
]:
    refused(lambda: api.txt2img(prompt="x", **kwargs), field)
    print(f"{kwargs}: 422 at {field}")
print("webuiapi: all checks passed")
