#!/usr/bin/env python3
"""One job through a running `hanga serve`: submit it, follow its SSE stream to the end, fetch
the image and check it is a PNG of the asked size. Prints the events' times. Standard library
only, so it runs on any machine with Python.

  benches/gpu/serve_job.py --port 8000 --width 512 --height 512 --steps 8
"""

import argparse
import json
import struct
import sys
import time
import urllib.request


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the server to answer")
    args = p.parse_args()
    base = f"http://127.0.0.1:{args.port}"

    deadline = time.time() + args.wait
    while True:
        try:
            info = json.load(urllib.request.urlopen(f"{base}/api/info", timeout=5))
            break
        except OSError:
            if time.time() > deadline:
                sys.exit(f"no answer from {base} in {args.wait:.0f} s")
            time.sleep(0.5)
    print(f"server up: device {info.get('device')}, dtype {info.get('dtype')}")

    body = json.dumps({"prompt": "a lighthouse at dusk", "width": args.width, "height": args.height,
                       "steps": args.steps, "seed": 42}).encode()
    request = urllib.request.Request(f"{base}/api/generate", body, {"Content-Type": "application/json"})
    submitted = time.time()
    job = json.load(urllib.request.urlopen(request, timeout=30))["job_id"]
    last = None
    with urllib.request.urlopen(f"{base}/api/sse/{job}", timeout=600) as stream:
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if not line.startswith("data:"):
                continue
            last = json.loads(line[5:])
            step = f" step {last['step']}/{last['total_steps']}" if "step" in last else ""
            print(f"{time.time() - submitted:7.2f} s  {last['status']}{step}", flush=True)
            if last["status"] in ("completed", "failed", "cancelled"):
                break
    if not last or last["status"] != "completed":
        sys.exit(f"job ended as {last}")
    name = last["images"][0]
    png = urllib.request.urlopen(f"{base}/api/images/{name}", timeout=30).read()
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"{name} is not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    if (width, height) != (args.width, args.height):
        sys.exit(f"{name} is {width}x{height}, asked {args.width}x{args.height}")
    print(f"{name}: {width}x{height} PNG, {len(png)} bytes, {time.time() - submitted:.2f} s from submit")


if __name__ == "__main__":
    main()
