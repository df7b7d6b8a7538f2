"""`make demo` at DEMO_SCALE=smoke: the whole pipeline (data tool, both trainers, every analysis script) on real
Fashion-MNIST, then checks on what a reader of results/demo relies on."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flat_import import load_flat
from PIL import Image

from maxsup import expected_calibration_error

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo" / "run_demo.py"
METRICS = ("acc", "nll", "ece", "d_within_train", "d_within_test", "r2_train", "r2_test", "transfer_acc")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SEEDS", "DEMO_SCALE", "DEMO_LOSSES", "DEMO_JOBS", "DEMO_AUG")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One smoke run shared by the tests below: (output folder, its stdout)."""
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, str(DEMO), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env=_env(DEMO_SCALE="smoke", SEEDS="1"), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
def test_summary_structure_and_finite_metrics(smoke):
    out, _ = smoke
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0]
    assert summary["config"]["scale"] == "smoke"
    assert set(summary["backbones"]) == {"resnet", "vit"}
    for bb, methods in summary["backbones"].items():
        assert list(methods) == ["ce", "ls", "maxsup"], bb
        for loss, stats in methods.items():
            for metric in METRICS:
                s = stats[metric]
                assert set(s) >= {"mean", "std"}, (bb, loss, metric)
                assert math.isfinite(s["mean"]), (bb, loss, metric, s)
                assert s["std"] is None and s["values"] == [s["mean"]]  # one seed: no spread to report
            assert 0 <= stats["acc"]["mean"] <= 100 and 0 <= stats["ece"]["mean"] <= 1
            assert 0 < stats["transfer_acc"]["mean"] <= 100
            assert 0 <= stats["misclassified_train_log"]["mean"] <= 1
    # the paper's claims, once per backbone: four (Table 2 per split) on clean data, three on Fashion-MNIST-C (T8)
    assert len(summary["verdicts"]) == 18
    assert all(isinstance(v["agrees"], bool) for v in summary["verdicts"])
    t8 = {v["backbone"]: v for v in summary["verdicts"] if v["metric"] == "corr_ece"}
    for bb, v in t8.items():
        ece = {k: summary["backbones"][bb][k]["corr_ece"]["mean"] for k in ("ce", "ls", "maxsup")}
        assert v["values"] == ece and v["agrees"] == (ece["ce"] > ece["ls"] > ece["maxsup"])


@pytest.mark.slow
def test_reported_ece_and_accuracy_match_saved_logits(smoke):
    out, _ = smoke
    summary = json.loads((out / "summary.json").read_text())
    for bb, methods in summary["backbones"].items():
        for loss, stats in methods.items():
            saved = torch.load(out / "runs" / "seed0" / bb / loss / "test_logits.pt", weights_only=True)
            logits, labels = saved["logits"], saved["labels"]
            assert logits.shape == (200, 5) and labels.shape == (200,)  # smoke: 40 test images × 5 source classes
            assert stats["ece"]["mean"] == pytest.approx(expected_calibration_error(logits, labels), abs=1e-9)
            acc = 100 * (logits.argmax(1) == labels).double().mean().item()
            assert stats["acc"]["mean"] == pytest.approx(acc, abs=1e-6)
            # the trained checkpoint is what the analysis read: the last epoch of the trainer's log
            log = (out / "runs" / "seed0" / bb / loss / "log.txt").read_text().strip().splitlines()
            assert json.loads(log[-1])["epoch"] == summary["config"]["epochs"][bb] - 1


@pytest.mark.slow
def test_figures_are_not_blank_and_readme_embeds_them(smoke):
    out, stdout = smoke
    readme = (out / "README.md").read_text()
    for name in ("gradcam", "logits", "projection", "calibration"):
        img = np.asarray(Image.open(out / f"{name}.png").convert("L"), dtype=np.float64) / 255
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 0.05, f"{name}.png looks blank (pixel std {img.std():.4f})"
        assert f"]({name}.png)" in readme
    summary = json.loads((out / "summary.json").read_text())
    assert "Paper vs. miniature" in readme and "DEMO_SCALE=smoke" in summary["config"]["command"]
    assert f"**Regenerate this version:** `{summary['config']['command']}`" in readme
    assert readme.count("**yes**") + readme.count("**no**") == 18
    # 28 px Fashion-MNIST is corrupted with CIFAR-10-C's constants (32 px and below), and the report says so
    constants = "CIFAR-10-C constants (make_cifar_c.py, 32 px), applied at 28 px, seeded per image"
    assert summary["config"]["corruption_constants"] == [constants]
    assert f"at severities 1, 3, 5; {constants}; (Corr) is the mean" in readme
    # Table 8 analogue (analysis.robustness) and paired MaxSup − LS / − CE differences (1 seed: no interval)
    assert "## Table 8 analogue: Fashion-MNIST-C" in readme and "| resnet | MaxSup |" in readme
    rob = json.loads((out / "runs" / "seed0" / "analysis" / "robustness.json").read_text())["checkpoints"]
    assert summary["backbones"]["resnet"]["ls"]["corr_ece"]["mean"] == rob["ResNet-LS"]["mean_corrupted"]["ece"]
    assert set(rob["ResNet-LS"]["corrupted"]["fog"]) == {"1", "3", "5"}
    paired = {(r["backbone"], r["a"], r["b"], r["metric"]): r for r in summary["paired"]}
    row = paired[("resnet", "maxsup", "ls", "acc")]
    accs = summary["backbones"]["resnet"]
    assert row["differences"] == [pytest.approx(accs["maxsup"]["acc"]["values"][0] - accs["ls"]["acc"]["values"][0])]
    assert row["ci95"] is None and "n/a (1 seed)" in readme
    # progress output: which run, its epoch, the ETA
    # (the per-run lines: the periodic phase lines may not fall inside a short smoke run on a fast machine)
    assert "[resnet/maxsup seed 0] epoch" in stdout and "[vit/ls seed 0] epoch" in stdout and "run ETA" in stdout


def _demo_error_lines(**env: str) -> list[str]:
    """stderr lines of run_demo.py under ``env``, which must exit 2 (a UserError) without writing its --out."""
    proc = subprocess.run([sys.executable, str(DEMO), "--out", "/nonexistent/never-written"], cwd=ROOT,
                          capture_output=True, text=True, env=_env(**env), timeout=120)
    assert proc.returncode == 2, proc.stderr
    return proc.stderr.strip().splitlines()


def test_bad_losses_is_one_error_line():
    lines = _demo_error_lines(DEMO_LOSSES="ce,focal")
    assert len(lines) == 1 and lines[0].startswith("error: ") and "focal" in lines[0], lines


def _recipe():
    return load_flat(ROOT / "demo", "recipe", ())


@pytest.mark.parametrize("method", ["smmix", "tokenlabel"])
def test_aug_commands_resolve_to_the_vit_recipe_plus_the_method(method, tmp_path):
    """DEMO_AUG's training command, as the trainer resolves it (--print-config reads no data): the demo's ViT recipe
    and seed, plus SMMix, or MixToken with label maps on the source-class image folder and no image-level mixing."""
    recipe = _recipe()
    cmd = recipe.aug_train_command(method, "maxsup", 3, tmp_path / "run", recipe.SCALES["default"], None,
                                   tmp_path / "folder", tmp_path / "labels")
    env = _env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("DATA_PATH", None)
    proc = subprocess.run([*cmd, "--print-config"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.loads(proc.stdout.strip().splitlines()[-1])
    plain = json.loads(subprocess.run([*recipe.train_command("vit", "maxsup", 3, tmp_path / "run",
                                                             recipe.SCALES["default"], None), "--print-config"],
                                      cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
                                      ).stdout.strip().splitlines()[-1])
    changed = {k for k in cfg if cfg[k] != plain.get(k)}
    assert cfg["seed"] == 3 and cfg["loss"] == "maxsup" and cfg["epochs"] == 5 and cfg["input_size"] == 28
    if method == "smmix":
        assert cfg["smmix"] and not cfg["mixtoken"] and cfg["mixup"] == 0.8
        assert changed <= {"smmix", "mixup"}
    else:
        assert cfg["mixtoken"] and not cfg["smmix"] and cfg["mixup"] == 0 and cfg["cutmix"] == 0
        assert cfg["data_set"] == "FOLDER" and cfg["data_path"] == str(tmp_path / "folder") and cfg["classes"] == ""
        assert cfg["token_label_data"] == str(tmp_path / "labels")
        assert changed <= {"mixtoken", "token_label", "data_set", "data_path", "classes", "token_label_data"}


def test_demo_aug_parsing_and_bad_value_is_one_error_line():
    recipe = _recipe()
    assert recipe.resolve_aug("") == [] and recipe.resolve_aug("all") == ["smmix", "tokenlabel"]
    assert recipe.resolve_aug("tokenlabel, smmix") == ["tokenlabel", "smmix"]
    assert recipe.SCALES["full"].aug and not recipe.SCALES["default"].aug  # default make demo unchanged
    lines = _demo_error_lines(DEMO_AUG="smmix,cutout")
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cutout" in lines[0], lines


def test_demo_aug_seeds_beyond_seeds_is_one_error_line():
    lines = _demo_error_lines(SEEDS="2", DEMO_AUG="all", DEMO_AUG_SEEDS="3")
    assert len(lines) == 1 and lines[0].startswith("error: ") and "DEMO_AUG_SEEDS" in lines[0], lines


def _report():
    return load_flat(ROOT / "demo", "report", ("recipe",))


def test_long_tail_verdicts_paired_differences_and_fraction_tolerance():
    """Table 7 rows from the long-tailed runs: paired MaxSup − X per seed with a Student-t interval, no row for an
    empty shot group, and the claims checked on the group means. "≈" on errors given as fractions is 0.005."""
    report = _report()

    def seed(ms: float, ls: float, ce: float, focal: float) -> dict:
        return {k: {"overall": v, "many": v + 20, "medium": v - 30, "few": None}
                for k, v in (("maxsup", ms), ("ls", ls), ("ce", ce), ("focal", focal))}

    summary = {"long_tail": report.aggregate_long_tail([seed(52.0, 50.0, 49.0, 49.0), seed(55.0, 51.0, 50.5, 50.0)]),
               "verdicts": []}
    report.add_long_tail_verdicts(summary)
    rows = {(r["a"], r["b"], r["metric"]): r for r in summary["long_tail_paired"]}
    assert {m for _, _, m in rows} == {"overall", "many", "medium"}  # the empty few-shot group has no row
    r = rows[("maxsup", "focal", "overall")]
    assert r["differences"] == [3.0, 5.0] and r["mean"] == 4.0
    half = 12.706204736 * np.std([3.0, 5.0], ddof=1) / np.sqrt(2)  # t(0.975, 1 dof)
    assert r["ci95"] == pytest.approx([4.0 - half, 4.0 + half]) and r["resolved"] is False
    verdict = {v["metric"]: v for v in summary["verdicts"]}
    assert set(verdict) == {"overall", "many", "medium"} and verdict["overall"]["backbone"] == "resnet LT"
    assert verdict["overall"]["agrees"] and verdict["overall"]["values"]["ls"] == 50.5  # MaxSup > LS > Focal
    assert not verdict["medium"]["agrees"]  # the paper has Focal first on medium-shot
    assert verdict["overall"]["gaps_exceed_seed_std"] is False  # LS − Focal = 1.0 < the summed std 1.41

    def stat(v: float) -> dict:
        return {"mean": v, "std": None, "values": [v]}

    def error_claim(ms: float) -> bool:
        bb = {"resnet": {k: {"corr_error": stat(v)} for k, v in (("maxsup", ms), ("ls", 0.359), ("ce", 0.356))}}
        claim = [c for c in report.CLAIMS if c[1] == "corr_error"]
        return report.verdicts(bb, claim)[0]["agrees"]

    assert error_claim(0.362) and not error_claim(0.37)  # 0.003 apart is ≈, 0.011 apart is not


# --------------------------------------------------------------------------------------------------------------------
# the committed reference and the paper's numbers (no demo run: tiny fake outputs)
# --------------------------------------------------------------------------------------------------------------------
def test_report_paper_numbers_come_from_recipes_toml(monkeypatch):
    """The claims' paper numbers are read from recipes.toml [paper_results] (one copy): change it, they change."""
    import copy

    from maxsup.recipes import load_recipes

    report = _report()
    assert report.paper_text(report.CLAIMS[0][3], report.CLAIMS[0][2]) == "ResNet-50 ImageNet: 0.311 > 0.293 > 0.263"
    edited = copy.deepcopy(load_recipes())
    next(r for r in edited["paper_results"]["T2"]["rows"] if r["name"] == "Baseline")["paper"][0] = "0.999"
    monkeypatch.setattr(report, "_recipes", lambda: edited)
    assert report.paper_text(report.CLAIMS[0][3], report.CLAIMS[0][2]) == "ResNet-50 ImageNet: 0.999 > 0.293 > 0.263"
    lt = report.paper_numbers("T7", {"column": "Overall", "metric": "acc1", "imb_ratio": 50}, ["focal", "ls", "maxsup"])
    assert lt == {"focal": 76.8, "ls": 80.5, "maxsup": 81.4}  # the test split, not the val rows


def _one_seed_run(reference: dict, shift: float) -> dict:
    """A one-seed summary of the same scale: every reference mean moved by ``shift``, no std."""
    import copy

    run = copy.deepcopy(reference)
    run["seeds"] = [0]
    for methods in run["backbones"].values():
        for stats in methods.values():
            for s in stats.values():
                s.update(mean=s["mean"] + shift, std=None, values=[s["mean"] + shift])
    return run


def test_report_puts_the_run_beside_the_committed_reference(tmp_path):
    report = _report()
    reference = json.loads((ROOT / "results" / "demo" / "summary.json").read_text())
    ref_acc = reference["backbones"]["resnet"]["maxsup"]["acc"]
    run = _one_seed_run(reference, shift=0.5)
    rows = {(r["backbone"], r["loss"], r["metric"]): r for r in report.compare_to_reference(run, reference)}
    r = rows[("resnet", "maxsup", "acc")]
    assert r["diff"] == pytest.approx(0.5) and r["exceeds"] == (0.5 > ref_acc["std"])
    report.write_readme(tmp_path, run, {}, reference, "../demo/README.md")
    text = (tmp_path / "README.md").read_text()
    assert "## This run beside the committed reference ([../demo/README.md](../demo/README.md), 5 seeds)" in text
    assert f"| resnet | MaxSup | acc | {ref_acc['mean'] + 0.5:.2f} | {ref_acc['mean']:.2f} ± {ref_acc['std']:.2f} |" \
           in text
    other = {**run, "config": {**run["config"], "scale": "smoke"}}
    assert "Not compared: this run is scale `smoke`" in "".join(report.reference_section(other, reference, "x"))


def test_report_default_output_is_git_ignored_and_the_reference_needs_update_reference(tmp_path):
    sys.path.insert(0, str(ROOT / "demo"))
    import run_demo

    assert run_demo.resolve_out(None, False) == run_demo.LOCAL_OUT.resolve()
    assert run_demo.resolve_out(None, True) == run_demo.REFERENCE_OUT.resolve()
    for name in ("README.md", "summary.json", "calibration.png", "runs/seed0/resnet/ce/log.txt"):
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(run_demo.LOCAL_OUT / name)])
        assert ignored.returncode == 0, name  # a plain `make demo` leaves `git status` clean
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--error-unmatch", "results/demo/summary.json"],
                             capture_output=True)
    assert tracked.returncode == 0
    proc = subprocess.run([sys.executable, str(DEMO), "--out", str(ROOT / "results" / "demo")], cwd=ROOT,
                          capture_output=True, text=True, env=_env(PYTHONPATH=str(ROOT)), timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        f"error: {ROOT / 'results' / 'demo'} holds the committed reference; pass --update-reference to rewrite it"]
    assert run_demo.resolve_out(tmp_path, False) == tmp_path.resolve()


def test_demo_steps_use_the_demo_interpreter(monkeypatch):
    """The ViT step is ``Deit/train_with_MaxSup.sh``, which otherwise picks the checkout's ``.venv`` (or the PATH's
    python3); the demo hands it its own interpreter, so a demo started from another environment (a worktree without
    ``.venv``, a conda env) trains with the packages it was started with. A ``PYTHON`` the user set still wins."""
    orchestration = load_flat(ROOT / "demo", "orchestration", ("recipe",))
    monkeypatch.delenv("PYTHON", raising=False)
    assert orchestration._child_env({})["PYTHON"] == sys.executable
    monkeypatch.setenv("PYTHON", "/opt/other/python")
    assert orchestration._child_env({})["PYTHON"] == "/opt/other/python"
