"""Every analysis script runs both as ``python -m analysis.NAME`` and by path, ``python analysis/NAME.py``, from any
working directory, with no ``PYTHONPATH``: the path bootstrap (``analysis/_bootstrap.py``) is what makes the file form
work, so the subprocesses here run with ``PYTHONPATH`` removed from their environment."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analysis import decomposition
from maxsup.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD, SOURCE_CLASSES
from maxsup.data.transforms import transform_spec
from maxsup.models import arch_spec, create_model
from maxsup.training import atomic_save

REPO = Path(__file__).resolve().parents[1]
#: every analysis/*.py with a ``main``, found from the files so that a new script is covered without editing this list
SCRIPTS = sorted(p.stem for p in (REPO / "analysis").glob("*.py") if "\ndef main(" in p.read_text())


def _env() -> dict[str, str]:
    """This environment without PYTHONPATH (pytest's ``pythonpath`` does not reach subprocesses anyway), one thread."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def test_every_script_is_listed():
    """The discovery above finds the paper's scripts (a broken glob would make the parametrised tests vacuous)."""
    assert {"calibration", "collect", "decomposition", "extract", "feature_metrics", "gradcam", "linear_transfer",
            "logits", "projection", "robustness"} <= set(SCRIPTS)
    assert "common" not in SCRIPTS and "_bootstrap" not in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_by_path_from_another_folder(script, tmp_path):
    proc = _run([str(REPO / "analysis" / f"{script}.py"), "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {script}.py") and "--out" in proc.stdout, proc.stdout[:200]
    assert proc.stderr == ""


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # this file imports analysis.decomposition
def test_help_as_module(script, capsys, monkeypatch):
    """``python -m analysis.NAME --help``, run in this process by runpy as ``-m`` does (the file form above needs a
    fresh interpreter; this one does not, and saves a torch import per script)."""
    monkeypatch.setattr(sys, "argv", [f"analysis.{script}", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module(f"analysis.{script}", run_name="__main__", alter_sys=True)
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    assert out.out.startswith("usage: ") and "--out" in out.out, out.out[:200]


def test_help_by_path_from_the_root():
    proc = _run(["analysis/extract.py", "--help"], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "--checkpoint NAME=PATH" in proc.stdout


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained CIFAR-ResNet-10 (width 8, 1 channel, 5 classes) in the repository's checkpoint convention."""
    torch.manual_seed(0)
    arch = ("cifar_resnet10", {"width": 8, "in_chans": 1})
    model = create_model(arch[0], 5, **arch[1])
    spec = transform_spec(28, 1.0, mean=(FMNIST_MEAN,), std=(FMNIST_STD,), grayscale_to_rgb=False)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    atomic_save({"model": model.state_dict(), "arch": arch_spec(arch[0], 5, **arch[1]), "eval_transform": spec,
                 "args": {"loss": "ce"}, "epoch": 0}, path)
    return path


def test_decomposition_by_path_matches_the_module(tiny_checkpoint, tmp_path):
    """A real run by path from another folder writes the same numbers as the in-process ``main``."""
    common = ["--checkpoint", f"Tiny={tiny_checkpoint}", "--dataset", "fmnist",
              "--classes", ",".join(map(str, SOURCE_CLASSES)), "--max-per-class", "6", "--device", "cpu",
              "--no-progress"]
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = _run([str(REPO / "analysis" / "decomposition.py"), *common, "--out", "out"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    by_path = json.loads((work / "out" / "decomposition.json").read_text())
    torch.set_num_threads(1)
    in_process = decomposition.main([*common, "--out", str(tmp_path / "in_process")])
    assert by_path["rows"]["Tiny"]["n"] == 30  # 5 classes × 6
    assert by_path["rows"]["Tiny"] == pytest.approx(in_process["rows"]["Tiny"], rel=1e-6, abs=1e-9)
    assert (work / "out" / "decomposition.md").is_file()


def test_bad_input_by_path_is_one_error_line(tmp_path):
    proc = _run([str(REPO / "analysis" / "decomposition.py"), "--checkpoint", f"X={tmp_path / 'nope.pth'}",
                 "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint not found: {tmp_path / 'nope.pth'}"]
