"""The official `openai` SDK (PyPI) against a running `hanga serve`, with strict response
validation: every response must parse into the SDK's own types.

    python openai_check.py <port> <init.png>

Checks models.list, images.generate with n=2 as b64_json, as url (fetched back), as JPEG, as
a stream with partial images, images.edit on the image file (one, a list of one, streamed),
and the SDK's exceptions for bad values. Prints one line per check; exits non-zero on the first
failure.
"""

import base64
import io
import sys
import urllib.request

import openai
from PIL import Image

port, init = sys.argv[1], sys.argv[2]
client = openai.OpenAI(
    base_url=f"http://127.0.0.1:{port}/v1",
    api_key="sk-any",  # an open loopback server takes any key, as the SDK always sends one
    _strict_response_validation=True,
    max_retries=0,
)

models = client.models.list()
ids = [m.id for m in models.data]
assert "sdxl-tiny-demo" in ids, ids
assert all(m.object == "model" and m.owned_by == "hanga" for m in models.data)
print("models.list:", ids)

result = client.images.generate(
    model="sdxl-tiny-demo", prompt="a red fox in the snow", n=2, size="64x64",
    response_format="b64_json", quality="low",
)
assert isinstance(result.created, int)
assert len(result.data) == 2, result
for image in result.data:
    decoded = Image.open(io.BytesIO(base64.b64decode(image.b64_json)))
    assert decoded.format == "PNG" and decoded.size == (64, 64), (decoded.format, decoded.size)
    assert image.revised_prompt == "a red fox in the snow", image.revised_prompt
    assert image.url is None
first, second = (base64.b64decode(i.b64_json) for i in result.data)
assert first != second, "two images of one request are made from two seeds"
print("images.generate n=2 b64_json: 2 PNGs 64x64")

# OpenAI's own model names mean the default model; the URL is this server's gallery.
result = client.images.generate(
    model="dall-e-3", prompt="a lighthouse", size="64x64", response_format="url",
)
url = result.data[0].url
assert url.startswith(f"http://127.0.0.1:{port}/api/images/"), url
with urllib.request.urlopen(urllib.request.Request(url)) as response:
    assert response.headers["Content-Type"].startswith("image/png"), response.headers
    assert Image.open(io.BytesIO(response.read())).size == (64, 64)
print("images.generate url:", url)

result = client.images.generate(prompt="a lighthouse", size="64x64", output_format="jpeg")
decoded = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
assert decoded.format == "JPEG" and result.output_format == "jpeg", decoded.format
print("images.generate output_format=jpeg: JPEG")

# Streaming: partial images from the latent previews, then the image.
stream = client.images.generate(
    prompt="a fox", size="64x64", stream=True, partial_images=2, quality="high",
)
events = list(stream)
partials = [e for e in events if e.type == "image_generation.partial_image"]
completed = [e for e in events if e.type == "image_generation.completed"]
assert 1 <= len(partials) <= 2, [e.type for e in events]
assert [p.partial_image_index for p in partials] == list(range(len(partials)))
for partial in partials:
    assert Image.open(io.BytesIO(base64.b64decode(partial.b64_json))).format == "JPEG"
assert len(completed) == 1 and events[-1] is completed[0], [e.type for e in events]
final = Image.open(io.BytesIO(base64.b64decode(completed[0].b64_json)))
assert final.format == "PNG" and final.size == (64, 64), (final.format, final.size)
assert completed[0].usage.total_tokens == 0 and completed[0].quality == "high"
print(f"images.generate stream: {len(partials)} partial image(s), then the PNG")

# Edits: image to image from the file, at its own size unless `size` says.
with open(init, "rb") as image:
    result = client.images.edit(image=image, prompt="a cat on a sofa", n=2)
assert len(result.data) == 2, result
sizes = [Image.open(io.BytesIO(base64.b64decode(i.b64_json))).size for i in result.data]
assert sizes == [(64, 64), (64, 64)], sizes
print("images.edit n=2: 2 PNGs at the image's size")

# A list of images goes as `image[]`; `strength` is hanga's own field.
with open(init, "rb") as image:
    result = client.images.edit(
        image=[image], prompt="a dog on a sofa", size="96x64", extra_body={"strength": 0.6},
    )
assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (96, 64)
print("images.edit image[] with strength 0.6 at 96x64")

with open(init, "rb") as image:
    stream = client.images.edit(
        image=image, prompt="a cat", stream=True, partial_images=1, extra_body={"strength": 1.0},
    )
    events = list(stream)
kinds = [e.type for e in events]
assert kinds[-1] == "image_edit.completed" and kinds.count("image_edit.completed") == 1, kinds
assert set(kinds) <= {"image_edit.partial_image", "image_edit.completed"}, kinds
assert Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json))).size == (64, 64)
print("images.edit stream:", kinds)

with open(init, "rb") as image:
    for kwargs, param in [
        ({"image": image, "mask": image}, "mask"),
        ({"image": [image, image]}, "image"),
        ({"image": image, "input_fidelity": "medium"}, "input_fidelity"),
        ({"image": image, "extra_body": {"strength": 1.5}}, "strength"),
    ]:
        image.seek(0)
        try:
            client.images.edit(prompt="x", **kwargs)
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.param == param, (param, e.param, e.body)
            print(f"images.edit {param}: BadRequestError")
        else:
            raise AssertionError(f"images.edit with a bad {param} was accepted")

for kwargs, param, code in [
    ({"size": "13x13"}, "size", None),
    ({"size": "huge"}, "size", "invalid_value"),
    ({"quality": "ultra"}, "quality", "invalid_value"),
    ({"model": "nope"}, "model", "model_not_found"),
    ({"n": 9}, "n", None),
    ({"stream": True, "partial_images": 4}, "partial_images", "invalid_value"),
]:
    try:
        client.images.generate(prompt="x", **kwargs)
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param == param, (kwargs, e.param, e.body)
        assert e.type == "invalid_request_error", e.type
        assert code is None or e.code == code, (kwargs, e.code)
        print(f"{kwargs}: BadRequestError param={e.param} code={e.code}")
    else:
        raise AssertionError(f"{kwargs} was accepted")
print("openai SDK: all checks passed")
