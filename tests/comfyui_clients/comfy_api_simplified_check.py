"""comfy-api-simplified (PyPI) against a running `hanga serve`: queue_and_wait_images on a
recorded ComfyUI SDXL workflow, with a parameter changed through the wrapper as its README
shows, and the image compared with ComfyUI's own PNG.

    python comfy_api_simplified_check.py <comfyui port> <fixture case dir>

Exits non-zero (with the reason) when anything differs.
"""

import io
import json
import sys
from pathlib import Path

from PIL import Image, ImageChops
from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

port, case_dir = sys.argv[1], Path(sys.argv[2])
case = json.loads((case_dir / "case.json").read_text())

api = ComfyApiWrapper(f"http://127.0.0.1:{port}")
workflow_file = Path(sys.argv[3]) / "workflow_api.json"
workflow_file.write_text(json.dumps(case["workflow_api"]))
wf = ComfyWorkflowWrapper(str(workflow_file))
assert "KSampler" in wf.list_nodes(), wf.list_nodes()
# The recorded seed, set the way the package's README sets parameters.
wf.set_node_param("KSampler", "seed", case["settings"]["seed"])

results = api.queue_and_wait_images(wf, "Save Image")
assert len(results) == 1, f"expected one image, got {list(results)}"
(name, data), = results.items()
assert name.startswith("ComfyUI_") and name.endswith("_.png"), name

ours = Image.open(io.BytesIO(data)).convert("RGB")
theirs = Image.open(case_dir / "image.png").convert("RGB")
assert ours.size == theirs.size, (ours.size, theirs.size)
worst = max(high for _, high in ImageChops.difference(ours, theirs).getextrema())
assert worst <= 2, f"{name} differs from ComfyUI's image by {worst}/255"

queue = api.get_queue()
assert queue == {"queue_running": [], "queue_pending": []}, queue
print(f"comfy-api-simplified: {name} within {worst}/255 of ComfyUI's image")
