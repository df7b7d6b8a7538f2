"""``python -m analysis.collect --paper TN`` for every paper table, from fake inputs: run folders whose ``run.json``
holds the ``--print-config`` JSON of the README's documented commands (no training), analysis outputs and an
MMSegmentation 1.2.2 result file. Each cell's numbers must equal the mean / sample std of the values written into
the fake logs; runs of different recipes must never pool, and a cell they both map to is refused in one line."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import statistics
from pathlib import Path
from typing import Any

import pytest
import test_recipes

from analysis import collect
from analysis.pooling import MISSING, field, flatten
from analysis.tables import TABLES, _alternatives, _recipe_ok, build_table, fmt_diff, table_csv, table_status
from maxsup.cli import run_cli
from maxsup.losses import resolve_loss_options
from maxsup.recipes import load_recipes
from maxsup.training import write_run_record

RECIPES = load_recipes()
COMMON = test_recipes.COMMON  # the trainers, loaded once by tests/test_recipes.py

# the README's documented commands (recipes.toml commands), one per trainer
DEIT_T5 = ["--data-set", "IMNET", "--data-path", "/data/imagenet", "--model", "deit_small_patch16_224",
           "--batch-size", "256", "--epochs", "300", "--mixup", "0", "--cutmix", "0", "--smoothing", "0",
           "--dist-eval"]
T10 = ["--dataset", "imagefolder", "--data-path", "/data/imagenet", "--model", "resnet50", "--epochs", "90", "-b",
       "64", "--lr", "0.1", "--momentum", "0.9", "--wd", "1e-4", "--lr-scheduler", "steplr", "--lr-step-size", "30",
       "--lr-gamma", "0.1", "-j", "8"]
LT = ["--dataset", "cifar10", "--data-path", "datasets/cifar10", "--download", "--model", "resnet32", "--model-kwargs",
      "head=causal_norm", "--epochs", "200", "-b", "256", "--lr", "0.2", "--momentum", "0.9", "--wd", "5e-4",
      "--lr-warmup-epochs", "5", "--lr-warmup-method", "linear", "--lr-scheduler", "multisteplr", "--lr-milestones",
      "115", "155", "--lr-gamma", "0.01", "-j", "4"]


def print_config(entry: Any, args: list[str], world_size: int = 1) -> dict[str, Any]:
    """A trainer's --print-config JSON for ``args`` under torchrun's WORLD_SIZE (reads no data)."""
    env = {k: os.environ.pop(k) for k in ("RANK", "SEEDS", "WORLD_SIZE") if k in os.environ}
    os.environ["WORLD_SIZE"] = str(world_size)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            entry([*args, "--print-config"])
    finally:
        os.environ.pop("WORLD_SIZE")
        os.environ.update(env)
    return json.loads(buf.getvalue())


@pytest.fixture(scope="module")
def documented() -> dict[str, dict[str, Any]]:
    """recipe id → the --print-config JSON of one of its README commands (tests/test_recipes.py checks them all)."""
    out = {}
    for rid, _readme, _raw, env, script, args, nproc in test_recipes.COMMANDS:
        if rid in out or script not in test_recipes.ENTRY:
            continue
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            out[rid] = print_config(test_recipes.ENTRY[script], args, nproc)
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return out


TRAINER_INFO = {"deit": ("log.txt", {"acc1": "test_acc1", "nll": "test_nll", "ece": "test_ece"}),
                "common_resnet": ("log.txt", {"acc1": "test_acc1", "nll": "test_nll", "ece": "test_ece"}),
                "ffcv": ("log.jsonl", {"acc1": "top_1", "nll": "val_nll", "ece": "val_ece"})}
DATASET = {"deit_t5": "imagenet", "deit_t11_fixed": "imagenet", "deit_t1_ablation": "imagenet",
           "ffcv_t4_imagenet": "imagenet", "c100_t4": "cifar100", "lt_t7": "cifar10", "c10c_t8": "cifar10",
           "t10_imagenet": "imagenet"}


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    """Set a (dotted) config key, nested as the trainer prints it."""
    node = config
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    node[last] = value


def fake_run(folder: Path, trainer: str, config: dict[str, Any], *, dataset: str, seed: int,
             epochs_logged: list[dict[str, Any]], hardware: tuple[str, int] = ("NVIDIA H100", 8)) -> None:
    """A run folder as the trainers write it: run.json (write_run_record) and a JSON-lines log."""
    config = json.loads(json.dumps(config))
    flat = flatten(config)
    loss = flat.get("loss.name", flat.get("loss"))
    if trainer == "common_resnet" and config.get("label_smoothing"):
        loss = "ls"  # as Conv/common_resnet/train.py records --label-smoothing runs
    model = flat.get("model.arch", flat.get("model"))
    epochs = flat.get("training.epochs", flat.get("epochs"))
    _set(config, "training.seed" if trainer == "ffcv" else "seed", seed)
    log_file, metric_keys = TRAINER_INFO[trainer]
    write_run_record(folder, trainer=trainer, config=config, dataset=dataset, model=model, loss=loss,
                     alpha=None, epochs=epochs, seed=seed, world_size=hardware[1], device="cpu",
                     log_file=log_file, metric_keys=metric_keys)
    rec = json.loads((folder / "run.json").read_text())
    rec["provenance"].update(device_names=[hardware[0]] * hardware[1], world_size=hardware[1])
    (folder / "run.json").write_text(json.dumps(rec))
    lines = [{"epoch": e, **line} for e, line in enumerate(epochs_logged)]
    lines[-1]["epoch"] = epochs - 1  # the last epoch of the recipe: the run is finished
    (folder / log_file).write_text("".join(json.dumps(x) + "\n" for x in lines))


def _trainer_of(rid: str) -> str:
    return RECIPES["recipes"][rid]["trainer"]


def _config_for(documented: dict[str, Any], spec: dict[str, Any], row: dict[str, Any],
                selector: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """(trainer, config, dataset) of a documented command changed to satisfy ``selector`` and the table's recipes."""
    rids = row.get("recipes", spec.get("recipes")) or ["t10_imagenet"]  # T6: fine-tunes with the T10 trainer
    for rid in rids:
        config = json.loads(json.dumps(documented[rid]))
        dataset = DATASET[rid]
        choices = RECIPES["recipes"][rid].get("choices", {})
        for key, value in selector.items():
            if key == "dataset":
                dataset = value
                if "dataset" in config:
                    config["dataset"] = value
            elif key == "model":
                _set(config, "model.arch" if isinstance(config["model"], dict) else "model", value)
            elif key == "loss" and value == "ls" and "ls" not in choices.get("loss", ["ls"]):
                # the recipe's LS is --label-smoothing (T7, T8), which the trainer records as loss "ls"
                config.update(loss="ce", label_smoothing=max(choices["label_smoothing"]))
            elif key == "loss" and isinstance(config["loss"], dict):  # FFCV: the name and its resolved options
                config["loss"].update(name=value, options=resolve_loss_options(value, []))
            elif key == "loss":
                _set(config, "loss", value)
            elif key == "finetune_method":
                config["finetune"] = f"runs/t10_r50_{value}/checkpoint.pth"
            else:  # every dotted key of that name (FFCV: loss.alpha_start and the resolved loss.options.alpha_start)
                flat = flatten(config)
                names = [key] if key in flat else [k for k in flat if k.rpartition(".")[2] == key]
                assert names, f"{rid}'s config has no {key}"
                for name in names:
                    _set(config, name, value)
        record = {"trainer": _trainer_of(rid), "config": config}
        if not spec.get("recipes") or _recipe_ok(record, rids, spec.get("ignore", []), RECIPES):
            return _trainer_of(rid), config, dataset
    raise AssertionError(f"no recipe of {rids} takes {selector}")


def make_inputs(root: Path, table: str, documented: dict[str, Any]) -> dict[tuple[str, str], list[float]]:
    """Fake inputs for every cell of ``table``; returns (row, column) → the values written (3 seeds / 3 files)."""
    spec = RECIPES["paper_results"][table]
    rng = random.Random(table)
    by_selector: dict[str, dict[str, Any]] = {}  # one set of inputs per distinct selector, with every metric it needs
    for row in spec["rows"]:
        for j, col in enumerate(spec["columns"]):
            sel = {**col.get("match", {}), **_alternatives(row.get("match"))[0]}
            metric = row["metrics"][j] if "metrics" in row else row.get("metric") or col.get("metric") or spec["metric"]
            entry = by_selector.setdefault(json.dumps(sel, sort_keys=True), {"sel": sel, "row": row, "metrics": {},
                                                                              "cells": []})
            # best_* (the best epoch's values, T7's val rows) come from an epoch above every other one's top-1
            low, high = (91, 99) if metric.startswith("best_") else (10, 90)
            entry["metrics"].setdefault(metric, [round(rng.uniform(low, high), 3) for _ in range(3)])
            entry["cells"].append((row["name"], col["name"], metric, col.get("scale", spec.get("scale", 1.0))))
    expected: dict[tuple[str, str], list[float]] = {}
    for k, entry in enumerate(by_selector.values()):
        sel, metrics = entry["sel"], entry["metrics"]
        for seed in range(3):
            values = {m: v[seed] for m, v in metrics.items()}
            if spec["source"] == "runs":
                trainer, config, dataset = _config_for(documented, spec, entry["row"], sel)
                keys = TRAINER_INFO[trainer][1]
                line = {keys.get(m, m): v for m, v in values.items() if not m.startswith("best_")}
                best = {keys.get(m[5:], m[5:]): v for m, v in values.items() if m.startswith("best_")}
                if "seconds_per_epoch" in values:  # T16: per-epoch timing records; the run's value is their mean
                    line = {"train_seconds": values["seconds_per_epoch"] - 1.0, "top_1": 70.0}
                    first = {"train_seconds": values["seconds_per_epoch"] + 1.0, "top_1": 60.0}
                    logged = [first, line]
                else:
                    logged = [{keys["acc1"]: 1.0}, *([best] if best else []), {keys["acc1"]: 50.0, **line}]
                fake_run(root / f"cell{k}_seed{seed}", trainer, config, dataset=dataset, seed=seed,
                         epochs_logged=logged)
            elif spec["source"] == "mmseg":
                work = root / f"work_dirs/t9_{sel['method']}"
                stamp = f"2025010{seed + 1}_120000"
                (work / stamp).mkdir(parents=True)
                (work / "upernet_deit_s.py").write_text("model = dict(type='SegTTAModel', module=dict())\n")
                (work / stamp / f"{stamp}.json").write_text(json.dumps(
                    {"aAcc": 80.0, "mIoU": values["mIoU"], "mAcc": 50.0, "data_time": 0.01, "time": 0.5}))
            else:
                _write_analysis(root / f"seed{seed}", spec["source"], sel, values)
        for row_name, col_name, metric, scale in entry["cells"]:
            expected[(row_name, col_name)] = [v * scale for v in metrics[metric]]
    return expected


NAMES = {"ce": "CE", "ls": "LS", "maxsup": "MaxSup", "ols": "r50_ols", "zipf": "Zipf", "lp": "LP"}


def _write_analysis(folder: Path, script: str, sel: dict[str, Any], values: dict[str, float]) -> None:
    """Add one row (checkpoint NAME of ``sel['method']``) to ``<folder>/<target>/<script>.json``."""
    target = sel.get("target.dataset", "imagenet")
    path = folder / target / f"{script}.json"
    data = json.loads(path.read_text()) if path.is_file() else (
        {"script": script, "dataset": "imagefolder", "classes": None, "max_per_class_train": 50,
         "max_per_class_val": None, "rows": {}} if script == "feature_metrics" else
        {"script": script, "target": {"dataset": target, "classes": None}, "source": {"dataset": None},
         "lambda_grid": [10 ** (-6 + 11 * i / 44) for i in range(45)], "rows": {}} if script == "linear_transfer"
        else {"checkpoints": {}})
    row: dict[str, Any] = {}
    for dotted, value in values.items():
        node = row
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    data["rows" if "rows" in data else "checkpoints"][NAMES[sel["method"]]] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("table", TABLES)
def test_every_paper_table_from_fake_inputs_equals_the_hand_computed_numbers(table, documented, tmp_path, capsys):
    expected = make_inputs(tmp_path / "in", table, documented)
    result = collect.main([str(tmp_path / "in"), "--paper", table, "--out", str(tmp_path / "out")])
    cells = {(c["row"], c["column"]): c for r in result["paper"][table]["rows"] for c in r["cells"]}
    assert set(cells) == set(expected)
    for key, values in expected.items():
        ours = cells[key]["ours"]
        assert ours is not None, key
        assert ours["n"] == 3 and ours["mean"] == pytest.approx(statistics.fmean(values), abs=1e-9), key
        assert ours["std"] == pytest.approx(statistics.stdev(values), abs=1e-9), key
        paper = cells[key]["paper"]
        if paper is not None:
            assert cells[key]["diff"] == pytest.approx(statistics.fmean(values) - paper["mean"])
            combined = (statistics.stdev(values) ** 2 + (paper["std"] or 0) ** 2) ** 0.5
            assert cells[key]["exceeds"] == (abs(statistics.fmean(values) - paper["mean"]) > combined)
    if table == "T16":  # time per epoch relative to CE, from the same means
        ce = statistics.fmean(expected[("time per epoch (s)", "CE (one-hot)")])
        ms = statistics.fmean(expected[("time per epoch (s)", "CE + MaxSup")])
        assert cells[("time per epoch (s)", "CE + MaxSup")]["ratio"] == pytest.approx(ms / ce)
        # the paper's ratios from its 3 min 51 s / 3 min 52 s / 3 min 51 s (Table 16)
        assert cells[("time per epoch (s)", "CE + LS")]["paper_ratio"] == pytest.approx(232 / 231)
        assert cells[("time per epoch (s)", "CE + MaxSup")]["paper_ratio"] == pytest.approx(1.0)
        ls = statistics.fmean(expected[("time per epoch (s)", "CE + LS")])
        ratio_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Ratio to"))
        assert ratio_line.startswith(f"Ratio to CE (one-hot): CE + LS ours {ls / ce:.3f}, paper 1.004; "
                                     f"CE + MaxSup ours {ms / ce:.3f}, paper 1.000. Hardware: ")
    md = (tmp_path / "out" / f"{table}.md").read_text()
    assert RECIPES["paper_results"][table]["cite"] in md
    csv_lines = (tmp_path / "out" / f"{table}.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(expected)  # one line per cell (model × method)
    assert csv_lines[0].startswith("table,row,column,metric,ours_mean,ours_std,n,seeds,paper_mean")


def test_paper_all_writes_reproduction_md_with_status_and_commands(documented, tmp_path, capsys):
    make_inputs(tmp_path / "in", "T5", documented)
    collect.main([str(tmp_path / "in"), "--paper", "all", "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "REPRODUCTION.md").read_text()
    assert "| T5 | " in text and "| T4 | missing |" in text
    t4 = RECIPES["paper_results"]["T4"]
    n_t4 = sum(bool(p) for row in t4["rows"] for p in row["paper"])  # every T4 cell the paper fills
    assert "## T4: missing\n" in text and f"Missing: all {n_t4} cells.\n" in text
    # a missing table lists the commands that make its inputs, from recipes.toml
    assert "python -m analysis.feature_metrics $CK" in text and "Deit/main.py $RECIPE --loss ls-reg" in text
    assert all((tmp_path / "out" / f"{t}.csv").is_file() for t in TABLES)


# --------------------------------------------------------------------------------------------------------------------
# pooling: the group key is the whole resolved recipe
# --------------------------------------------------------------------------------------------------------------------
def _acc_run(folder: Path, trainer: str, config: dict[str, Any], dataset: str, seed: int, acc: float) -> None:
    key = TRAINER_INFO[trainer][1]["acc1"]
    fake_run(folder, trainer, config, dataset=dataset, seed=seed, epochs_logged=[{key: acc}])


def _refusal(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(collect.main, argv)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_alpha_denominator_is_part_of_the_recipe(documented, tmp_path, capsys):
    maxsup = json.loads(json.dumps(documented["deit_t5"]))
    maxsup["loss"] = "maxsup"
    other = {**maxsup, "alpha_denominator": "E"}
    _acc_run(tmp_path / "a", "deit", maxsup, "imagenet", 0, 76.4)
    _acc_run(tmp_path / "b", "deit", other, "imagenet", 1, 76.6)
    result = collect.main([str(tmp_path)])
    assert sorted(g["stats"]["acc1"]["n"] for g in result["groups"]) == [1, 1]  # two groups, never pooled
    err = _refusal([str(tmp_path), "--paper", "T5"], capsys)
    assert "T5 'MaxSup' / 'DeiT-S'" in err and "alpha_denominator: E-1 vs E" in err


def test_a_run_off_the_tables_recipe_fills_no_cell(documented, tmp_path, capsys):
    """A DeiT MaxSup run of 100 epochs (T5's recipe says 300) is collected as its own group, never in T5."""
    short = json.loads(json.dumps(documented["deit_t5"]))
    short.update(loss="maxsup", epochs=100)
    _acc_run(tmp_path / "short", "deit", short, "imagenet", 0, 70.0)
    (group,) = collect.main([str(tmp_path)])["groups"]
    assert group["recipe"].startswith("custom-") and group["stats"]["acc1"]["mean"] == 70.0
    assert "none of the inputs fills a cell of T5" in _refusal([str(tmp_path), "--paper", "T5"], capsys)
    full = json.loads(json.dumps(documented["deit_t5"]))
    full["loss"] = "maxsup"
    _acc_run(tmp_path / "full", "deit", full, "imagenet", 1, 76.5)
    cells = [c for r in collect.main([str(tmp_path), "--paper", "T5"])["paper"]["T5"]["rows"] for c in r["cells"]]
    assert [(c["row"], c["ours"]["mean"], c["seeds"]) for c in cells if c["ours"]] == [("MaxSup", 76.5, [1])]


def test_ls_by_label_smoothing_and_by_loss_ls_do_not_pool(documented, tmp_path, capsys):
    base = print_config(COMMON.cli, [*T10, "--loss", "ls"], 8)
    alt = print_config(COMMON.cli, [*T10, "--loss", "ce", "--label-smoothing", "0.1"], 8)
    _acc_run(tmp_path / "a_ls", "common_resnet", base, "imagenet", 0, 76.6)
    _acc_run(tmp_path / "b_alt", "common_resnet", alt, "imagenet", 0, 76.7)
    err = _refusal([str(tmp_path), "--paper", "T10"], capsys)
    assert "T10 'Label Smoothing' / 'R-50'" in err
    assert "label_smoothing: 0.0 vs 0.1" in err and "loss: ls vs ce" in err


def test_imbalance_ratios_are_kept_apart(documented, tmp_path, capsys):
    for ratio, accs in ((50, (81.0, 82.0)), (100, (76.0, 77.0))):
        config = print_config(COMMON.cli, [*LT, "--imb-ratio", str(ratio), "--loss", "maxsup"])
        for seed, acc in enumerate(accs):
            _acc_run(tmp_path / f"lt{ratio}_{seed}", "common_resnet", config, "cifar10", seed, acc)
    result = collect.main([str(tmp_path), "--paper", "T7"])
    cells = {(c["row"], c["column"]): c for r in result["paper"]["T7"]["rows"] for c in r["cells"]}
    assert cells[("test, 50 · MaxSup", "Overall")]["ours"]["mean"] == pytest.approx(81.5)
    assert cells[("test, 100 · MaxSup", "Overall")]["ours"]["mean"] == pytest.approx(76.5)
    assert cells[("test, 100 · MaxSup", "Overall")]["seeds"] == [0, 1]
    assert len(result["groups"]) == 2


def test_t7_val_rows_are_the_best_epoch_and_test_rows_the_last(documented, tmp_path):
    """The authors' LT "val" phase is CIFAR-10's test split evaluated every epoch (best epoch reported)."""
    config = print_config(COMMON.cli, [*LT, "--imb-ratio", "50", "--loss", "maxsup"])
    key = TRAINER_INFO["common_resnet"][1]["acc1"]
    log = [{key: 70.0, "test_many_shot_acc1": 71.0, "test_medium_shot_acc1": 60.0, "test_few_shot_acc1": 0.0},
           {key: 82.0, "test_many_shot_acc1": 83.0, "test_medium_shot_acc1": 75.0, "test_few_shot_acc1": 0.0},
           {key: 80.0, "test_many_shot_acc1": 82.0, "test_medium_shot_acc1": 70.0, "test_few_shot_acc1": 0.0}]
    fake_run(tmp_path / "lt50", "common_resnet", config, dataset="cifar10", seed=0, epochs_logged=log)
    result = collect.main([str(tmp_path), "--paper", "T7"])
    cells = {(c["row"], c["column"]): c for r in result["paper"]["T7"]["rows"] for c in r["cells"]}
    assert [cells[("val, 50 · MaxSup", col)]["ours"]["mean"] for col in ("Overall", "Many", "Medium")] == [82, 83, 75]
    assert [cells[("test, 50 · MaxSup", col)]["ours"]["mean"] for col in ("Overall", "Many", "Medium")] == [80, 82, 70]


def test_loss_options_pool_by_what_they_resolve_to_not_how_they_were_typed(tmp_path):
    """--overwrite, and α given as a flag, as --loss-opt or left at the class default, do not split a recipe."""
    plain = print_config(COMMON.cli, [*T10, "--loss", "maxsup"], 8)
    typed = print_config(COMMON.cli, [*T10, "--loss", "maxsup", "--overwrite", "--loss-opt", "alpha_end=0.2"], 8)
    _acc_run(tmp_path / "plain", "common_resnet", plain, "imagenet", 0, 77.0)
    _acc_run(tmp_path / "typed", "common_resnet", typed, "imagenet", 1, 77.4)
    result = collect.main([str(tmp_path), "--paper", "T10"])
    cell = next(c for r in result["paper"]["T10"]["rows"] if r["name"] == "MaxSup" for c in r["cells"]
                if c["column"] == "R-50")
    assert cell["ours"]["n"] == 2 and cell["ours"]["mean"] == pytest.approx(77.2)
    # ... but another resolved value is another recipe
    other = print_config(COMMON.cli, [*T10, "--loss", "maxsup", "--loss-opt", "alpha_end=0.3"], 8)
    _acc_run(tmp_path / "other", "common_resnet", other, "imagenet", 2, 76.0)
    assert len(collect.main([str(tmp_path)])["groups"]) == 2


def test_global_batch_pools_however_it_is_split(tmp_path, capsys):
    """8 × 64 (the README) and 4 × 64 × --accum-steps 2 (its alternative) are one recipe: total batch 512."""
    eight = print_config(COMMON.cli, [*T10, "--loss", "maxsup"], 8)
    four = print_config(COMMON.cli, [*T10, "--loss", "maxsup", "--accum-steps", "2"], 4)
    assert (eight["world_size"], four["world_size"], four["total_batch_size"]) == (8, 4, 512)
    _acc_run(tmp_path / "eight", "common_resnet", eight, "imagenet", 0, 77.0)
    _acc_run(tmp_path / "four", "common_resnet", four, "imagenet", 1, 77.2)
    result = collect.main([str(tmp_path), "--paper", "T10"])
    cell = next(c for r in result["paper"]["T10"]["rows"] if r["name"] == "MaxSup" for c in r["cells"]
                if c["column"] == "R-50")
    assert cell["ours"]["n"] == 2 and cell["ours"]["mean"] == pytest.approx(77.1) and cell["seeds"] == [0, 1]
    # ... but a different global batch is another recipe
    half = print_config(COMMON.cli, [*T10, "--loss", "maxsup"], 4)
    _acc_run(tmp_path / "half", "common_resnet", half, "imagenet", 2, 70.0)
    assert len(collect.main([str(tmp_path)])["groups"]) == 2


def test_time_per_epoch_refuses_different_hardware(documented, tmp_path, capsys):
    for loss, hw in (("ce", ("NVIDIA A100", 8)), ("maxsup", ("NVIDIA H100", 8))):
        config = json.loads(json.dumps(documented["ffcv_t4_imagenet"]))
        config["loss"].update(name=loss, options=resolve_loss_options(loss, []))
        fake_run(tmp_path / loss, "ffcv", config, dataset="imagenet", seed=0, hardware=hw,
                 epochs_logged=[{"train_seconds": 230.0, "top_1": 70.0}])
    err = _refusal([str(tmp_path), "--paper", "T16"], capsys)
    assert "8 × NVIDIA A100 vs 8 × NVIDIA H100" in err


def test_estimate_lines_fill_t16_marked_as_estimates(documented, tmp_path, capsys):
    config = json.loads(json.dumps(documented["ffcv_t4_imagenet"]))
    config["loss"]["name"] = "maxsup"
    folder = tmp_path / "est"
    fake_run(folder, "ffcv", config, dataset="imagenet", seed=0, epochs_logged=[{"top_1": 1.0}])
    (folder / "log.jsonl").write_text(json.dumps({"estimate": True, "seconds_per_step": 0.37,
                                                   "steps_per_epoch": 625, "train_images_per_s": 5500.0}) + "\n")
    result = collect.main([str(tmp_path), "--paper", "T16"])
    cell = result["paper"]["T16"]["rows"][0]["cells"][2]
    assert cell["ours"]["mean"] == pytest.approx(0.37 * 625) and cell["estimate"] is True
    assert "(estimate)" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# bad input: one error line, non-zero exit
# --------------------------------------------------------------------------------------------------------------------
def test_bad_inputs_are_one_error_line(documented, tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert f"no run.json (nor analysis output) in or below {empty}" in _refusal([str(empty)], capsys)
    config = json.loads(json.dumps(documented["deit_t5"]))
    _acc_run(tmp_path / "runs" / "ce", "deit", config, "imagenet", 0, 74.0)
    assert "recipes.toml has no [paper_results.T99]" in _refusal([str(tmp_path / "runs"), "--paper", "T99"], capsys)
    err = _refusal([str(tmp_path / "runs"), "--paper", "T2"], capsys)
    assert "none of the inputs fills a cell of T2" in err and "python -m analysis.feature_metrics" in err
    out = tmp_path / "out"
    out.mkdir()  # an existing, empty --out folder is fine: only existing files are refused
    collect.main([str(tmp_path / "runs"), "--paper", "T5", "--out", str(out)])
    before = (out / "T5.csv").read_text()
    err = _refusal([str(tmp_path / "runs"), "--paper", "T5", "--out", str(out)], capsys)
    assert f"{out / 'collect.json'} exists" in err and "--force" in err
    collect.main([str(tmp_path / "runs"), "--paper", "T5", "--out", str(out), "--force"])
    assert (out / "T5.csv").read_text() == before
    assert "--paper all writes REPRODUCTION.md" in _refusal([str(tmp_path / "runs"), "--paper", "all"], capsys)


def test_a_log_without_run_json_and_a_repeated_seed_are_refused(documented, tmp_path, capsys):
    config = json.loads(json.dumps(documented["deit_t5"]))
    _acc_run(tmp_path / "a" / "ce", "deit", config, "imagenet", 0, 74.0)
    _acc_run(tmp_path / "a" / "ce_copy", "deit", config, "imagenet", 0, 74.0)  # the same seed again
    err = _refusal([str(tmp_path / "a"), "--paper", "T5"], capsys)
    assert "seed 0 twice" in err and str(tmp_path / "a" / "ce_copy") in err
    (tmp_path / "b" / "old").mkdir(parents=True)
    (tmp_path / "b" / "old" / "log.txt").write_text('{"epoch": 0, "test_acc1": 50.0}\n')
    err = _refusal([str(tmp_path / "b")], capsys)
    assert f"{tmp_path / 'b' / 'old'} has a training log but no run.json" in err


def test_field_lookup_finds_nested_and_resolved_loss_options():
    assert field({"loss.alpha_denominator": "E"}, "alpha_denominator") == "E"
    assert field({"loss_options.alpha_denominator": "E-1"}, "alpha_denominator") == "E-1"
    assert field({"a.x": 1, "b.x": 2}, "x") is MISSING  # ambiguous: never guessed
    # FFCV: loss.alpha_denominator is null unless given; the resolved value is loss.options.alpha_denominator
    ffcv = {"loss.alpha_denominator": None, "loss.options.alpha_denominator": "E-1"}
    assert field(ffcv, "alpha_denominator") == "E-1"
    assert field({"loss.alpha_start": 0.2, "loss.options.alpha_start": 0.2}, "alpha_start") == 0.2
    assert field({"loss.alpha_start": None, "loss.options.alpha_start": None}, "alpha_start") is MISSING


# --------------------------------------------------------------------------------------------------------------------
# one cell by hand: the verdict at its boundary, a row with fewer paper numbers than columns, the status counts
# --------------------------------------------------------------------------------------------------------------------
def _mmseg_record(method: str, seed: int, miou: float) -> dict[str, Any]:
    """An input record as analysis.inputs reads an MMSegmentation result (one method, no recipe check)."""
    return {"kind": "mmseg", "path": f"{method}/seed{seed}", "seed": seed, "fields": {"method": method},
            "key": (("method", method),), "values": {"miou": miou}, "finished": True, "estimate": False}


def test_cell_verdict_at_the_combined_std_and_table_status_counts():
    """ours = [0, 6, 3] → mean 3, sample std 3; paper 8 ± 4 → Δ = −5 and σ = √(3² + 4²) = 5 exactly: |Δ| = σ does
    not exceed σ. The paper gives no number for the second column (a row may list fewer numbers than columns)."""
    spec = {"caption": "hand table", "cite": "hand", "source": "mmseg", "metric": "miou", "digits": 2,
            "columns": [{"name": "A"}, {"name": "B"}],
            "rows": [{"name": "MaxSup", "match": {"method": "maxsup"}, "paper": ["8±4"]},
                     {"name": "CE", "match": {"method": "ce"}, "paper": ["2", "1±0.5"]}]}
    recipes = {"paper_results": {"TX": spec}, "recipes": {}}
    records = [_mmseg_record("maxsup", s, v) for s, v in enumerate((0.0, 6.0, 3.0))]
    records += [_mmseg_record("ce", s, v) for s, v in enumerate((1.0, 3.0))]  # mean 2, std √2
    result = build_table(records, recipes, "TX")
    cells = {(c["row"], c["column"]): c for r in result["rows"] for c in r["cells"]}
    a = cells[("MaxSup", "A")]
    assert (a["ours"]["mean"], a["ours"]["std"], a["ours"]["n"]) == (3.0, 3.0, 3)
    assert (a["diff"], a["combined_std"], a["exceeds"]) == (-5.0, 5.0, False)
    assert fmt_diff(a, 2) == "−5.00 (≤ σ)"
    b = cells[("MaxSup", "B")]
    assert b["paper"] is None and b["diff"] is None and b["ours"]["mean"] == 3.0
    ce = cells[("CE", "A")]  # Δ = 0 exactly: signed "+0.00"; σ = √2 from ours alone (the paper gives no std)
    assert ce["diff"] == 0.0 and ce["combined_std"] == pytest.approx(2 ** 0.5) and ce["exceeds"] is False
    assert fmt_diff(ce, 2) == "+0.00 (≤ σ)"
    ce_b = cells[("CE", "B")]  # Δ = 2 − 1 = 1 within σ = √(2 + 0.5²) = 1.5
    assert ce_b["diff"] == 1.0 and ce_b["combined_std"] == pytest.approx(1.5) and ce_b["exceeds"] is False
    st = table_status(result)
    assert {k: st[k] for k in ("cells", "ours", "within", "differs", "no_verdict", "missing")} == \
        {"cells": 3, "ours": 3, "within": 3, "differs": 0, "no_verdict": 0, "missing": 0}
    assert st["status"] == "reproduced" and st["missing_cells"] == []
    # without the CE runs two cells miss: "incomplete", and they are named
    partial = build_table(records[:3], recipes, "TX")
    st = table_status(partial)
    assert (st["ours"], st["missing"], st["status"]) == (1, 2, "incomplete")
    assert st["missing_cells"] == ["CE / A", "CE / B"]
    lines = {tuple(r[1:3]): r for r in csv.reader(io.StringIO(table_csv(partial)))}
    assert lines[("MaxSup", "A")][4:12] == ["3.0", "3.0", "3", "0 1 2", "8.0", "4.0", "-5.0", "5.0"]
    assert lines[("CE", "A")][4:10] == ["", "", "0", "", "2.0", ""]  # no runs: n = 0; the paper has no std
    # one CE run further from the paper than σ: "differs"
    records[3]["values"]["miou"] = 5.0  # ours [5, 3]: mean 4, std √2; A: Δ = 2 > √2; B: Δ = 3 > 1.5
    st = table_status(build_table(records, recipes, "TX"))
    assert (st["differs"], st["within"], st["status"]) == (2, 1, "differs")
