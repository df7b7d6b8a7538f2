"""`make demo`: the paper's CE / LS / MaxSup comparison in miniature on Fashion-MNIST, on a CPU, in minutes.

    python demo/run_demo.py                       # 1 seed, default scale (≈ 15 CPU-minutes of work on 2 cores)
    SEEDS=3 python demo/run_demo.py               # the committed version (results/demo/README.md)
    DEMO_SCALE=smoke python demo/run_demo.py      # < 3 minutes, run by tests/test_demo.py
    DEMO_LOSSES=all python demo/run_demo.py       # adds OLS, Zipf-LS and Logit Penalty

Steps, all through the repository's command-line tools (one subprocess each), the same recipe and seed per method:
1. ``data/prepare_fashion_mnist.py`` checks (or, without the Debian package, downloads) Fashion-MNIST;
2. ``Conv/common_resnet/train.py`` trains a width-16 CIFAR ResNet-10 and ``Deit/train_with_MaxSup.sh`` (its
   embedded default) a tiny ViT, on the source classes 0,2,4,6,8, once per loss and seed;
3. ``analysis/*.py`` measure accuracy/NLL/ECE, d̄_within/d̄_total/R² (Table 2), the held-out-class linear probe
   (Table 3), and draw Grad-CAM (Figure 2), logit (Figure 5), projection (Figure 3) and reliability plots;
4. ``results/demo/summary.json`` (mean/std over seeds) and ``results/demo/README.md`` (tables, figures, and the
   paper-vs-miniature verdicts) are written; per-run checkpoints, logs and test logits stay in ``results/demo/runs/``.

A finished run (same command, complete log) is reused, so an interrupted demo restarts where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # recipe / orchestration / report beside this file

from orchestration import Job, _child_env, _fmt_time, run_jobs  # noqa: E402
from recipe import (  # noqa: E402
    BACKBONES,
    CORE_LOSSES,
    DEMO_CORRUPTIONS,
    DEMO_SEVERITIES,
    EXTRA_LOSSES,
    LABELS,
    LT_LOSSES,
    RESNET_RECIPE,
    ROOT,
    SCALES,
    VIT_RECIPE,
    analysis_jobs,
    lt_train_command,
    run_identity,
    run_is_complete,
    train_command,
)
from report import (  # noqa: E402
    aggregate,
    aggregate_long_tail,
    ckpt_name,
    collect_long_tail,
    collect_seed,
    paired_differences,
    verdicts,
    write_readme,
)

from maxsup.checkpoint import atomic_write  # noqa: E402
from maxsup.cli import run_cli  # noqa: E402
from maxsup.data.fashion_mnist import HELD_OUT_CLASSES, SOURCE_CLASSES, find_fashion_mnist  # noqa: E402
from maxsup.errors import UserError  # noqa: E402


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=int(os.environ.get("SEEDS", "1")),
                   help="number of seeds 0..N-1 (env SEEDS; default 1)")
    p.add_argument("--scale", choices=tuple(SCALES), default=os.environ.get("DEMO_SCALE", "default"),
                   help="default (≈15 min on 2 cores for 1 seed), full (default + the long-tailed Table 7 "
                        "analogue) or smoke (< 3 min, CI) (env DEMO_SCALE)")
    p.add_argument("--losses", default=os.environ.get("DEMO_LOSSES", "core"),
                   help="core (ce,ls,maxsup), all (adds ols,zipf,lp) or a comma list (env DEMO_LOSSES)")
    p.add_argument("--backbones", default="resnet,vit", help="comma list of resnet, vit")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "demo", help="summary.json, README.md, PNGs")
    p.add_argument("--runs-dir", type=Path, default=None, help="checkpoints and analysis (default: <out>/runs)")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("DEMO_JOBS", "2")),
                   help="subprocesses run at once (env DEMO_JOBS; default 2 = the cores of the reference machine)")
    p.add_argument("--long-tail", action="store_true", default=os.environ.get("DEMO_LT", "") not in ("", "0"),
                   help="also train the long-tailed Table 7 analogue (on by default with --scale full; env DEMO_LT)")
    p.add_argument("--fresh", action="store_true", help="retrain even when a finished run with the same command exists")
    return p


def resolve_losses(text: str) -> list[str]:
    if text == "core":
        return list(CORE_LOSSES)
    if text == "all":
        return list(CORE_LOSSES + EXTRA_LOSSES)
    losses = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in losses if x not in LABELS]
    if bad or not set(CORE_LOSSES) <= set(losses):
        raise UserError(f"--losses/DEMO_LOSSES must be core, all, or a comma list containing ce,ls,maxsup from "
                        f"{','.join(LABELS)}; got {text!r}")
    return losses


def prepare_data(runs: Path, scale_name: str) -> tuple[str | None, list[str]]:
    """Step 1: Fashion-MNIST through ``data/prepare_fashion_mnist.py``. Returns the trainers' ``--data-path`` (None:
    the Debian package) and the analysis scripts' dataset flags.

    Without the Debian package the tool downloads the IDX files into ``datasets/fmnist``. The smoke scale analyses a
    40-image-per-class image folder written by the tool (the same first-40 images the smoke trainers use), so the
    analysis scripts run on real images in seconds; the default scale analyses the IDX files in full."""
    data_path = None
    try:
        find_fashion_mnist(None, True), find_fashion_mnist(None, False)
    except UserError:
        data_path = str(ROOT / "datasets" / "fmnist")
        print(f"[data] the Debian package dataset-fashion-mnist is missing: downloading into {data_path}", flush=True)
    smoke = scale_name == "smoke"
    folder = runs / "data"
    cmd = [sys.executable, str(ROOT / "data/prepare_fashion_mnist.py"), "--out", str(folder), "--formats",
           "imagefolder", "--limit-per-class", "40" if smoke else "1"]
    if data_path:
        cmd += ["--root", data_path, "--download"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_child_env({}), capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"preparing Fashion-MNIST failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    print(f"[data] Fashion-MNIST ready ({data_path or 'Debian package /usr/share/datasets/fashion-mnist'}); "
          f"{proc.stdout.strip()}", flush=True)
    if smoke:
        return data_path, ["--dataset", "imagefolder", "--data-path", str(folder / "imagefolder")]
    return data_path, ["--dataset", "fmnist", *(["--data-path", data_path] if data_path else [])]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    if args.seeds < 1:
        raise UserError(f"--seeds/SEEDS must be at least 1, got {args.seeds}")
    if args.jobs < 1:
        raise UserError(f"--jobs/DEMO_JOBS must be at least 1, got {args.jobs}")
    losses, scale = resolve_losses(args.losses), SCALES[args.scale]
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if not backbones or any(b not in BACKBONES for b in backbones):
        raise UserError(f"--backbones must be a comma list of {', '.join(BACKBONES)}, got {args.backbones!r}")
    out = args.out.resolve()
    runs = (args.runs_dir or out / "runs").resolve()
    seeds = list(range(args.seeds))
    t0 = time.time()
    print(f"[demo] scale {args.scale}, seeds {seeds}, losses {','.join(losses)}, backbones {','.join(backbones)}, "
          f"{args.jobs} parallel jobs; outputs in {out}", flush=True)
    data_path, analysis_data = prepare_data(runs, args.scale)

    # Step 2: training, every (seed, backbone, loss); finished runs with the same command are reused.
    jobs = []
    for seed in seeds:
        for bb in backbones:
            for loss in losses:
                run_dir = runs / f"seed{seed}" / bb / loss
                cmd = train_command(bb, loss, seed, run_dir, scale, data_path)
                identity = run_identity(bb, cmd)
                if not args.fresh and run_is_complete(run_dir, identity, scale.epochs[bb]):
                    print(f"[train] reuse {bb}/{loss} seed {seed} ({run_dir})", flush=True)
                    continue
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "log.txt").unlink(missing_ok=True)  # a stale log would confuse the completeness check
                atomic_write(run_dir / "demo_cmd.json", json.dumps(identity, indent=1))
                jobs.append(Job(f"{bb}/{loss} seed {seed}", [cmd], run_dir / "train.out", epochs=scale.epochs[bb]))
    long_tail = args.long_tail or scale.long_tail
    if long_tail:  # Table 7 analogue: only the ResNet recipe, on the long-tailed split
        for seed in seeds:
            for loss in LT_LOSSES:
                run_dir = runs / f"seed{seed}" / "lt" / loss
                cmd = lt_train_command(loss, seed, run_dir, scale, data_path)
                identity = run_identity("resnet", cmd)
                if not args.fresh and run_is_complete(run_dir, identity, scale.epochs["resnet"]):
                    print(f"[train] reuse lt/{loss} seed {seed} ({run_dir})", flush=True)
                    continue
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "log.txt").unlink(missing_ok=True)
                atomic_write(run_dir / "demo_cmd.json", json.dumps(identity, indent=1))
                jobs.append(Job(f"lt/{loss} seed {seed}", [cmd], run_dir / "train.out", epochs=scale.epochs["resnet"]))
    t_train = time.time()
    run_jobs(jobs, args.jobs, "train")
    train_wall = time.time() - t_train
    for job in jobs:
        atomic_write(job.log.parent / "demo_time.json", json.dumps({"wall_s": job.wall_s, "cpu_s": job.cpu_s}))

    # Step 3: analysis, one feature extraction per seed, then independent chains over the shared cache.
    extract_jobs, chain_jobs = [], []
    for seed in seeds:
        sdir = runs / f"seed{seed}"
        ckpts = {ckpt_name(bb, loss): sdir / bb / loss / "checkpoint.pth" for bb in backbones for loss in losses}
        shutil.rmtree(sdir / "analysis", ignore_errors=True)  # results always match the current checkpoints
        extract, chains = analysis_jobs(ckpts, sdir / "analysis", scale, analysis_data, seed == seeds[0])
        extract_jobs.append(Job(f"extract seed {seed}", [extract], sdir / "logs" / "extract.out"))
        chain_jobs += [Job(f"{Path(c[0][1]).stem} seed {seed}", c, sdir / "logs" / f"{Path(c[0][1]).stem}.out",
                           weight=len(c)) for c in chains]
    t_analysis = time.time()
    run_jobs(extract_jobs, args.jobs, "extract")
    run_jobs(chain_jobs, args.jobs, "analysis")
    analysis_wall, analysis_cpu = time.time() - t_analysis, sum(j.cpu_s for j in extract_jobs + chain_jobs)

    # Step 4: summary.json, figures, README.md.
    per_seed = [collect_seed(runs / f"seed{s}", backbones, losses) for s in seeds]
    per_backbone = {bb: aggregate([p[bb] for p in per_seed]) for bb in backbones}
    figures = {}
    for key in ("gradcam", "logits", "projection", "calibration"):
        src = runs / f"seed{seeds[0]}" / "analysis" / f"{key}.png"
        if src.is_file():
            atomic_write(out / f"{key}.png", src.read_bytes())
            figures[key] = f"{key}.png"
    run_times = {}
    for seed in seeds:
        for bb in backbones:
            for loss in losses:
                try:
                    t = json.loads((runs / f"seed{seed}" / bb / loss / "demo_time.json").read_text())
                except (OSError, ValueError):
                    t = None  # reused run made before timing records existed
                run_times[f"{bb}/{loss}/seed{seed}"] = t
    known = [t for t in run_times.values() if t]
    timing = {
        "invocation_wall_min": (time.time() - t0) / 60, "train_phase_wall_min": train_wall / 60,
        "runs_trained_now": len(jobs), "runs_reused": len(run_times) - len(jobs),
        "train_cpu_min_sum": sum(t["cpu_s"] for t in known) / 60,
        "train_wall_min_sum": sum(t["wall_s"] for t in known) / 60,
        "train_runs_without_record": sum(t is None for t in run_times.values()),
        "analysis_wall_min": analysis_wall / 60, "analysis_cpu_min": analysis_cpu / 60, "runs": run_times,
    }
    env_cmd = " ".join(f"{k}={v}" for k, v in (("SEEDS", args.seeds), ("DEMO_SCALE", args.scale),
                                                  ("DEMO_LOSSES", args.losses)))
    config = {
        "command": f"{env_cmd} make demo", "scale": args.scale, "losses": losses, "backbones": backbones,
        "source_classes": list(SOURCE_CLASSES), "held_out_classes": list(HELD_OUT_CLASSES),
        "probe_per_class": scale.probe_per_class, "epochs": scale.epochs,
        "robustness_per_class": scale.robustness_per_class, "corruptions": list(DEMO_CORRUPTIONS),
        "severities": list(DEMO_SEVERITIES),
        "recipes": {"resnet": RESNET_RECIPE, "vit": VIT_RECIPE},
        "scale_overrides": {"resnet": list(scale.resnet_extra), "vit": list(scale.vit_extra),
                            "linear_transfer": list(scale.probe_extra)},
        "test_images": scale.test_images,
        "alpha": {"start": 0.1, "end": 0.2, "schedule": "linear per epoch"},
        "units": {"acc": "%", "transfer_acc": "%", "ece": "fraction, 15 equal-width bins",
                  "misclassified_train_log": "fraction", "misclassified_train_final": "fraction"},
        "std": "sample std (ddof=1) over seeds; null with one seed",
        "jobs": args.jobs, "timing": timing, "long_tail": long_tail,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    summary = {"config": config, "seeds": seeds, "backbones": per_backbone}
    summary["verdicts"] = verdicts(per_backbone)
    summary["paired"] = paired_differences(per_backbone)
    if long_tail:
        summary["long_tail"] = aggregate_long_tail([collect_long_tail(runs / f"seed{s}" / "lt", list(LT_LOSSES))
                                                    for s in seeds])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_readme(out, summary, figures)
    print(f"[demo] done in {_fmt_time(time.time() - t0)} (CPU: training {timing['train_cpu_min_sum']:.1f} min, "
          f"analysis {timing['analysis_cpu_min']:.1f} min): "
          f"{out / 'summary.json'}, {out / 'README.md'}", flush=True)
    for bb, methods in per_backbone.items():
        print(f"[demo] {bb}: " + "; ".join(
            f"{LABELS[m]} acc {s['acc']['mean']:.2f} ece {s['ece']['mean']:.3f} "
            f"d_within {s['d_within_test']['mean']:.3f} R² {s['r2_test']['mean']:.3f} "
            f"transfer {s['transfer_acc']['mean']:.2f}" for m, s in methods.items()))
    return summary


if __name__ == "__main__":
    run_cli(main)
