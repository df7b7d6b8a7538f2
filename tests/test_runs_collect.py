"""Run folders: seed sweeps, run.json provenance, TensorBoard scalars, the Deit EMA evaluation, gradient accumulation,
and ``python -m analysis.collect`` turning run folders into the paper's mean ± std tables.

Real runs use the Deit trainer (a one-block ViT on 32 Fashion-MNIST images), in this process.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from flat_import import load_flat

from analysis import collect
from maxsup.cli import run_cli
from maxsup.recipes import load_recipes
from maxsup.training import recipe_fingerprint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data-set", "FMNIST", "--classes", "0,1", "--limit-per-class", "16", "--model", "vit_tiny_patch16_224",
        "--input-size", "28", "--model-kwargs", '{"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}',
        "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0", "--color-jitter", "0",
        "--eval-crop-ratio", "1.0", "--warmup-epochs", "0", "--lr", "1e-3", "--unscale-lr", "--num_workers", "0",
        "--print-freq", "0", "--device", "cpu", "--drop-path", "0", "--loss", "maxsup"]


def _load_deit():
    return load_flat(ROOT / "Deit", "main", ("engine", "datasets", "samplers"))


DEIT = _load_deit()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two seeds of a 2-epoch MaxSup run with the EMA and TensorBoard on."""
    root = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.delenv("SEEDS", raising=False)
    mp.delenv("WORLD_SIZE", raising=False)
    mp.delenv("RANK", raising=False)
    try:
        results = DEIT.cli([*TINY, "--batch-size", "8", "--epochs", "2", "--seeds", "0,1",
                            "--output_dir", str(root / "out"), "--tensorboard", str(root / "tb")])
    finally:
        mp.undo()
    return root, results


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.txt").read_text().splitlines()]


def test_seed_sweep_writes_one_run_folder_per_seed_with_provenance(sweep):
    root, results = sweep
    assert sorted(results) == ["seed0", "seed1"]
    logs = {s: _log(root / "out" / f"seed{s}") for s in (0, 1)}
    assert [e["epoch"] for e in logs[0]] == [0, 1] and [e["epoch"] for e in logs[1]] == [0, 1]
    assert logs[0][-1]["test_acc1"] == results["seed0"]["test_acc1"]
    assert logs[0][-1]["train_loss"] != logs[1][-1]["train_loss"]  # different seeds, different runs
    for seed in (0, 1):
        rec = json.loads((root / "out" / f"seed{seed}" / "run.json").read_text())
        assert (rec["trainer"], rec["dataset"], rec["model"], rec["loss"]) == ("deit", "fmnist",
                                                                              "vit_tiny_patch16_224", "maxsup")
        assert rec["seed"] == seed and rec["alpha"] == [0.1, 0.2] and rec["epochs"] == 2
        assert rec["config"]["seed"] == seed and rec["config"]["total_batch_size"] == 8
        prov = rec["provenance"]
        assert prov["torch"] == torch.__version__ and prov["world_size"] == 1 and prov["device"] == "cpu"
        assert prov["timm"] and prov["device_names"] and "cuda" in prov
        assert "git_commit" in prov and prov["git_dirty"] in (True, False, None)
    # the two seeds are one recipe
    recs = [json.loads((root / "out" / f"seed{s}" / "run.json").read_text()) for s in (0, 1)]
    assert recs[0]["recipe"] == recs[1]["recipe"] == DEIT.run_fingerprint(recs[1]["config"])
    assert recs[0]["recipe"] != recipe_fingerprint(recs[1]["config"])  # the seed, paths and loss are left out


def test_ema_is_evaluated_logged_and_selectable_for_eval(sweep, capsys):
    root, _ = sweep
    last = _log(root / "out" / "seed0")[-1]
    assert {"test_ema_acc1", "test_ema_nll", "test_ema_ece"} <= set(last)
    # decay 0.99996 over 8 steps: the EMA is still almost the initial weights, so its NLL differs from the model's
    assert last["test_ema_nll"] != pytest.approx(last["test_nll"], rel=1e-3)
    ckpt = str(root / "out" / "seed0" / "checkpoint.pth")
    ema = DEIT.cli([*TINY, "--batch-size", "8", "--eval", "--eval-ema", "--resume", ckpt])
    plain = DEIT.cli([*TINY, "--batch-size", "8", "--eval", "--resume", ckpt])
    assert ema["nll"] == pytest.approx(last["test_ema_nll"], rel=1e-5)
    assert plain["nll"] == pytest.approx(last["test_nll"], rel=1e-5)


def test_tensorboard_has_each_epochs_scalars(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = sweep
    acc = EventAccumulator(str(root / "tb" / "seed1"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_loss", "train_lr", "alpha", "maxsup_penalty", "misclassified", "test_acc1", "test_nll",
            "test_ece", "test_ema_acc1"} <= tags
    log = _log(root / "out" / "seed1")
    alphas = acc.Scalars("alpha")
    assert [a.step for a in alphas] == [0, 1]
    assert [a.value for a in alphas] == pytest.approx([e["alpha"] for e in log])  # 0.1, then 0.2
    assert acc.Scalars("test_acc1")[-1].value == pytest.approx(log[-1]["test_acc1"])


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pth", weights_only=True)["model"]


def test_gradient_accumulation_equals_the_large_batch(tmp_path, monkeypatch):
    """8 images × 2 accumulation steps = one step on 16 images (a LayerNorm ViT, no dropout, same data order)."""
    monkeypatch.delenv("SEEDS", raising=False)
    common = [*TINY, "--epochs", "1", "--no-model-ema", "--opt", "sgd", "--lr", "0.5"]
    DEIT.cli([*common, "--batch-size", "16", "--output_dir", str(tmp_path / "big")])
    DEIT.cli([*common, "--batch-size", "8", "--accum-steps", "2", "--output_dir", str(tmp_path / "accum")])
    DEIT.cli([*common, "--batch-size", "8", "--output_dir", str(tmp_path / "small")])
    big, accum, small = (_final_weights(tmp_path / n) for n in ("big", "accum", "small"))
    assert all(torch.allclose(big[k], accum[k], atol=1e-5) for k in big)
    assert not all(torch.allclose(big[k], small[k], atol=1e-5) for k in big)  # the check can fail
    cfg = json.loads((tmp_path / "accum" / "run.json").read_text())["config"]
    assert cfg["total_batch_size"] == 16 and cfg["accum_steps"] == 2


# --------------------------------------------------------------------------------------------------------------------
# analysis.collect
# --------------------------------------------------------------------------------------------------------------------
def test_collect_groups_seeds_and_lists_unfinished_runs(sweep, tmp_path, capsys):
    root, _ = sweep
    runs = tmp_path / "runs"
    shutil.copytree(root / "out", runs)
    # a third seed that stopped after its first epoch: listed, not averaged in
    shutil.copytree(runs / "seed1", runs / "seed2")
    rec = json.loads((runs / "seed2" / "run.json").read_text())
    rec["seed"] = 2
    (runs / "seed2" / "run.json").write_text(json.dumps(rec))
    (runs / "seed2" / "log.txt").write_text((runs / "seed2" / "log.txt").read_text().splitlines()[0] + "\n")
    result = collect.main([str(runs), "--out", str(tmp_path / "table")])
    (group,) = result["groups"]
    accs = [_log(runs / f"seed{s}")[-1]["test_acc1"] for s in (0, 1)]
    assert group["seeds"] == [0, 1] and group["stats"]["acc1"]["n"] == 2
    assert group["stats"]["acc1"]["mean"] == pytest.approx(statistics.fmean(accs))
    assert group["stats"]["acc1"]["std"] == pytest.approx(statistics.stdev(accs))
    assert group["unfinished"] == [{"dir": str(runs / "seed2"), "seed": 2, "last_epoch": 0, "epochs": 2}]
    assert group["alpha"] == "0.1→0.2" and group["recipe"].startswith("custom-")
    md = (tmp_path / "table" / "collect.md").read_text()
    assert "Unfinished runs" in md and str(runs / "seed2") in md
    assert json.loads((tmp_path / "table" / "collect.json").read_text())["groups"][0]["seeds"] == [0, 1]


def _fake_run(folder: Path, recipe_id: str, *, loss: str, seed: int, acc1: float, epochs_done: int,
              dataset: str = "imagenet", model: str = "deit_small_patch16_224") -> None:
    """A run folder as a trainer writes it, with the config of a recipes.toml recipe (no training)."""
    recipe = load_recipes()["recipes"][recipe_id]
    config = {k: v["value"] for k, v in recipe["values"].items()}
    config.update(loss=loss, model=model, seed=seed)
    folder.mkdir(parents=True)
    record = {"trainer": recipe["trainer"], "dataset": dataset, "model": model, "loss": loss, "alpha": [0.1, 0.2],
              "epochs": 3, "seed": seed, "recipe": recipe_fingerprint(config), "log_file": "log.txt",
              "metric_keys": {"acc1": "test_acc1", "nll": "test_nll", "ece": "test_ece"}, "config": config}
    (folder / "run.json").write_text(json.dumps(record))
    lines = [{"epoch": e, "test_acc1": acc1 - (2 - e), "test_nll": 1.0 + seed / 10, "test_ece": 0.05}
             for e in range(epochs_done)]
    (folder / "log.txt").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_collect_paper_table_beside_the_paper(tmp_path, capsys):
    for seed, acc in enumerate((76.4, 76.6, 76.5)):
        _fake_run(tmp_path / f"maxsup_s{seed}", "deit_t5", loss="maxsup", seed=seed, acc1=acc, epochs_done=3)
    _fake_run(tmp_path / "ls_s0", "deit_t5", loss="ls", seed=0, acc1=76.0, epochs_done=3)
    _fake_run(tmp_path / "ls_s1", "deit_t5", loss="ls", seed=1, acc1=90.0, epochs_done=2)  # unfinished
    result = collect.main([str(tmp_path), "--paper", "T5"])
    out = capsys.readouterr().out
    # the groups: acc1 with 2 decimals, NLL (1.0, 1.1, 1.2 over the seeds) and ECE with 4; the unfinished LS run
    # counts in its own column and is listed with its last logged epoch
    assert ("| imagenet | deit_small_patch16_224 | Label Smoothing | 0.1→0.2 | deit_t5 | 76.00 ± – (n=1) | "
            "1.0000 ± – (n=1) | 0.0500 ± – (n=1) | 1 |\n") in out
    assert ("| imagenet | deit_small_patch16_224 | MaxSup | 0.1→0.2 | deit_t5 | 76.50 ± 0.10 (n=3) | "
            "1.1000 ± 0.1000 (n=3) | 0.0500 ± 0.0000 (n=3) |  |\n") in out
    assert f"| {tmp_path / 'ls_s1'} | 1 | 1 | 3 |\n" in out
    # ours (mean ± sample std, n, seeds) | paper | difference (beyond the combined std √(0.10² + 0.12²)?)
    assert "| MaxSup | 76.50 ± 0.10 (n=3; seeds 0,1,2) | 76.49 ± 0.12 | +0.01 (≤ σ) |" in out
    assert "| Label Smoothing | 76.00 (n=1; seeds 0) | 76.08 ± 0.16 | −0.08 (n=1, no verdict) |" in out
    assert "| Baseline | – | 74.39 ± 0.19 | – |" in out
    cells = {r["name"]: r["cells"][0] for r in result["paper"]["T5"]["rows"]}
    assert cells["MaxSup"]["ours"]["n"] == 3 and cells["MaxSup"]["exceeds"] is False
    assert cells["Label Smoothing"]["ours"]["n"] == 1  # the unfinished 90.0 is not averaged in
    assert {g["recipe"] for g in result["groups"]} == {"deit_t5"}


def test_collect_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(collect.main, [str(tmp_path)])
    assert capsys.readouterr().err.strip() == f"error: no run.json (nor analysis output) in or below {tmp_path}; " \
                                              "was it written by one of this repository's trainers?"
    _fake_run(tmp_path / "a", "deit_t5", loss="maxsup", seed=0, acc1=70.0, epochs_done=3)
    with pytest.raises(SystemExit):
        run_cli(collect.main, [str(tmp_path), "--paper", "T99"])
    assert "recipes.toml has no [paper_results.T99]" in capsys.readouterr().err


def test_run_record_alpha_comes_from_the_loss_actually_built():
    from maxsup import build_criterion
    from maxsup.training import alpha_schedule_of

    assert alpha_schedule_of(build_criterion("ls", 10, 5, alpha_start=0.1, alpha_end=0.1)) == (0.1, 0.1)
    assert alpha_schedule_of(build_criterion("maxsup", 10, 5, alpha_start=0.1, alpha_end=0.2)) == (0.1, 0.2)
    assert alpha_schedule_of(build_criterion("ce", 10, 5)) is None
