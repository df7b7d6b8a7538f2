"""GPU check: every trainer's CUDA path, and MaxSup's cost there (paper Table 16), in one script of ≤ 4 minutes.

``make gpu-check`` (or ``python bench/gpu_check.py``) runs these parts, each under its own time limit; a part that
fails prints one line with its reason and the script goes on; the exit status is 0 only if no part failed (a part
skipped for a stated reason, e.g. FFCV where ffcv is not installed, does not fail the check):

- ``loss_op``: the loss alone, forward + backward, MaxSup ÷ CE and LS ÷ CE at B = 1024, K = 1000 (launch-bound:
  the ratio counts kernels; also replayed as one CUDA graph) and B = 16384, K = 1000 (memory-bound: ≈ one extra read
  of the logits).
- ``nonfinite``: a NaN injected into a batch on the device is refused by common_resnet's ``train_one_epoch`` with
  the same ``NonFiniteError`` message as on the CPU.
- ``resume``: common_resnet's CLI on a generated image folder, SIGKILLed at a step (``MAXSUP_KILL_AT``) and resumed;
  its final weights are compared with an uninterrupted run's (bit-exact under ``--use-deterministic-algorithms``).
- ``torchrun``: ``torchrun --nproc_per_node=1`` with NCCL (gloo on the CPU): DDP + ``train_one_epoch``.
- ``deit``: ``Deit/engine.train_one_epoch``, DeiT-S at 224 px, the authors' per-GPU batch (recipes.toml), fp16 AMP.
- ``common_resnet``: its ``train_one_epoch``, ResNet-50 at 224 px, AMP, channels_last, the T10 per-GPU batch.
- ``ffcv``: the FFCV trainer's ``train_loop``, ResNet-50 at 176 px from a ``.beton`` written on the spot; skipped
  with the reason where ffcv cannot be imported.

In each trainer part, CE, LS and MaxSup alternate in one process on one model (round-robin, order reversed every
round; medians), eagerly and then with ``torch.compile`` (the model compiled once; the loss is not part of the
compiled graph, so switching it recompiles nothing); Deit also times a bare loop over the same model, optimizer,
batch and AMP mode. Peak GPU memory is reset per trainer. Generated data throughout: no dataset is needed.

``--device cpu`` (the default without CUDA, and what ``make bench`` runs there) uses tiny sizes and no
``torch.compile``, so the script cannot rot between GPU sessions. Output: ``<out-dir>/<device name>.json`` and ``.md``
(default out-dir: ``results/gpu`` on CUDA, ``results/gpu_check_cpu`` otherwise, which git ignores). Imports nothing the
lent H100 machine lacks: ffcv only inside the ffcv part.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the checkout's maxsup
    sys.path.insert(0, str(ROOT))

from maxsup import build_criterion  # noqa: E402
from maxsup.estimate import StepClock, SyntheticBatches, device_name  # noqa: E402
from maxsup.timing import synced_clock  # noqa: E402

PARTS = ("loss_op", "nonfinite", "resume", "torchrun", "deit", "common_resnet", "ffcv")
LOSSES = ("ce", "ls", "maxsup")
#: Seconds each part may take on CUDA and on the CPU. On CUDA the whole check also stops at BUDGET_S: a part gets at
#: most what is left of it (expected: ~5 s loss op, ~5 s NaN, ~30 s resume, ~15 s torchrun, ~80 s for each trainer
#: with its torch.compile, FFCV skipped).
LIMITS = {"cuda": {"loss_op": 20, "nonfinite": 15, "resume": 45, "torchrun": 30, "deit": 85, "common_resnet": 85,
                   "ffcv": 60},
          "cpu": {"loss_op": 30, "nonfinite": 30, "resume": 90, "torchrun": 60, "deit": 60, "common_resnet": 60,
                  "ffcv": 120}}  # caps for a shared 2-core machine; unloaded, the whole CPU check takes about a minute


BUDGET_S = {"cuda": 235.0}


class Skip(Exception):
    """A part that cannot run here, for the stated reason (not a failure)."""


class PartTimeout(Exception):
    """A part ran past its time limit."""


# ---------------------------------------------------------------------------------------------------------- helpers
def load_path(name: str, path: Path, flat_dir: Path | None = None) -> ModuleType:
    """Import a trainer file by path under ``name`` (the subprojects are flat script folders; ``flat_dir`` goes on
    sys.path for their sibling imports)."""
    if name in sys.modules:
        return sys.modules[name]
    if flat_dir is not None and str(flat_dir) not in sys.path:
        sys.path.insert(0, str(flat_dir))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`PartTimeout` in the main thread after ``seconds`` (SIGALRM; Python code only: a running CUDA
    kernel or compiler call finishes first)."""
    def handler(signum, frame):
        raise PartTimeout(f"time limit of {seconds:.0f} s reached")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sanitize(name: str) -> str:
    """A file name from a device name: runs of anything but letters, digits, '.', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_") or "device"


def authors_deit_batch() -> int:
    """The per-GPU batch of the authors' DeiT launcher, as recipes.toml records it ("4 GPUs × 256")."""
    from maxsup.recipes import load_recipes

    note = load_recipes()["recipes"]["deit_t5"]["values"]["total_batch_size"]["ours"]
    found = re.search(r"(\d+)\s*GPUs\s*×\s*(\d+)", note)
    if not found:
        raise RuntimeError(f"recipes.toml deit_t5 total_batch_size no longer names 'N GPUs × B': {note!r}")
    return int(found.group(2))


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def ratios(seconds: dict[str, float]) -> dict[str, float]:
    """Step-time ratios to CE (> 1: slower than CE)."""
    return {"maxsup_over_ce": seconds["maxsup"] / seconds["ce"], "ls_over_ce": seconds["ls"] / seconds["ce"]}


def alternate(run: Callable[[str], float], names: tuple[str, ...], rounds: int) -> dict[str, float]:
    """Median seconds per step of ``run(name)`` for each name, round-robin with the order reversed every round, so
    a slow drift of the machine's speed falls on every name alike."""
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else tuple(reversed(names)):
            times[name].append(run(name))
    return {n: statistics.median(v) for n, v in times.items()}


def throughput(seconds: dict[str, float], batch: int) -> dict[str, Any]:
    return {"seconds_per_step": seconds, "images_per_s": {k: batch / v for k, v in seconds.items()},
            **ratios(seconds)}


# ----------------------------------------------------------------------------------------------------------- sizes
def sizes(device: torch.device) -> dict[str, Any]:
    """Paper-scale on CUDA; tiny on the CPU (the same code paths, minutes → seconds)."""
    if device.type == "cuda":
        return {"loss_shapes": [(1024, 1000), (16384, 1000)], "loss_iters": 50, "graph_shape": (1024, 1000),
                "deit": {"model": "deit_small_patch16_224", "kw": {"drop_path_rate": 0.1}, "res": 224, "k": 1000,
                         "batch": authors_deit_batch()},
                "resnet": {"model": "resnet50", "kw": {}, "res": 224, "k": 1000, "batch": 64},
                "ffcv": {"model": "resnet50", "kw": {}, "res": 176, "k": 4, "batch": 64, "images": 256},
                "steps": 8, "rounds": 2, "compile": True, "small": {"model": "cifar_resnet10", "kw": {"width": 16}}}
    return {"loss_shapes": [(64, 100), (1024, 100)], "loss_iters": 5, "graph_shape": None,
            "deit": {"model": "vit_tiny_patch16_224", "res": 28, "k": 10, "batch": 16,
                     "kw": {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}},
            "resnet": {"model": "cifar_resnet10", "kw": {"width": 8}, "res": 32, "k": 10, "batch": 16},
            "ffcv": {"model": "cifar_resnet10", "kw": {"width": 8}, "res": 32, "k": 4, "batch": 16, "images": 64},
            "steps": 2, "rounds": 2, "compile": False, "small": {"model": "cifar_resnet10", "kw": {"width": 8}}}


# ----------------------------------------------------------------------------------------------------------- parts
def part_loss_op(device: torch.device, sz: dict[str, Any]) -> dict[str, Any]:
    """The criterion alone, forward + backward, timed over ``loss_iters`` calls per round."""
    out: dict[str, Any] = {}
    for b, k in sz["loss_shapes"]:
        logits = torch.randn(b, k, device=device, requires_grad=True)
        target = torch.randint(0, k, (b,), device=device)
        crit = {name: build_criterion(name, k, epochs=10).to(device) for name in LOSSES}

        def run(name: str, logits=logits, target=target, crit=crit) -> float:
            c = crit[name]
            for _ in range(3):  # warm-up: allocator, kernel selection
                c(logits, target).backward()
            t0 = synced_clock(device)
            for _ in range(sz["loss_iters"]):
                logits.grad = None
                c(logits, target).backward()
            return (synced_clock(device) - t0) / sz["loss_iters"]

        seconds = alternate(run, LOSSES, 3)
        out[f"B{b}_K{k}"] = {"microseconds": {n: s * 1e6 for n, s in seconds.items()}, **ratios(seconds)}
    if sz["graph_shape"] is None:
        out["cuda_graphs"] = {"skipped": "CUDA graphs need CUDA"}
        return out
    b, k = sz["graph_shape"]
    graphed = {}
    for name in LOSSES:  # one graph per loss: forward + backward captured once, replayed
        logits = torch.randn(b, k, device=device, requires_grad=True)
        target = torch.randint(0, k, (b,), device=device)
        c = build_criterion(name, k, epochs=10).to(device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                logits.grad = None
                c(logits, target).backward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        logits.grad = None
        with torch.cuda.graph(graph):
            c(logits, target).backward()
        graphed[name] = graph

    def replay(name: str) -> float:
        t0 = synced_clock(device)
        for _ in range(sz["loss_iters"]):
            graphed[name].replay()
        return (synced_clock(device) - t0) / sz["loss_iters"]

    seconds = alternate(replay, LOSSES, 3)
    out[f"cuda_graphs_B{b}_K{k}"] = {"microseconds": {n: s * 1e6 for n, s in seconds.items()}, **ratios(seconds)}
    return out


def common_resnet_args(extra: list[str]) -> argparse.Namespace:
    """common_resnet's own parser and defaults (print_freq high: no per-step printing in the check)."""
    train = load_path("common_resnet_train", ROOT / "Conv" / "common_resnet" / "train.py",
                      ROOT / "Conv" / "common_resnet")
    return train.get_args_parser().parse_args(["--print-freq", "100000", *extra])


def nonfinite_message(device: torch.device, sz: dict[str, Any]) -> str:
    from maxsup.models import create_model
    from maxsup.training import NonFiniteError

    train = load_path("common_resnet_train", ROOT / "Conv" / "common_resnet" / "train.py",
                      ROOT / "Conv" / "common_resnet")
    torch.manual_seed(0)
    model = create_model(sz["small"]["model"], 10, **sz["small"]["kw"]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = SyntheticBatches(2, 8, 10, (32, 32), device, dtype=torch.float32)
    images, labels = next(iter(batches))
    images[0, 0, 0, 0] = float("nan")  # injected on the device: the forward pass spreads it to the loss
    args = common_resnet_args(["--amp"] if device.type == "cuda" else [])
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    try:
        train.train_one_epoch(model, build_criterion("maxsup", 10, 2).to(device), opt, [(images, labels)], device, 0,
                              args, None, scaler)
    except NonFiniteError as exc:
        return str(exc)
    raise AssertionError(f"a NaN in the batch on {device.type} was not refused")


def part_nonfinite(device: torch.device, sz: dict[str, Any]) -> dict[str, Any]:
    here = nonfinite_message(device, sz)
    cpu = nonfinite_message(torch.device("cpu"), sizes(torch.device("cpu")))
    if here != cpu:
        raise AssertionError(f"refused differently on {device.type}: {here!r} vs cpu {cpu!r}")
    return {"message": here, "same_as_cpu": True}


def write_image_folder(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> Path:
    """``root/{train,val}/c<k>/<i>.png``: noise images with a class-dependent mean, so the task is learnable."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(per_class // 4, 1))):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(rng.normal(40 + 50 * c, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def part_resume(device: torch.device, sz: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Uninterrupted vs SIGKILL before step 5 (of 2 epochs × 3) then --resume: the final weights compared."""
    from maxsup.training import load_checkpoint

    data = write_image_folder(tmp / "resume_data", 4, 12, 32)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "OMP_NUM_THREADS": "1"}
    common = [sys.executable, str(ROOT / "Conv" / "common_resnet" / "train.py"), "--dataset", "imagefolder",
              "--data-path", str(data), "--model", sz["small"]["model"], "--model-kwargs",
              *(f"{k}={v}" for k, v in sz["small"]["kw"].items()), "--train-crop-size", "32",
              "--val-crop-size", "32", "-b", "16", "-j", "0", "--epochs", "2", "--lr", "0.05", "--loss", "maxsup",
              "--print-freq", "1000", "--device", device.type, "--use-deterministic-algorithms",
              *(["--amp"] if device.type == "cuda" else [])]

    def run(out: Path, *extra: str, **env_extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*common, "--output-dir", str(out), *extra], capture_output=True, text=True,
                              env={**env, **env_extra})  # the part's time limit kills it (subprocess.run)

    full = run(tmp / "full")
    if full.returncode != 0:
        raise RuntimeError(f"uninterrupted run failed: {full.stderr.strip().splitlines()[-1:]}")
    killed = run(tmp / "killed", MAXSUP_KILL_AT="step:5")
    if killed.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the run was not killed at step 5 (exit {killed.returncode})")
    resumed = run(tmp / "killed", "--resume", str(tmp / "killed" / "checkpoint.pth"))
    if resumed.returncode != 0:
        raise RuntimeError(f"resume failed: {resumed.stderr.strip().splitlines()[-1:]}")
    a, b = (load_checkpoint(d / "checkpoint.pth") for d in (tmp / "full", tmp / "killed"))
    diff = max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in a["model"]
               if a["model"][k].is_floating_point())
    if diff != 0.0:
        raise AssertionError(f"resumed weights differ from the uninterrupted run's by up to {diff:.3e} under "
                             f"--use-deterministic-algorithms")
    return {"bit_exact": True, "max_abs_diff": diff, "killed_at": "step 5 of 6 (epoch 1)",
            "deterministic_algorithms": True, "amp": device.type == "cuda"}


def ddp_worker(device_type: str, out: Path) -> None:
    """Inside ``torchrun --nproc_per_node=1``: NCCL (gloo on the CPU) process group, DDP, train_one_epoch."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from maxsup.models import create_model

    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if device_type == "cuda" else \
        torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    sz = sizes(device)
    train = load_path("common_resnet_train", ROOT / "Conv" / "common_resnet" / "train.py",
                      ROOT / "Conv" / "common_resnet")
    torch.manual_seed(0)
    net = create_model(sz["small"]["model"], 10, **sz["small"]["kw"]).to(device)
    model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    clock = StepClock(SyntheticBatches(5, 16, 10, (32, 32), device, dtype=torch.float32), 2, device=device)
    stats = train.train_one_epoch(model, build_criterion("maxsup", 10, 2).to(device),
                                  torch.optim.SGD(model.parameters(), lr=0.05), clock, device, 0,
                                  common_resnet_args([]), None, None)
    probe = torch.ones(1, device=device)
    dist.all_reduce(probe)
    out.write_text(json.dumps({"backend": dist.get_backend(), "world_size": dist.get_world_size(),
                               "all_reduce": probe.item(), "train_loss": stats["loss"],
                               "samples": stats["samples"], "seconds_per_step": clock.seconds_per_step}))
    dist.destroy_process_group()


def part_torchrun(device: torch.device, sz: dict[str, Any], tmp: Path) -> dict[str, Any]:
    out = tmp / "ddp.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           str(Path(__file__).resolve()), "--ddp-worker", str(out), "--device", device.type],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0 or not out.exists():
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:]
        raise RuntimeError(f"torchrun exited {proc.returncode}: {tail}")
    rec = json.loads(out.read_text())
    want = "nccl" if device.type == "cuda" else "gloo"
    if rec["backend"] != want or rec["all_reduce"] != 1.0 or not math.isfinite(rec["train_loss"]):
        raise AssertionError(f"unexpected DDP result {rec}")
    return rec


def trainer_throughput(device: torch.device, sz: dict[str, Any], make_step: Callable[[Any], Callable[[str], float]],
                       model: torch.nn.Module, batch: int, out: dict[str, Any],
                       extra: dict[str, Callable[[], float]] | None = None) -> dict[str, Any]:
    """Eager, then compiled once: CE/LS/MaxSup (and ``extra``) alternating; peak memory over both. Fills ``out``
    as it goes, so the eager figures survive a compile that fails or runs out of time."""
    out["batch"] = batch
    run = make_step(model)
    names = LOSSES + tuple(extra or {})
    eager = alternate(lambda n: extra[n]() if n in (extra or {}) else run(n), names, sz["rounds"])
    out["eager"] = throughput({n: eager[n] for n in LOSSES}, batch)
    if "bare" in eager:
        out["eager"]["engine_ce_over_bare"] = eager["ce"] / eager["bare"]
        out["eager"]["bare_images_per_s"] = batch / eager["bare"]
    out["peak_memory_gib"] = peak_memory_gib(device)
    if not sz["compile"]:
        out["compiled"] = {"skipped": f"torch.compile of a trainer is skipped on {device.type} (minutes on 2 cores)"}
        return out
    try:
        from torch._dynamo.utils import counters

        graphs = counters["stats"]["unique_graphs"]
        compiled_run = make_step(torch.compile(model))  # once per trainer: the loss stays outside the graph
        compiled = alternate(compiled_run, LOSSES, sz["rounds"])
        # graphs compiled for this trainer: more than one per loss would mean recompiles inside the timed steps
        out["compiled"] = {**throughput(compiled, batch), "graphs": counters["stats"]["unique_graphs"] - graphs}
    except (Exception, PartTimeout) as exc:
        out["compiled"] = {"error": one_line(exc)}
        raise
    finally:
        out["peak_memory_gib"] = peak_memory_gib(device)
    return out


def part_deit(device: torch.device, sz: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    from timm.optim import create_optimizer_v2

    from maxsup.models import create_model

    engine = load_path("deit_engine", ROOT / "Deit" / "engine.py")
    cfg = sz["deit"]
    reset_peak(device)
    torch.manual_seed(0)
    model = create_model(cfg["model"], cfg["k"], **cfg["kw"]).to(device)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    amp = torch.float16 if device.type == "cuda" else None  # Deit's --amp auto: fp16 + GradScaler on CUDA
    scaler = torch.amp.GradScaler("cuda") if amp is not None else None
    crit = {n: build_criterion(n, cfg["k"], 300).to(device) for n in LOSSES}
    data = SyntheticBatches(1 + sz["steps"], cfg["batch"], cfg["k"], (cfg["res"],) * 2, device, dtype=torch.float32)

    def make_step(net):
        def run(name: str) -> float:
            clock = StepClock(data, sz["steps"], device=device, warmup=1)
            engine.train_one_epoch(net, crit[name], clock, optimizer, device, 0, scaler, amp_dtype=amp,
                                   print_freq=0)
            return clock.seconds_per_step
        return run

    def bare() -> float:  # the same model, optimizer, batch and AMP mode, without the engine
        images, labels = next(iter(data))
        for i in range(1 + sz["steps"]):
            if i == 1:
                t0 = synced_clock(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = F.cross_entropy(model(images), labels)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        return (synced_clock(device) - t0) / sz["steps"]

    result.update(model=cfg["model"], resolution=cfg["res"], amp=str(amp))
    trainer_throughput(device, sz, make_step, model, cfg["batch"], result, {"bare": bare})
    return result


def part_common_resnet(device: torch.device, sz: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    from maxsup.models import create_model

    train = load_path("common_resnet_train", ROOT / "Conv" / "common_resnet" / "train.py",
                      ROOT / "Conv" / "common_resnet")
    cfg = sz["resnet"]
    cuda = device.type == "cuda"
    args = common_resnet_args(["--amp", "--channels-last"] if cuda else [])  # AMP on the CPU would be bf16: slow
    reset_peak(device)
    torch.manual_seed(0)
    model = create_model(cfg["model"], cfg["k"], **cfg["kw"]).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    crit = {n: build_criterion(n, cfg["k"], 90).to(device) for n in LOSSES}
    data = SyntheticBatches(1 + sz["steps"], cfg["batch"], cfg["k"], (cfg["res"],) * 2, device, dtype=torch.float32)

    def make_step(net):
        def run(name: str) -> float:
            clock = StepClock(data, sz["steps"], device=device, warmup=1)
            train.train_one_epoch(net, crit[name], optimizer, clock, device, 0, args, None, scaler)
            return clock.seconds_per_step
        return run

    result.update(model=cfg["model"], resolution=cfg["res"], amp=bool(args.amp), channels_last=args.channels_last)
    trainer_throughput(device, sz, make_step, model, cfg["batch"], result)
    return result


def part_ffcv(device: torch.device, sz: dict[str, Any], result: dict[str, Any], tmp: Path) -> dict[str, Any]:
    if importlib.util.find_spec("ffcv") is None:
        raise Skip("ffcv is not importable here (the lent GPU machines have none and cannot install it); FFCV's "
                   "CUDA path stays unmeasured")
    cfg = sz["ffcv"]
    writer = load_path("ffcv_write_imagenet", ROOT / "Conv" / "ffcv" / "write_imagenet.py")
    ffcv_main = load_path("ffcv_main", ROOT / "Conv" / "ffcv" / "main.py")
    data = write_image_folder(tmp / "ffcv_data", cfg["k"], cfg["images"] // cfg["k"], cfg["res"])
    betons = {split: writer.main(["--data-dir", str(data / split), "--write-path", str(tmp / f"{split}.beton"),
                                  "--num-workers", "2", "--chunk-size", "16"]) for split in ("train", "val")}
    cuda = device.type == "cuda"
    conf = ffcv_main.load_config([
        f"--data.train_dataset={betons['train']}", f"--data.val_dataset={betons['val']}",
        f"--resolution.min_res={cfg['res']}", f"--resolution.max_res={cfg['res']}",
        f"--validation.resolution={cfg['res']}", "--data.num_workers=2", "--data.in_memory=true",
        f"--model.arch={cfg['model']}", f"--model.num_classes={cfg['k']}",
        *(f"--model.kwargs.{k}={v}" for k, v in cfg["kw"].items()),
        f"--training.batch_size={cfg['batch']}", f"--logging.folder={tmp / 'ffcv_out'}", "--logging.progress=false",
        f"--training.device={device.type}", f"--training.precision={'fp16' if cuda else 'fp32'}",
        f"--training.channels_last={'true' if cuda else 'false'}", "--training.epochs=2"])
    reset_peak(device)
    trainer = ffcv_main.ImageNetTrainer(conf)
    loader = trainer.train_loader
    crit = {n: build_criterion(n, cfg["k"], 2).to(device) for n in LOSSES}
    steps = min(sz["steps"], len(loader) - 1)

    def make_step(net):
        def run(name: str) -> float:
            trainer.model, trainer.criterion = net, crit[name]
            trainer.train_loader = clock = StepClock(loader, steps, device=device, warmup=1)
            trainer.train_loop(0)
            return clock.seconds_per_step
        return run

    result.update(model=cfg["model"], resolution=cfg["res"], amp=cuda, channels_last=cuda)
    trainer_throughput(device, sz, make_step, trainer.model, cfg["batch"], result)
    return result


# ------------------------------------------------------------------------------------------------------------ report
def markdown(report: dict[str, Any]) -> str:
    """One table row per part: status, seconds, the figures that matter, the reason of a failure or skip."""
    def fmt(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = [f"# gpu-check on {report['device']}", "",
             f"torch {report['torch']}, CUDA {report['cuda']}, {report['started']}, {report['seconds']:.0f} s, "
             f"{'all passed' if report['passed'] else 'FAILED'}", "",
             "| part | status | s | figures |", "| --- | --- | --- | --- |"]
    for name, part in report["parts"].items():
        figs = []
        for mode in ("eager", "compiled"):
            m = part.get(mode, {})
            if "maxsup_over_ce" in m:
                ips = ", ".join(f"{k} {v:.0f}" for k, v in m["images_per_s"].items())
                figs.append(f"{mode}: img/s {ips}; MaxSup÷CE {m['maxsup_over_ce']:.3f}, LS÷CE {m['ls_over_ce']:.3f}")
        if part.get("eager", {}).get("engine_ce_over_bare"):
            figs.append(f"engine÷bare step {part['eager']['engine_ce_over_bare']:.3f}")
        if part.get("peak_memory_gib") is not None:
            figs.append(f"peak {part['peak_memory_gib']:.1f} GiB")
        for key, val in part.items():
            if key.startswith(("B", "cuda_graphs_B")) and isinstance(val, dict):
                figs.append(f"{key}: MaxSup÷CE {val['maxsup_over_ce']:.3f}, LS÷CE {val['ls_over_ce']:.3f}")
        for key in ("bit_exact", "backend", "same_as_cpu"):
            if key in part:
                figs.append(f"{key} {fmt(part[key])}")
        if part.get("reason"):
            figs.append(part["reason"])
        lines.append(f"| {name} | {part['status']} | {part['seconds']:.1f} | {'; '.join(figs)} |")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def run_check(device: torch.device, parts: list[str], out_dir: Path, inject: set[str],
              limit_scale: float = 1.0) -> dict[str, Any]:
    sz = sizes(device)
    report: dict[str, Any] = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
                              "cuda": torch.version.cuda, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "parts": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmpdir:
        for name in parts:
            tmp = Path(tmpdir) / name
            tmp.mkdir()
            result: dict[str, Any] = {}
            t0 = time.perf_counter()
            limit = LIMITS[device.type][name] * limit_scale
            if device.type in BUDGET_S:
                limit = min(limit, BUDGET_S[device.type] * limit_scale - (t0 - start))
            try:
                if limit < 5:
                    raise PartTimeout(f"no time left in the {BUDGET_S[device.type]:.0f} s budget of the whole check")
                with time_limit(limit):
                    if name in inject:
                        raise RuntimeError("injected failure (--inject-failure)")
                    if name == "loss_op":
                        result.update(part_loss_op(device, sz))
                    elif name == "nonfinite":
                        result.update(part_nonfinite(device, sz))
                    elif name == "resume":
                        result.update(part_resume(device, sz, tmp))
                    elif name == "torchrun":
                        result.update(part_torchrun(device, sz, tmp))
                    elif name == "deit":
                        part_deit(device, sz, result)
                    elif name == "common_resnet":
                        part_common_resnet(device, sz, result)
                    else:
                        part_ffcv(device, sz, result, tmp)
                result["status"] = "passed"
            except Skip as exc:
                result.update(status="skipped", reason=str(exc))
            except (Exception, PartTimeout) as exc:  # every part reports its own reason; the next one still runs
                result.update(status="failed", reason=one_line(exc))
                if os.environ.get("GPU_CHECK_TRACEBACK"):
                    traceback.print_exc()
            result["seconds"] = time.perf_counter() - t0
            report["parts"][name] = result
            tail = f": {result['reason']}" if result.get("reason") else ""
            print(f"gpu-check {name}: {result['status']} ({result['seconds']:.1f} s){tail}", flush=True)
    report["seconds"] = time.perf_counter() - start
    report["passed"] = all(p["status"] != "failed" for p in report["parts"].values())
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / sanitize(report["device"])
    write_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2, default=str) + "\n")
    write_atomic(stem.with_suffix(".md"), markdown(report))
    print(f"gpu-check: {'all passed' if report['passed'] else 'FAILED'} in {report['seconds']:.0f} s; "
          f"{stem.with_suffix('.json')}", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                   help="auto: cuda when available, else cpu with tiny sizes (default: auto)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of parts (default: {','.join(PARTS)})")
    p.add_argument("--out-dir", default=None,
                   help="where <device>.json/.md go (default: results/gpu on CUDA, results/gpu_check_cpu on the CPU)")
    p.add_argument("--inject-failure", default="", help="test hook: make these parts (comma list) fail at their start")
    p.add_argument("--limit-scale", default=1.0, type=float,
                   help="multiply every part's time limit (a loaded machine; default: 1)")
    p.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)  # the torchrun part's child
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was requested but torch sees no CUDA device", file=sys.stderr)
        return 2
    device_type = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if args.ddp_worker:
        ddp_worker(device_type, Path(args.ddp_worker))
        return 0
    parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    out_dir = Path(args.out_dir) if args.out_dir else ROOT / "results" / ("gpu" if device.type == "cuda"
                                                                          else "gpu_check_cpu")
    report = run_check(device, parts, out_dir, set(filter(None, args.inject_failure.split(","))), args.limit_scale)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
