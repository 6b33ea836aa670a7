"""Schemathesis hooks for the hanga conformance run (loaded by run.sh via SCHEMATHESIS_HOOKS).

Two changes to *positive* cases only: `POST /api/generate` bodies are kept cheap to run on a
CPU, and image fields get a real image.

Images: whether a string is an image (base64 of a PNG, JPEG or WebP file) is something no schema
can state, so a generated `init_image` (`POST /api/generate`) or `init_images` item (`POST
/sdapi/v1/img2img`) would be refused as "not an image" and the case would never reach the
image-to-image run. Where such a field is present, the hook puts a real 64x64 PNG in it (the
img2img fixture's input), so the run is exercised; it adds no field and removes none.

Cost:
The server runs every accepted job on the real (demo) model, and a schema-valid body may ask for
2048x2048 px, 150 steps and 8 images: minutes of CPU per case, starving the server that is being
tested. For *positive* cases only, the hook lowers width / height / steps / num_images that the
server would accept anyway to cheap values that it also accepts. It never touches:

* negative cases (their violation must reach the server unchanged);
* values the server would reject (out of range, not a multiple of 8, not an integer): a
  schema-valid value that the server refuses must still show up as a `positive_data_acceptance`
  finding, so only values inside the server's own limits (src/server/validation.rs) are lowered.

So every request still asks the server something it must accept, just a smaller image.
"""

from __future__ import annotations

import base64
import pathlib

import schemathesis

# The img2img fixture's 64x64 input image, as base64.
IMAGE = base64.b64encode(
    (pathlib.Path(__file__).parents[1] / "fixtures/sdxl/img2img/init_64x64.png").read_bytes()
).decode()

# The server's limits (src/server/validation.rs: MIN_SIZE, MAX_SIZE, MAX_STEPS, MAX_IMAGES).
MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 64, 2048, 8
MAX_STEPS, MAX_IMAGES = 150, 8

# What a case may cost at most: the demo model's 256 px default, a few steps, two images.
CHEAP_SIZE, CHEAP_STEPS, CHEAP_IMAGES = 256, 4, 2


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _lower(body: dict, key: str, low: int, high: int, cheap: int, multiple: int = 1) -> None:
    value = body.get(key)
    if _is_int(value) and low <= value <= high and value % multiple == 0 and value > cheap:
        body[key] = cheap


def _real_images(path: str, body: dict) -> None:
    if path == "/api/generate" and isinstance(body.get("init_image"), str):
        body["init_image"] = IMAGE
    if path == "/sdapi/v1/img2img" and isinstance(body.get("init_images"), list):
        body["init_images"] = [
            f"data:image/png;base64,{IMAGE}" if isinstance(item, str) else item
            for item in body["init_images"]
        ]


def _cheapen(context, case):
    operation = context.operation
    if operation is None or operation.method.upper() != "POST":
        return case
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return case
    body = case.body
    _real_images(operation.path, body)
    if operation.path != "/api/generate":
        return case
    _lower(body, "width", MIN_SIZE, MAX_SIZE, CHEAP_SIZE, SIZE_MULTIPLE)
    _lower(body, "height", MIN_SIZE, MAX_SIZE, CHEAP_SIZE, SIZE_MULTIPLE)
    _lower(body, "steps", 1, MAX_STEPS, CHEAP_STEPS)
    _lower(body, "num_images", 1, MAX_IMAGES, CHEAP_IMAGES)
    return case


@schemathesis.hook
def map_case(context, case):
    """Coverage, fuzzing and stateful cases."""
    return _cheapen(context, case)


@schemathesis.hook
def before_add_examples(context, examples):
    """Examples-phase cases (built from the schema's examples and defaults; no map_case there)."""
    for case in examples:
        _cheapen(context, case)
