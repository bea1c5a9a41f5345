"""Shared helpers for benchmarks: run a case in a fresh process and measure its peak RSS and wall time."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

_WRAPPER = r"""
import resource, subprocess, sys, time, json
t = time.perf_counter()
p = subprocess.run(sys.argv[1:])
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": p.returncode, "wall_s": wall, "peak_rss_bytes": ru.ru_maxrss * 1024,
                  "cpu_s": ru.ru_utime + ru.ru_stime}))
"""


def measure(cmd: list[str]) -> dict:
    """Run ``cmd`` in a fresh child of a fresh wrapper; return its wall time, peak RSS (bytes) and CPU time
    (user + system seconds of the child and its children: less sensitive than wall time to other load)."""
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True)
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    res = json.loads(line)
    if res.get("rc") != 0:
        raise RuntimeError(f"{cmd[:3]}... failed: {out.stderr[-2000:]}")
    return res


def machine() -> dict:
    import os

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path
