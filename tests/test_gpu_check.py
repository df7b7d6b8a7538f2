"""bench/gpu_check.py in its CPU mode (what CI and `make bench` run without CUDA): every part runs through the
trainers' real code paths on tiny sizes, the report has its structure, and one failing part does not stop the rest."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
PARTS = ("loss_op", "nonfinite", "resume", "torchrun", "deit", "common_resnet", "ffcv")


def _positive(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_cpu_mode_reports_every_part_and_an_injected_failure_does_not_stop_the_others(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out-dir", str(tmp_path),
                           "--inject-failure", "nonfinite", "--limit-scale", "4"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=1500,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # one part failed: the check fails
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("gpu-check ")]
    assert [ln.split(":")[0].split()[1] for ln in lines] == list(PARTS)  # one line per part, in order
    assert "gpu-check nonfinite: failed" in proc.stdout and "injected failure" in proc.stdout

    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").exists()  # nothing else written beside the report
    report = json.loads(files[0].read_text())
    assert report["device_type"] == "cpu" and report["passed"] is False and list(report["parts"]) == list(PARTS)
    parts = report["parts"]
    assert parts["nonfinite"]["status"] == "failed" and "injected failure" in parts["nonfinite"]["reason"]
    others = {k: v for k, v in parts.items() if k != "nonfinite"}
    assert all(v["status"] == "passed" for k, v in others.items() if k != "ffcv"), others
    assert parts["ffcv"]["status"] in ("passed", "skipped")  # skipped (with the reason) where ffcv is missing
    assert all(_positive(v["seconds"]) for v in parts.values())

    for shape in ("B64_K100", "B1024_K100"):
        op = parts["loss_op"][shape]
        assert _positive(op["maxsup_over_ce"]) and _positive(op["ls_over_ce"])
        assert all(_positive(us) for us in op["microseconds"].values())
    assert "skipped" in parts["loss_op"]["cuda_graphs"]
    for name in ("deit", "common_resnet", "ffcv"):
        if parts[name]["status"] != "passed":
            continue
        eager = parts[name]["eager"]
        assert _positive(eager["maxsup_over_ce"]) and _positive(eager["ls_over_ce"])
        assert sorted(eager["images_per_s"]) == ["ce", "ls", "maxsup"]
        assert all(_positive(v) for v in eager["images_per_s"].values())
        assert "skipped" in parts[name]["compiled"] and parts[name]["peak_memory_gib"] is None
    assert _positive(parts["deit"]["eager"]["engine_ce_over_bare"])
    assert parts["resume"]["bit_exact"] is True and parts["resume"]["max_abs_diff"] == 0.0
    assert parts["torchrun"]["backend"] == "gloo" and parts["torchrun"]["world_size"] == 1
    assert parts["torchrun"]["samples"] == 5 * 16  # 3 warm-up + 2 timed steps of 16 images
