"""What ``analysis.collect`` reads, as one kind of record per input.

- a **run folder** (``run.json`` + the trainer's JSON-lines log): the last epoch's log line, and the best epoch's
  (highest top-1 on the evaluated split) as ``best_<key>``; the per-epoch timing
  (``train_seconds``, ``eval_seconds``, ``train_images_per_s``) averaged over the epochs that have it, or an estimate
  line ``{"estimate": true, "seconds_per_step": s, "steps_per_epoch": n, ...}`` when no epoch has it;
- an **analysis output** (``feature_metrics.json``, ``linear_transfer.json``, ``robustness.json``): one record per
  row (checkpoint name), whose method is the name's loss id (``MaxSup``, ``r50_maxsup``, ``Baseline`` → ``ce``);
- an **MMSegmentation 1.2.2 test result** (``<work_dir>/<timestamp>/<timestamp>.json``, written by
  ``tools/test.py``): ``mIoU`` (%), whose method is the loss id at the end of the work dir's name
  (``work_dirs/t9_maxsup``).

Each record: ``kind``, ``path``, ``seed`` (None where unknown), ``fields`` (what ``recipes.toml`` selectors look up),
``key`` (:func:`analysis.pooling.group_key`: records pool only when kind and key are equal), ``values`` (metric →
number), ``finished``, and for runs ``trainer``, ``config`` and ``hardware`` (device names × world size).
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

from analysis.pooling import flatten, group_key
from maxsup.errors import UserError
from maxsup.training import RUN_RECORD

ANALYSIS_OUTPUTS = ("feature_metrics", "linear_transfer", "robustness")
MMSEG_RESULT = re.compile(r"\d{8}_\d{6}")
#: method ids (the trainers' --loss names) and the names the analysis READMEs give checkpoints
METHOD_ALIASES = {"baseline": "ce", "labelsmoothing": "ls", "zipf-ls": "zipf", "zipfls": "zipf", "penalty": "lp"}
METHODS = ("ce", "ls", "zipf", "ols", "maxsup", "lp", "cp", "focal", "logitnorm", "adaptive-ls", "maxsup-adaptive",
           "ls-reg", "ls-err", "ls-err-alt")
TIMING_KEYS = ("train_seconds", "eval_seconds", "train_images_per_s")


def method_of(name: str) -> str | None:
    """The loss id a checkpoint / work-dir name stands for: the whole name, else its last ``-``/``_`` token."""
    low = name.strip().lower()
    for cand in (low, low.replace("_", "-"), re.split(r"[-_/ ]", low)[-1]):
        cand = METHOD_ALIASES.get(cand, cand)
        if cand in METHODS:
            return cand
    return None


def find_inputs(paths: list[Path]) -> dict[str, list[Path]]:
    """{"runs": run folders, "analysis": analysis JSONs, "mmseg": MMSeg result files} at or below each path.
    A folder with nothing of these is an error naming it."""
    found: dict[str, dict[Path, None]] = {"runs": {}, "analysis": {}, "mmseg": {}}
    for path in paths:
        if path.is_file():
            kind = _file_kind(path)
            if kind is None:
                raise UserError(f"{path} is neither a run folder, an analysis output ({', '.join(ANALYSIS_OUTPUTS)}"
                                ".json) nor an MMSegmentation result <timestamp>.json")
            found[kind][path] = None
            continue
        if not path.is_dir():
            raise UserError(f"{path} does not exist; pass run folders, analysis outputs or folders that contain them")
        if (path / RUN_RECORD).is_file():
            found["runs"][path] = None
            continue
        for log in sorted([*path.rglob("log.txt"), *path.rglob("log.jsonl")]):
            if not (log.parent / RUN_RECORD).is_file():  # a trainer's log without its record: never guessed
                raise UserError(f"{log.parent} has a training log but no {RUN_RECORD}; rerun it with this "
                                "repository's trainers or leave the folder out")
        hits = 0
        for f in sorted(path.rglob("*.json")):
            kind = "runs" if f.name == RUN_RECORD else _file_kind(f)
            if kind is not None:
                found[kind][f.parent if kind == "runs" else f] = None
                hits += 1
        if not hits:
            raise UserError(f"no {RUN_RECORD} (nor analysis output) in or below {path}; was it written by one of this "
                            "repository's trainers?")
    return {k: list(v) for k, v in found.items()}


def _file_kind(path: Path) -> str | None:
    if path.stem in ANALYSIS_OUTPUTS and path.suffix == ".json":
        return "analysis"
    if MMSEG_RESULT.fullmatch(path.stem) and path.parent.name == path.stem and path.suffix == ".json":
        return "mmseg"
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _log_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    if log.is_file():
        for n, text in enumerate(log.read_text().splitlines(), 1):
            if text.strip():
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError:
                    raise UserError(f"{log}:{n} is not a JSON line") from None
    return lines


def timing(lines: list[dict[str, Any]]) -> tuple[dict[str, float], bool]:
    """Per-epoch time of a run's log: (``{seconds_per_epoch, eval_seconds_per_epoch, train_images_per_s}`` as means
    over the epochs that log them, False), or from the last estimate line (seconds/step × steps/epoch), True."""
    epochs = [ln for ln in lines if isinstance(ln.get("epoch"), int) and "train_seconds" in ln]
    if epochs:
        out = {"seconds_per_epoch": statistics.fmean(e["train_seconds"] for e in epochs)}
        for key, name in (("eval_seconds", "eval_seconds_per_epoch"), ("train_images_per_s", "train_images_per_s")):
            vals = [e[key] for e in epochs if isinstance(e.get(key), (int, float))]
            if vals:
                out[name] = statistics.fmean(vals)
        return out, False
    estimates = [ln for ln in lines if ln.get("estimate") is True]
    if not estimates:
        return {}, False
    est, out = estimates[-1], {}
    if isinstance(est.get("train_seconds"), (int, float)):
        out["seconds_per_epoch"] = float(est["train_seconds"])
    elif isinstance(est.get("seconds_per_step"), (int, float)) and isinstance(est.get("steps_per_epoch"), int):
        out["seconds_per_epoch"] = est["seconds_per_step"] * est["steps_per_epoch"]
    if isinstance(est.get("train_images_per_s"), (int, float)):
        out["train_images_per_s"] = float(est["train_images_per_s"])
    return out, True


def read_run(folder: Path) -> dict[str, Any]:
    """One run folder → a record (see the module docstring)."""
    if not (folder / RUN_RECORD).is_file():
        raise UserError(f"{folder} has no {RUN_RECORD}; pass run folders written by this repository's trainers")
    rec = _read_json(folder / RUN_RECORD)
    missing = [k for k in ("trainer", "config", "log_file", "epochs", "seed") if k not in rec]
    if missing:
        raise UserError(f"{folder / RUN_RECORD} has no {', '.join(missing)}; was it written by one of this "
                        "repository's trainers?")
    lines = _log_lines(folder / rec["log_file"])
    epochs = [ln for ln in lines if isinstance(ln.get("epoch"), int)]
    last = epochs[-1] if epochs else {}
    values = {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for alias, log_key in rec.get("metric_keys", {}).items():
        if isinstance(last.get(log_key), (int, float)):
            values[alias] = last[log_key]
    acc_key = rec.get("metric_keys", {}).get("acc1")
    scored = [ln for ln in epochs if isinstance(ln.get(acc_key), (int, float))]
    if scored:  # the best epoch on the evaluated split: what the authors' LT code reports as its "val" rows (T7)
        best = max(scored, key=lambda ln: ln[acc_key])
        values.update({f"best_{k}": v for k, v in best.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"})
        values["best_acc1"], values["best_epoch"] = best[acc_key], best["epoch"]
    times, estimate = timing(lines)
    values.update(times)
    finished = bool(epochs) and last["epoch"] >= rec["epochs"] - 1 and "acc1" in values
    config = rec["config"]
    derived = {"trainer": rec["trainer"], "dataset": rec.get("dataset"), "model": rec.get("model")}
    flat = flatten(config)  # FFCV: training.finetune (train.finetune in runs before its OmegaConf config)
    finetune = flat.get("finetune") or flat.get("training.finetune") or flat.get("train.finetune")
    if finetune:
        derived["finetune_method"] = _pretrained_method(str(finetune))
    fields = {**flat, **derived, "loss": rec.get("loss")}
    prov = rec.get("provenance", {})
    hardware = f"{prov.get('world_size', '?')} × {', '.join(sorted(set(prov.get('device_names') or ['?'])))}"
    return {"kind": "runs", "path": str(folder), "seed": rec["seed"], "fields": fields,
            "key": group_key(config, derived), "values": values, "finished": finished, "estimate": estimate,
            "trainer": rec["trainer"], "config": config, "hardware": hardware, "epochs": rec["epochs"],
            "last_epoch": last.get("epoch"), "alpha": rec.get("alpha"), "recipe_fingerprint": rec.get("recipe"),
            "git_commit": prov.get("git_commit")}


def _pretrained_method(path: str) -> str | None:
    """The loss of the run that wrote a fine-tuning checkpoint: its run.json beside it when readable, else the
    first folder name (from the checkpoint upwards) that names a loss id."""
    ckpt = Path(path)
    for parent in ckpt.parents:
        if parent == Path(".") or parent == parent.parent:  # the working directory or / is no run folder
            break
        if (parent / RUN_RECORD).is_file():
            try:
                return json.loads((parent / RUN_RECORD).read_text()).get("loss")
            except (OSError, json.JSONDecodeError):
                break
    for part in reversed(ckpt.parts[:-1]):
        if method_of(part):
            return method_of(part)
    return None


def read_analysis(path: Path) -> list[dict[str, Any]]:
    """One analysis output → one record per row; settings (everything but the rows) form the key."""
    data = _read_json(path)
    if not isinstance(data, dict):  # a JSON array or number under an analysis output's name
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not an object; was it written by python -m "
                        f"analysis.{path.stem}?")
    rows = data.get("checkpoints") if path.stem == "robustness" else data.get("rows")
    if not isinstance(rows, dict):
        raise UserError(f"{path} has no rows; was it written by python -m analysis.{path.stem}?")
    settings = {k: v for k, v in data.items() if k not in ("rows", "checkpoints", "script")}
    flat = flatten(settings)
    grid = data.get("lambda_grid")
    if isinstance(grid, list) and grid:
        flat.update(lambda_count=len(grid), lambda_min=min(grid), lambda_max=max(grid))
    out = []
    for name, row in rows.items():
        method = method_of(name)
        values = {k: v for k, v in flatten(row).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out.append({"kind": path.stem, "path": f"{path}#{name}", "seed": None,
                    "fields": {**flat, "method": method, "name": name},
                    "key": group_key(settings, {"method": method}), "values": values, "finished": True,
                    "estimate": False})
    return out


def read_mmseg(path: Path) -> dict[str, Any]:
    """An MMSeg 1.2.2 ``tools/test.py`` result: ``{"aAcc": .., "mIoU": .., "mAcc": .., ...}`` (%). With a config dump
    (``*.py``) in the work dir, a test without ``--tta`` (no ``SegTTAModel`` in it) is refused as single-scale."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("mIoU"), (int, float)):
        raise UserError(f"{path} has no mIoU; pass the <timestamp>.json that MMSegmentation's tools/test.py writes")
    work_dir = path.parent.parent
    configs = sorted(work_dir.glob("*.py"))
    if configs and not any("SegTTAModel" in c.read_text() for c in configs):
        raise UserError(f"{path} is a single-scale test ({configs[0].name} has no SegTTAModel); Table 9 reports "
                        "multi-scale mIoU: rerun tools/test.py with --tta")
    method = method_of(work_dir.name)
    values = {k: v for k, v in data.items() if isinstance(v, (int, float))}
    return {"kind": "mmseg", "path": str(path), "seed": None, "fields": {"method": method, "work_dir": work_dir.name},
            "key": (("method", method),), "values": values, "finished": True, "estimate": False}


def read_inputs(paths: list[Path]) -> list[dict[str, Any]]:
    """Every record at or below ``paths``."""
    found = find_inputs(paths)
    records = [read_run(f) for f in found["runs"]]
    for f in found["analysis"]:
        records += read_analysis(f)
    records += [read_mmseg(f) for f in found["mmseg"]]
    return records
