"""`make demo`: the paper's CE / LS / MaxSup comparison in miniature on Fashion-MNIST, on a CPU, in minutes.

    python demo/run_demo.py                       # 1 seed, default scale (≈ 15 CPU-minutes of work on 2 cores)
    SEEDS=5 DEMO_LT=1 DEMO_AUG=all DEMO_AUG_SEEDS=1 python demo/run_demo.py --update-reference  # results/demo/
    DEMO_SCALE=smoke python demo/run_demo.py      # < 3 minutes, run by tests/test_demo.py
    DEMO_LOSSES=all python demo/run_demo.py       # adds OLS, Zipf-LS and Logit Penalty
    DEMO_AUG=smmix,tokenlabel python demo/run_demo.py  # adds the ViT with SMMix / MixToken + token labels (extension)
    DEMO_AUG=all python demo/run_demo.py --aug-only --out results/demo/aug  # only those (+ CE ViT, CE ResNet)

Steps, all through the repository's command-line tools (one subprocess each), the same recipe and seed per method:
1. ``data/prepare_fashion_mnist.py`` checks (or, without the Debian package, downloads) Fashion-MNIST;
2. ``Conv/common_resnet/train.py`` trains a width-16 CIFAR ResNet-10 and ``Deit/train_with_MaxSup.sh`` (its
   embedded default) a tiny ViT, on the source classes 0,2,4,6,8, once per loss and seed;
3. ``analysis/*.py`` measure accuracy/NLL/ECE, d̄_within/d̄_total/R² (Table 2), the held-out-class linear probe
   (Table 3), and draw Grad-CAM (Figure 2), logit (Figure 5), projection (Figure 3) and reliability plots;
4. ``summary.json`` (mean/std over seeds) and ``README.md`` (tables, figures, the paper-vs-miniature verdicts, and
   this run beside the committed reference) are written to ``results/demo-local/`` (git-ignored); per-run
   checkpoints, logs and test logits stay in its ``runs/``. The committed 5-seed reference in ``results/demo/`` is
   rewritten only with ``--update-reference``.

A finished run (same command, complete log) is reused, so an interrupted demo restarts where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
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
    AUG_BASELINE,
    AUG_METHODS,
    AUG_TEACHER,
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
    aug_analysis_jobs,
    aug_train_command,
    lt_train_command,
    resolve_aug,
    run_identity,
    run_is_complete,
    token_label_command,
    train_command,
)
from report import (  # noqa: E402
    AUG_METRICS,
    add_long_tail_verdicts,
    aggregate,
    aggregate_long_tail,
    aug_ckpt_name,
    aug_section,
    ckpt_name,
    collect_aug,
    collect_long_tail,
    collect_seed,
    corruption_constants,
    paired_differences,
    verdicts,
    write_readme,
)

from maxsup.cli import run_cli  # noqa: E402
from maxsup.data.fashion_mnist import HELD_OUT_CLASSES, SOURCE_CLASSES, find_fashion_mnist  # noqa: E402
from maxsup.errors import UserError  # noqa: E402
from maxsup.losses import loss_defaults  # noqa: E402
from maxsup.training import atomic_write  # noqa: E402

#: the committed reference (SEEDS=5 ... --update-reference) and where a plain `make demo` writes (git-ignored)
REFERENCE_OUT = ROOT / "results" / "demo"
LOCAL_OUT = ROOT / "results" / "demo-local"


def resolve_out(out: Path | None, update_reference: bool) -> Path:
    """Where the demo writes: the git-ignored ``results/demo-local`` by default; the committed reference only with
    ``--update-reference`` (an explicit ``--out`` naming the reference without it is refused)."""
    if update_reference:
        if out is not None and out.resolve() != REFERENCE_OUT.resolve():
            raise UserError(f"--update-reference writes {REFERENCE_OUT}; drop --out {out}")
        return REFERENCE_OUT.resolve()
    out = (out or LOCAL_OUT).resolve()
    if out == REFERENCE_OUT.resolve():
        raise UserError(f"{out} holds the committed reference; pass --update-reference to rewrite it")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=int(os.environ.get("SEEDS", "1")),
                   help="number of seeds 0..N-1 (env SEEDS; default 1)")
    p.add_argument("--scale", choices=tuple(SCALES), default=os.environ.get("DEMO_SCALE", "default"),
                   help="default (≈15 min on 2 cores for 1 seed), full (default + the long-tailed Table 7 "
                        "analogue + the SMMix / Token Labeling runs) or smoke (< 3 min, CI) (env DEMO_SCALE)")
    p.add_argument("--losses", default=os.environ.get("DEMO_LOSSES", "core"),
                   help="core (ce,ls,maxsup), all (adds ols,zipf,lp) or a comma list (env DEMO_LOSSES)")
    p.add_argument("--backbones", default="resnet,vit", help="comma list of resnet, vit")
    p.add_argument("--out", type=Path, default=None,
                   help=f"summary.json, README.md, PNGs (default: {LOCAL_OUT.relative_to(ROOT)}/, git-ignored)")
    p.add_argument("--update-reference", action="store_true",
                   help=f"write the committed reference {REFERENCE_OUT.relative_to(ROOT)}/ instead (its README, "
                        "summary.json and figures)")
    p.add_argument("--runs-dir", type=Path, default=None, help="checkpoints and analysis (default: <out>/runs)")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("DEMO_JOBS", "2")),
                   help="subprocesses run at once (env DEMO_JOBS; default 2 = the cores of the reference machine)")
    p.add_argument("--long-tail", action="store_true", default=os.environ.get("DEMO_LT", "") not in ("", "0"),
                   help="also train the long-tailed Table 7 analogue (on by default with --scale full; env DEMO_LT)")
    p.add_argument("--aug", default=os.environ.get("DEMO_AUG", ""),
                   help="also train the ViT with SMMix and/or MixToken + token labels under CE/LS/MaxSup: all, or a "
                        "comma list of smmix,tokenlabel (an extension, not in the paper; on with --scale full; env "
                        "DEMO_AUG)")
    p.add_argument("--aug-seeds", type=int, default=int(os.environ.get("DEMO_AUG_SEEDS", "0")),
                   help="train the --aug runs for the first N seeds only (0 = every seed; env DEMO_AUG_SEEDS): they "
                        "cost about twice the core ViT runs")
    p.add_argument("--aug-only", action="store_true",
                   help="train and analyse only the --aug runs, the CE ViT they are compared with and their "
                        "teacher (the CE ResNet); writes <out>/summary.json and <out>/README.md with their table only")
    p.add_argument("--fresh", action="store_true", help="retrain even when a finished run with the same command exists")
    return p


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (the README shows where runs are reused from)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


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


def prepare_source_folder(runs: Path, data_path: str | None, scale_name: str) -> Path:
    """The source classes as an image folder (relabelled 0..4) for the Token Labeling runs, written once by
    ``data/prepare_fashion_mnist.py`` (reused while its command is unchanged)."""
    folder = runs / "data" / "source"
    cmd = [sys.executable, str(ROOT / "data/prepare_fashion_mnist.py"), "--out", str(folder), "--formats",
           "imagefolder", "--classes", *SOURCE_STR]
    if scale_name == "smoke":
        cmd += ["--limit-per-class", "40"]
    if data_path:
        cmd += ["--root", data_path, "--download"]
    stamp = folder / "demo_cmd.json"
    try:
        if json.loads(stamp.read_text()) == cmd[1:]:
            return folder / "imagefolder"
    except (OSError, ValueError):
        pass
    proc = subprocess.run(cmd, cwd=ROOT, env=_child_env({}), capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"writing the source-class image folder failed: "
                        f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    atomic_write(stamp, json.dumps(cmd[1:]))
    print(f"[data] source-class image folder for Token Labeling: {folder / 'imagefolder'} {proc.stdout.strip()}",
          flush=True)
    return folder / "imagefolder"


SOURCE_STR = [str(c) for c in SOURCE_CLASSES]


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _queue_run(jobs: list[Job], name: str, run_dir: Path, cmd: list[str], identity: dict[str, Any], epochs: int,
               fresh: bool) -> None:
    """Queue a training run unless a finished one with the same identity exists."""
    if not fresh and run_is_complete(run_dir, identity, epochs):
        print(f"[train] reuse {name} ({run_dir})", flush=True)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "log.txt").unlink(missing_ok=True)  # a stale log would confuse the completeness check
    atomic_write(run_dir / "demo_cmd.json", json.dumps(identity, indent=1))
    jobs.append(Job(name, [cmd], run_dir / "train.out", epochs=epochs))


def run_aug(args: argparse.Namespace, aug: list[str], seeds: list[int], runs: Path, scale: Any,
            data_path: str | None, analysis_data: list[str]) -> dict[str, Any]:
    """SMMix / Token Labeling: label maps from each seed's CE ResNet, the runs, their analysis; returns the summary
    entry ``{"methods", "losses", "probe_per_class", "results": {method: {loss: {metric: stats}}}}``."""
    folder = prepare_source_folder(runs, data_path, args.scale) if "tokenlabel" in aug else runs / "data"
    label_jobs = []
    for seed in seeds:
        if "tokenlabel" not in aug:
            break
        teacher = runs / f"seed{seed}" / AUG_TEACHER[0] / AUG_TEACHER[1] / "checkpoint.pth"
        labels = runs / f"seed{seed}" / "token_labels"
        stamp = {"teacher_sha1": _sha1(teacher), "cmd": token_label_command(teacher, folder, labels)[1:]}
        try:
            done = json.loads((labels / "demo_labels.json").read_text()) == stamp
        except (OSError, ValueError):
            done = False
        if done:
            print(f"[labels] reuse {labels}", flush=True)
            continue
        shutil.rmtree(labels, ignore_errors=True)  # maps of another teacher must not be resumed
        cmds = [token_label_command(teacher, folder, labels),
                [sys.executable, "-c", "import json, sys; from maxsup.training import atomic_write; "
                 "atomic_write(sys.argv[1], sys.argv[2])", str(labels / "demo_labels.json"), json.dumps(stamp)]]
        label_jobs.append(Job(f"token labels seed {seed}", cmds, runs / f"seed{seed}" / "logs" / "token_labels.out"))
    run_jobs(label_jobs, args.jobs, "labels")

    jobs: list[Job] = []
    for seed in seeds:
        teacher = runs / f"seed{seed}" / AUG_TEACHER[0] / AUG_TEACHER[1] / "checkpoint.pth"
        for method in aug:
            for loss in CORE_LOSSES:
                run_dir = runs / f"seed{seed}" / f"vit_{method}" / loss
                cmd = aug_train_command(method, loss, seed, run_dir, scale, data_path, folder,
                                        runs / f"seed{seed}" / "token_labels")
                identity = run_identity("vit_aug", cmd)
                if method == "tokenlabel":
                    identity["teacher_sha1"] = _sha1(teacher)
                _queue_run(jobs, f"vit+{method}/{loss} seed {seed}", run_dir, cmd, identity, scale.epochs["vit"],
                           args.fresh)
    run_jobs(jobs, args.jobs, "train-aug")

    chain_jobs = []
    for seed in seeds:
        sdir = runs / f"seed{seed}"
        ckpts = {aug_ckpt_name(m, loss): sdir / f"vit_{m}" / loss / "checkpoint.pth" for m in aug
                 for loss in CORE_LOSSES}
        ckpts = {ckpt_name(*AUG_BASELINE): sdir / AUG_BASELINE[0] / AUG_BASELINE[1] / "checkpoint.pth", **ckpts}
        shutil.rmtree(sdir / "analysis_aug", ignore_errors=True)
        chain = aug_analysis_jobs(ckpts, sdir / "analysis_aug", scale, analysis_data)
        chain_jobs.append(Job(f"aug analysis seed {seed}", chain, sdir / "logs" / "analysis_aug.out",
                              weight=len(chain)))
    run_jobs(chain_jobs, args.jobs, "analysis-aug")
    per_seed = [collect_aug(runs / f"seed{s}", aug, list(CORE_LOSSES)) for s in seeds]
    results = {m: aggregate([p[m] for p in per_seed], AUG_METRICS) for m in per_seed[0]}
    return {"methods": aug, "losses": list(CORE_LOSSES), "seeds": seeds, "probe_per_class": scale.probe_per_class,
            "paired": paired_differences(results, AUG_METRICS),
            "timing_min": {"train_runs_trained_now": len(jobs),
                           "train_cpu_min_sum": sum(j.cpu_s for j in jobs) / 60,
                           "labels_cpu_min": sum(j.cpu_s for j in label_jobs) / 60,
                           "analysis_cpu_min": sum(j.cpu_s for j in chain_jobs) / 60},
            "results": results}


def run_timing(runs: Path, seeds: list[int], runs_of_seed: list[tuple[str, str]], trained_now: int
               ) -> dict[str, Any]:
    """Timing records (``demo_time.json``, written when a run finishes in this or an earlier invocation) of every
    training run in the report: counts, summed CPU and wall minutes over the runs that have one, and per run."""
    run_times = {}
    for seed in seeds:
        for group, loss in runs_of_seed:
            try:
                t = json.loads((runs / f"seed{seed}" / group / loss / "demo_time.json").read_text())
            except (OSError, ValueError):
                t = None  # reused run whose invocation was interrupted before it wrote its timing
            run_times[f"{group}/{loss}/seed{seed}"] = t
    known = [t for t in run_times.values() if t]
    return {"runs_trained_now": trained_now, "runs_reused": len(run_times) - trained_now,
            "train_cpu_min_sum": sum(t["cpu_s"] for t in known) / 60,
            "train_wall_min_sum": sum(t["wall_s"] for t in known) / 60,
            "train_runs_without_record": len(run_times) - len(known), "runs": run_times}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    if args.seeds < 1:
        raise UserError(f"--seeds/SEEDS must be at least 1, got {args.seeds}")
    if args.jobs < 1:
        raise UserError(f"--jobs/DEMO_JOBS must be at least 1, got {args.jobs}")
    losses, scale = resolve_losses(args.losses), SCALES[args.scale]
    aug = resolve_aug(args.aug) or (list(AUG_METHODS) if scale.aug else [])
    if args.aug_only and not aug:
        raise UserError("--aug-only needs --aug/DEMO_AUG (all, or a comma list of smmix,tokenlabel)")
    if not 0 <= args.aug_seeds <= args.seeds:
        raise UserError(f"--aug-seeds/DEMO_AUG_SEEDS must be between 0 (every seed) and --seeds/SEEDS "
                        f"({args.seeds}), got {args.aug_seeds}")
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if not backbones or any(b not in BACKBONES for b in backbones):
        raise UserError(f"--backbones must be a comma list of {', '.join(BACKBONES)}, got {args.backbones!r}")
    out = resolve_out(args.out, args.update_reference)
    runs = (args.runs_dir or out / "runs").resolve()
    seeds = list(range(args.seeds))
    t0 = time.time()
    print(f"[demo] scale {args.scale}, seeds {seeds}, losses {','.join(losses)}, backbones {','.join(backbones)}, "
          f"{args.jobs} parallel jobs; outputs in {out}", flush=True)
    data_path, analysis_data = prepare_data(runs, args.scale)
    if args.aug_only:
        return main_aug_only(args, aug, seeds, runs, out, scale, data_path, analysis_data, t0)

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
    needed = {AUG_BASELINE[0]} | ({AUG_TEACHER[0]} if "tokenlabel" in aug else set())
    if aug and not needed <= set(backbones):
        raise UserError("--aug/DEMO_AUG needs the vit backbone (the baseline) and, for tokenlabel, the resnet one (its "
                        "CE run labels the tokens)")
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
    aug_seeds = seeds[:args.aug_seeds or len(seeds)]
    aug_summary = run_aug(args, aug, aug_seeds, runs, scale, data_path, analysis_data) if aug else None

    # Step 4: summary.json, figures, README.md.
    per_seed = [collect_seed(runs / f"seed{s}", backbones, losses) for s in seeds]
    per_backbone = {bb: aggregate([p[bb] for p in per_seed]) for bb in backbones}
    figures = {}
    for key in ("gradcam", "logits", "projection", "calibration"):
        src = runs / f"seed{seeds[0]}" / "analysis" / f"{key}.png"
        if src.is_file():
            atomic_write(out / f"{key}.png", src.read_bytes())
            figures[key] = f"{key}.png"
    timing = {"invocation_wall_min": (time.time() - t0) / 60, "train_phase_wall_min": train_wall / 60,
              **run_timing(runs, seeds, [(bb, loss) for bb in backbones for loss in losses]
                           + ([("lt", loss) for loss in LT_LOSSES] if long_tail else []), len(jobs)),
              "analysis_wall_min": analysis_wall / 60, "analysis_cpu_min": analysis_cpu / 60}
    env_cmd = " ".join(f"{k}={v}" for k, v in (("SEEDS", args.seeds), ("DEMO_SCALE", args.scale),
                                                  ("DEMO_LOSSES", args.losses))) + (f" DEMO_AUG={args.aug}" if args.aug
                                                                                    else "")
    env_cmd += f" DEMO_AUG_SEEDS={args.aug_seeds}" if aug and args.aug_seeds else ""
    env_cmd += " DEMO_LT=1" if args.long_tail and not scale.long_tail else ""
    alpha = loss_defaults("maxsup")  # the demo's LS/MaxSup runs use the loss classes' default α schedule
    config = {
        "command": f"{env_cmd} python demo/run_demo.py --update-reference" if args.update_reference
        else f"{env_cmd} make demo", "scale": args.scale, "runs_dir": _shown(runs), "losses": losses,
        "backbones": backbones,
        "source_classes": list(SOURCE_CLASSES), "held_out_classes": list(HELD_OUT_CLASSES),
        "probe_per_class": scale.probe_per_class, "epochs": scale.epochs,
        "robustness_per_class": scale.robustness_per_class, "corruptions": list(DEMO_CORRUPTIONS),
        "severities": list(DEMO_SEVERITIES),
        "corruption_constants": corruption_constants([runs / f"seed{s}" for s in seeds]),
        "recipes": {"resnet": RESNET_RECIPE, "vit": VIT_RECIPE},
        "scale_overrides": {"resnet": list(scale.resnet_extra), "vit": list(scale.vit_extra),
                            "linear_transfer": list(scale.probe_extra)},
        "test_images": scale.test_images,
        "alpha": {"start": alpha["alpha_start"], "end": alpha["alpha_end"], "schedule": "linear per epoch"},
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
    if aug_summary is not None:
        summary["aug"] = aug_summary
    if long_tail:
        summary["long_tail"] = aggregate_long_tail([collect_long_tail(runs / f"seed{s}" / "lt", list(LT_LOSSES))
                                                    for s in seeds])
        add_long_tail_verdicts(summary)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    reference = None
    if out != REFERENCE_OUT.resolve() and (REFERENCE_OUT / "summary.json").is_file():
        reference = json.loads((REFERENCE_OUT / "summary.json").read_text())
    write_readme(out, summary, figures, reference, os.path.relpath(REFERENCE_OUT / "README.md", out))
    print(f"[demo] done in {_fmt_time(time.time() - t0)} (CPU: training {timing['train_cpu_min_sum']:.1f} min, "
          f"analysis {timing['analysis_cpu_min']:.1f} min): "
          f"{out / 'summary.json'}, {out / 'README.md'}", flush=True)
    for bb, methods in per_backbone.items():
        print(f"[demo] {bb}: " + "; ".join(
            f"{LABELS[m]} acc {s['acc']['mean']:.2f} ece {s['ece']['mean']:.3f} "
            f"d_within {s['d_within_test']['mean']:.3f} R² {s['r2_test']['mean']:.3f} "
            f"transfer {s['transfer_acc']['mean']:.2f}" for m, s in methods.items()))
    return summary


def main_aug_only(args: argparse.Namespace, aug: list[str], seeds: list[int], runs: Path, out: Path, scale: Any,
                  data_path: str | None, analysis_data: list[str], t0: float) -> dict[str, Any]:
    """``--aug-only``: the baseline (the CE ViT) and the teacher (the CE ResNet), reused when finished, the SMMix /
    Token Labeling runs and their analysis; ``<out>/summary.json`` and ``<out>/README.md`` hold only their table."""
    jobs: list[Job] = []
    for seed in seeds:
        for bb, loss in dict.fromkeys([AUG_BASELINE] + [AUG_TEACHER] * ("tokenlabel" in aug)):
            run_dir = runs / f"seed{seed}" / bb / loss
            cmd = train_command(bb, loss, seed, run_dir, scale, data_path)
            _queue_run(jobs, f"{bb}/{loss} seed {seed}", run_dir, cmd, run_identity(bb, cmd), scale.epochs[bb],
                       args.fresh)
    run_jobs(jobs, args.jobs, "train")
    summary = {"config": {"command": f"SEEDS={args.seeds} DEMO_SCALE={args.scale} DEMO_AUG={args.aug} "
                                     f"python demo/run_demo.py --aug-only", "scale": args.scale,
                          "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                          "date": time.strftime("%Y-%m-%d"), "jobs": args.jobs,
                          "invocation_wall_min": None},
               "seeds": seeds, "aug": run_aug(args, aug, seeds, runs, scale, data_path, analysis_data)}
    summary["config"]["invocation_wall_min"] = (time.time() - t0) / 60
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    md = ["# `make demo` SMMix / Token Labeling runs only\n",
          f"Generated by `{summary['config']['command']}` on {summary['config']['date']} on "
          f"{summary['config']['machine']} ({summary['config']['invocation_wall_min']:.1f} min wall).\n",
          *aug_section(summary["aug"], seeds)]
    atomic_write(out / "README.md", "\n".join(md))
    print(f"[demo] aug runs done in {_fmt_time(time.time() - t0)}: {out / 'summary.json'}, {out / 'README.md'}",
          flush=True)
    return summary


if __name__ == "__main__":
    run_cli(main)
