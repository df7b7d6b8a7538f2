"""FFCV ImageNet trainer for ResNet / MobileNetV2 with MaxSup (paper Table 4), in the ffcv-imagenet idiom.

One trainer class whose methods map to concerns; ffcv-imagenet's config sections (``data``, ``resolution``,
``validation``, ``model``, ``lr``, ``training``, ``dist``, ``logging``, plus ``loss``) as typed OmegaConf sections
with their defaults in ``config.yaml``; a recipe through ``--config-file configs/<recipe>.yaml`` and dotted
command-line overrides; the resolved config in ``<logging.folder>/params.json`` and JSON-lines logs in
``<logging.folder>/log.jsonl``. Runs on GPU (NCCL) and on CPU (gloo): images leave FFCV as uint8 and are normalised
in torch, so no cupy is needed.

    torchrun --nproc_per_node=4 Conv/ffcv/main.py --config-file Conv/ffcv/configs/rn50_paper_200ep.yaml \\
        --data.train_dataset=/data/ffcv/train_500_0.50_90.ffcv --data.val_dataset=/data/ffcv/val_500_0.50_90.ffcv

Besides the config keys: ``--print-config`` prints the resolved config (nested sections, the loss's resolved options,
plus world_size, per_process_batch_size, total_batch_size, effective_lr, seeds) as one JSON object and exits without
reading data; ``--seeds 0,3,7`` (or env ``SEEDS=N``: seeds 0..N-1) trains one run per seed into
``<logging.folder>/seed<S>``; ``--estimate N`` (``--estimate-synthetic``: no .beton) times N training steps and prints
one JSON line (``maxsup.estimate``), writing nothing.
"""

import contextlib
import copy
import difflib
import hashlib
import json
import math
import sys
import time
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from maxsup import ClassificationMeter, build_criterion
from maxsup.checks import check_accum_steps
from maxsup.cli import (
    check_value,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
)
from maxsup.data.imagenet_variants import RealScorer, real_labels
from maxsup.data.transforms import transform_spec
from maxsup.errors import UserError
from maxsup.estimate import (
    StepClock,
    SyntheticBatches,
    estimate_record,
    pop_estimate_flags,
    print_estimate,
    train_split_size,
)
from maxsup.hub import local_checkpoint
from maxsup.losses import PenaltyStatsMeter, compute_loss, resolve_loss_options
from maxsup.models import arch_spec, create_model, load_pretrained_backbone, load_state_dict_strict, unwrap_model
from maxsup.timing import Stopwatch, train_timing
from maxsup.training import (
    Preemption,
    ScalarWriter,
    all_reduce_sum,
    alpha_schedule_of,
    append_log,
    atomic_save,
    atomic_write,
    barrier,
    check_finite_model,
    claim_run_folder,
    holds_run,
    init_distributed,
    kill_point,
    launcher_world_size,
    load_checkpoint,
    open_resume,
    parse_seeds,
    print_config,
    rank,
    repair_log,
    restore_state,
    rng_state,
    run_seeds,
    seed_dir,
    skip_done_batches,
    step_guard,
    world_size,
    write_run_record,
)

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")
SCHEDULES = ("triangular", "step", "cosine")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ALPHA_KEYS = ("alpha_start", "alpha_end", "alpha_denominator")  # loss.<key>, as the other trainers' --alpha-* flags
TRAINER = "Conv/ffcv/main.py"
NONFINITE_HINT = {"lr_flag": "--lr.lr", "clip_flag": "--training.clip_grad_norm"}
RESUME_FLAG = "--training.resume=auto"
OVERWRITE_FLAG = "--training.overwrite=true"
#: A folder holding one of these holds a run: a fresh run into it needs training.overwrite.
RUN_MARKERS = ("run.json", "checkpoint.pth")
#: Config keys that do not change what is trained: left out of run.json's recipe fingerprint, so seeds and losses of
#: one recipe are one group of analysis.collect. Matched on the whole dotted key, its last part, or (a dotted entry)
#: its section: ``loss.options`` leaves out every ``loss.options.<option>``; the α denominator still splits a group.
NOT_RECIPE = ("seed", "seeds", "folder", "resume", "device", "num_workers", "eval_only", "tensorboard", "progress",
              "train_dataset", "val_dataset", "stats_every", "batch_size", "accum_steps", "world_size", "in_memory",
              "compile", "model.arch", "loss.name", "opts", "loss.options", "alpha_start", "alpha_end", "overwrite",
              "allow_missing_sidecar")


def resume_flag(key: str) -> str:
    """What a user types to change ``key`` (a ``resume_keys`` entry)."""
    option = key.removeprefix("loss.options.")
    return f"--loss.opts=[{option}=...]" if option != key else f"--{key}"


def resume_keys(flat: dict[str, Any]) -> list[str]:
    """Config keys that define a run: the model, the loss and its resolved options, the number of epochs."""
    defining = ("model.", "loss.name", "loss.options.")
    return [k for k in flat if k.startswith(defining) or k in ("training.epochs", "training.use_blurpool")]


# --------------------------------------------------------------------------------------------------------------------
# Config (OmegaConf): config.yaml is the schema, in ffcv-imagenet's sections; each key takes the type of its default
# --------------------------------------------------------------------------------------------------------------------
def _kind(default: Any) -> Any:
    if default is None:  # loss.alpha_*: null = the loss class's default; the registry types a value given here
        return Any
    if isinstance(default, list):
        return list[type(default[0])] if default else list[str]
    return dict[str, Any] if isinstance(default, dict) else type(default)  # model.kwargs: free-form


def config_schema(defaults: dict[str, dict[str, Any]]) -> Any:
    """One dataclass per section of ``defaults`` (config.yaml), typed by the defaults: OmegaConf then refuses an
    unknown key and converts or refuses each value given for a key."""
    sections = {name: make_dataclass(name, [(k, _kind(v), MISSING) for k, v in keys.items()])
                for name, keys in defaults.items()}
    return make_dataclass("Config", [(name, cls, field(default_factory=cls)) for name, cls in sections.items()])


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (ffcv-imagenet's params.json); ``model.kwargs`` stays one value."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and f"{prefix}{key}" != "model.kwargs":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _merge(cfg: DictConfig, update: Any, where: str) -> DictConfig:
    """``cfg`` updated by ``update`` through the typed sections; a wrong key or type is one UserError line."""
    try:
        return OmegaConf.merge(cfg, update)
    except OmegaConfBaseException as exc:
        key = exc.full_key or ""
        if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
            close = difflib.get_close_matches(key, list(_flatten(OmegaConf.to_container(cfg))), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid sections: {', '.join(cfg)}"
            raise UserError(f"unknown config key '{key}' in {where}{hint}") from None
        raise UserError(f"config key '{key}' in {where}: {str(exc).splitlines()[0]}") from None


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """A config file; one that says ``extends: other.yaml`` (relative to it) is that file with these overrides."""
    path = path.resolve()
    if path in seen:
        raise UserError(f"config files extend each other in a cycle: {' -> '.join(map(str, seen + (path,)))}")
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, DictConfig):
        raise UserError(f"{path} must hold sections (data:, lr:, training:, ...), not a {type(raw).__name__}")
    parent = raw.pop("extends", None)
    return OmegaConf.merge(read_yaml(path.parent / parent, seen + (path,)), raw) if parent else raw


def load_config(argv: list[str]) -> DictConfig:
    """config.yaml, then ``--config-file <recipe.yaml>``, then ``--section.key=value`` (or ``--section.key value``)
    overrides, checked against the typed sections. A value is converted to its key's type (``--data.in_memory=1``,
    ``--lr.lr=0.85``); a list or a ``model.kwargs`` entry is YAML (``--loss.opts='[beta=1e-3]'``)."""
    defaults = read_yaml(DEFAULT_CONFIG)
    cfg = OmegaConf.merge(OmegaConf.structured(config_schema(OmegaConf.to_container(defaults))), defaults)
    overrides: list[tuple[str, str]] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; use --config-file <file.yaml> and --section.key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if not args:
                raise UserError(f"{arg} needs a value: {arg}=<value>")
            value = args.pop(0)
        if key == "config":
            raise UserError("--config is now --config-file <file.yaml> (ffcv-imagenet's flag; the recipes are YAML)")
        if key == "config-file":
            cfg = _merge(cfg, read_yaml(Path(value)), value)
        else:
            overrides.append((key, value))
    for key, text in overrides:  # after the file, whatever their order
        current = OmegaConf.select(cfg, key, default=MISSING)
        if current is MISSING or current is None or OmegaConf.is_config(current) or key.startswith("model.kwargs."):
            update = OmegaConf.from_dotlist([f"{key}={text}"])  # YAML: a list, a model.kwargs entry, a loss.alpha_*
        else:  # a typed key converts the raw text itself: a path like /data/1e3, or "true", stays a string
            update = OmegaConf.create()
            OmegaConf.update(update, key, text)
        cfg = _merge(cfg, update, "the command line")
    validate_config(cfg)
    return cfg


def loss_options(loss: DictConfig) -> dict[str, Any]:
    """Every keyword option the loss is built with: its class defaults, then ``loss.opts``, then the ``loss.alpha_*``
    that are set (``maxsup.losses.resolve_loss_options``, which checks the name and each option)."""
    try:
        return resolve_loss_options(loss.name, loss.opts, **{k: loss[k] for k in ALPHA_KEYS})
    except ValueError as exc:
        raise UserError(str(exc)) from None


#: Numeric keys whose other values have no meaning (a negative lr, weight decay or clip norm; a zero step length):
#: refused by validate_config with the argparse types the other trainers use (``maxsup.cli``). Zero stays allowed
#: where it means none or off (clip_grad_norm, warmup_epochs, weight_decay, min_lr).
RANGES = {
    "data.num_workers": non_negative_int, "resolution.min_res": positive_int, "resolution.max_res": positive_int,
    "resolution.start_ramp": non_negative_int, "resolution.end_ramp": non_negative_int,
    "resolution.res_step": positive_int, "validation.resolution": positive_int, "validation.crop_ratio": positive_float,
    "model.num_classes": positive_int, "lr.lr": non_negative_float, "lr.lr_peak_epoch": non_negative_float,
    "lr.step_length": positive_float, "lr.step_ratio": non_negative_float, "lr.warmup_epochs": non_negative_float,
    "lr.min_lr": non_negative_float, "training.momentum": non_negative_float,
    "training.weight_decay": non_negative_float, "training.clip_grad_norm": non_negative_float,
}


def validate_config(cfg: DictConfig) -> None:
    for key, allowed in {"lr.lr_schedule_type": SCHEDULES, "training.precision": tuple(PRECISIONS)}.items():
        if OmegaConf.select(cfg, key) not in allowed:
            raise UserError(f"{key} = {OmegaConf.select(cfg, key)!r} is not one of {', '.join(allowed)}")
    r, t = cfg.resolution, cfg.training
    if not (r.min_res <= r.max_res and r.start_ramp <= r.end_ramp):
        raise UserError("progressive resizing needs resolution.min_res <= max_res and resolution.start_ramp <= "
                        "end_ramp")
    for key, value in {"training.epochs": t.epochs, "training.batch_size": t.batch_size,
                       "training.accum_steps": t.accum_steps, "logging.stats_every": cfg.logging.stats_every}.items():
        if value < 1:
            raise UserError(f"{key} must be >= 1, got {value}")
    for key, kind in RANGES.items():  # the argparse trainers refuse the same values through these types
        check_value(key, OmegaConf.select(cfg, key), kind)
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3:
        raise UserError("data.mean and data.std need three values (RGB, in [0, 1])")
    for i, value in enumerate(cfg.data.std):  # the images are divided by it
        check_value(f"data.std[{i}]", value, positive_float)
    try:  # building the loss checks the values too (an α denominator other than E-1 / E, ...)
        build_criterion(cfg.loss.name, cfg.model.num_classes, t.epochs, **loss_options(cfg.loss))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def per_process_batch(cfg: DictConfig, world: int) -> int:
    """training.batch_size is the global batch: processes × accumulation steps × this."""
    total, accum = cfg.training.batch_size, cfg.training.accum_steps
    if total % (world * accum):
        raise UserError(f"training.batch_size = {total} is not divisible by the {world} processes × "
                        f"training.accum_steps = {accum}")
    return total // (world * accum)


def dataset_name(cfg: DictConfig) -> str:
    """``imagenet`` for a 1000-class .beton, else the training file's stem (e.g. ``fmnist_train``)."""
    return "imagenet" if cfg.model.num_classes == 1000 else Path(cfg.data.train_dataset).stem


def resolved_config(cfg: DictConfig, world: int) -> dict[str, Any]:
    """The nested config, every option the loss is built with (``loss.options``), and what the launcher makes of it
    (``--print-config``, params.json, run.json, the checkpoint's ``args``). The lr is used as given (no batch
    scaling), so ``effective_lr`` is ``lr.lr``."""
    out = OmegaConf.to_container(cfg)
    out["loss"]["options"] = loss_options(cfg.loss)
    return {**out, "world_size": world, "per_process_batch_size": per_process_batch(cfg, world),
            "total_batch_size": cfg.training.batch_size, "effective_lr": cfg.lr.lr}


# --------------------------------------------------------------------------------------------------------------------
# Schedules (pure functions of the fractional epoch; the trainer sets the lr every iteration, as ffcv-imagenet does)
# --------------------------------------------------------------------------------------------------------------------
def learning_rate(epoch: float, sched: Any, epochs: int) -> float:
    """Learning rate at fractional ``epoch`` ∈ [0, epochs] from the ``lr`` section ``sched``.

    * ``step``: the authors' released config (lr 0.8, ×0.1 every 30 epochs, 90 epochs);
    * ``cosine``: paper Table 4 (lr 0.85, 200 epochs), optional linear warm-up;
    * ``triangular``: ffcv-imagenet's cyclic schedule, 1e-4·lr → lr at ``lr_peak_epoch`` → 0 at the end.
    """
    lr = sched["lr"]
    if sched["lr_schedule_type"] == "step":
        return lr * sched["step_ratio"] ** math.floor(epoch / sched["step_length"])
    if sched["lr_schedule_type"] == "cosine":
        warmup = sched["warmup_epochs"]
        if epoch < warmup:
            return lr * epoch / warmup
        progress = (epoch - warmup) / max(epochs - warmup, 1e-8)
        return sched["min_lr"] + 0.5 * (lr - sched["min_lr"]) * (1 + math.cos(math.pi * min(progress, 1.0)))
    return float(np.interp(epoch, [0, sched["lr_peak_epoch"], epochs], [1e-4 * lr, lr, 0.0]))


def train_resolution(epoch: int, res: Any) -> int:
    """Progressive resizing (the ``resolution`` section): min_res until start_ramp, linear to max_res at end_ramp,
    rounded to res_step."""
    value = np.interp(epoch, [res["start_ramp"], res["end_ramp"]], [res["min_res"], res["max_res"]])
    return int(round(value / res["res_step"])) * res["res_step"]


class Beton(NamedTuple):
    """A checked .beton and what ``write_imagenet.py``'s sidecar ``<file>.classes.json`` adds to it."""

    path: str
    num_samples: int
    classes: list[str] | None = None  # the name of label k
    layout: str = "imagefolder"
    class_indices: list[int] | None = None  # ImageNet-A/R: label k is model output class_indices[k]
    files: list[str] | None = None  # ImageNet val: each sample's ILSVRC2012_val_%08d file name, in .beton order


def read_sidecar(path: str, labels: np.ndarray) -> dict[str, Any]:
    """``<path>.classes.json`` checked against the .beton's label column ``labels`` (N,); {} if there is none. A
    sidecar from an older writer holds only ``classes``."""
    side = Path(f"{path}.classes.json")
    if not side.is_file():
        return {}
    rewrite = "rewrite the .beton with Conv/ffcv/write_imagenet.py"
    try:
        info = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{side} is not a sidecar written by write_imagenet.py ({exc}); {rewrite}") from None
    if not isinstance(info, dict) or not isinstance(info.get("classes", 0), (list, type(None))):
        raise UserError(f"{side} is not a sidecar written by write_imagenet.py (no 'classes' list); {rewrite}")
    n = len(labels)
    if info.get("num_samples", n) != n:
        raise UserError(f"{side} describes {info['num_samples']} samples but {path} holds {n} (an interrupted "
                        f"write?); {rewrite}")
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()
    if info.get("labels_sha256", digest) != digest:
        raise UserError(f"{side} was written for other labels than those in {path} (an interrupted write?); {rewrite}")
    keep = info.get("class_indices")
    if keep is not None:
        if not (isinstance(keep, list) and keep and all(type(i) is int and i >= 0 for i in keep)
                and len(set(keep)) == len(keep)):
            raise UserError(f"{side}: class_indices must be a list of distinct class indices; {rewrite}")
        if n and labels.max() >= len(keep):
            raise UserError(f"{path} has labels up to {labels.max()} but {side} lists {len(keep)} class_indices; "
                            f"{rewrite}")
        if info.get("classes") is not None and len(info["classes"]) != len(keep):
            raise UserError(f"{side} names {len(info['classes'])} classes but lists {len(keep)} class_indices; "
                            f"{rewrite}")
    files = info.get("files")
    if files is not None and not (isinstance(files, list) and len(files) == n
                                  and all(isinstance(f, str) for f in files)):
        raise UserError(f"{side} must list one file name per sample of {path} ({n}); {rewrite}")
    return info


def check_beton(path: str, role: str, num_classes: int, allow_missing_sidecar: bool = False) -> Beton:
    """Raise a one-line UserError unless ``path`` is a .beton with an RGB ``image`` and an int ``label`` field whose
    labels lie in [0, num_classes), or, for an ImageNet-A/R .beton, index its sidecar's ``class_indices``, which lie
    in [0, num_classes). A .beton without its sidecar is refused unless ``allow_missing_sidecar``
    (``data.allow_missing_sidecar``), which logs that its class order goes unchecked."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader

    key = f"data.{role}_dataset"
    if not path:
        raise UserError(f"{key} is not set; pass --{key}=<file.beton> (write one with write_imagenet.py)")
    if not Path(path).is_file():
        raise UserError(f"{key} not found: {path}; write it with Conv/ffcv/write_imagenet.py")
    try:
        reader = Reader(path)
    except (AssertionError, ValueError, OSError, IndexError) as exc:
        raise UserError(f"{path} is not an FFCV .beton file ({exc}); write it with write_imagenet.py") from None
    fields = {name: type(handler).__name__ for name, handler in reader.handlers.items()}
    if not (isinstance(reader.handlers.get("image"), RGBImageField)
            and isinstance(reader.handlers.get("label"), IntField)):
        raise UserError(f"{path} has fields {fields}, expected 'image' (RGBImageField) and 'label' (IntField); "
                        f"write it with write_imagenet.py")
    labels = reader.metadata[f"f{reader.field_names.index('label')}"]
    info = read_sidecar(path, labels)
    if not Path(f"{path}.classes.json").is_file():  # without it, differently ordered splits train on shifted labels
        if not allow_missing_sidecar:
            raise UserError(f"{path} has no sidecar {path}.classes.json, so its class order cannot be checked; "
                            f"rewrite it with Conv/ffcv/write_imagenet.py, or pass --data.allow_missing_sidecar=true")
        print(f"warning: {path} has no sidecar {path}.classes.json; its class order is not checked "
              f"(data.allow_missing_sidecar = true)", flush=True)
    keep = info.get("class_indices")
    if keep is not None:
        if role == "train":
            raise UserError(f"{path} is an {info.get('layout', 'ImageNet-A/R')} test set (its labels index "
                            f"{len(keep)} of the model's classes); pass it as --data.val_dataset")
        if max(keep) >= num_classes:
            raise UserError(f"{path} selects classes up to {max(keep)} of the model's outputs but model.num_classes "
                            f"= {num_classes}; evaluate an ImageNet-1k model (--model.num_classes=1000) on it")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path} has labels in [{labels.min()}, {labels.max()}] but model.num_classes = {num_classes}")
    return Beton(path, int(reader.num_samples), info.get("classes"), info.get("layout", "imagefolder"), keep,
                 info.get("files"))


def check_classes(betons: dict[str, Beton], num_classes: int) -> None:
    """Train and val name the same classes in the same order (an ImageNet-A/R val names those at its
    ``class_indices``), and the head has one output per class."""
    for b in betons.values():
        if b.classes is not None and b.class_indices is None and len(b.classes) != num_classes:
            raise UserError(f"{b.path} holds {len(b.classes)} classes but model.num_classes = {num_classes}; set "
                            f"--model.num_classes={len(b.classes)}")
    train, val = betons.get("train"), betons.get("val")
    if train is None or val is None or train.classes is None or val.classes is None:
        return
    expected = train.classes if val.class_indices is None else [train.classes[i] for i in val.class_indices]
    if expected != val.classes:
        diff = next(i for i, (a, b) in enumerate(zip(expected, val.classes, strict=False)) if a != b)
        raise UserError(f"the train and val .beton files list different classes (label {diff}: "
                        f"{expected[diff]!r} vs {val.classes[diff]!r}); labels would be shifted, so write both "
                        f"splits from folders with the same classes")


def load_real_labels(val: Beton, source: str) -> RealScorer:
    """The ReaL scorer (``data.real_labels``: a real.json path, or "true" for timm's bundled copy) of the val .beton
    ``val``: its sidecar's file names, in .beton order, and the wnid of each label."""
    if val.class_indices is not None:
        raise UserError(f"data.real_labels scores ImageNet val, but {val.path} is an {val.layout} .beton")
    if val.files is None:
        raise UserError(f"data.real_labels matches images by their ImageNet val file names (ILSVRC2012_val_XXXXXXXX) "
                        f"and {val.path} records none; rewrite it from the val folder with this version of "
                        f"Conv/ffcv/write_imagenet.py")
    if not val.classes:
        raise UserError(f"data.real_labels needs the ImageNet wnid of each label, but {val.path}'s sidecar names no "
                        f"classes; write the .beton from a val folder of wnid class folders")
    return RealScorer(val.files, val.classes, real_labels(None if source == "true" else source))


def gather_in_order(local: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) per-sample predictions in .beton order from each rank's ``local`` ones: rank r holds samples r, r + W, …
    (``create_val_loader``). The shards are scattered into one tensor and summed over ranks."""
    full = torch.zeros(n, dtype=torch.long)
    full[rank()::world_size()] = local.long().cpu() + 1  # 0 = not predicted
    full = all_reduce_sum(full)
    if (full == 0).any():
        raise RuntimeError(f"{int((full == 0).sum())} of {n} validation samples got no prediction")
    return full - 1


def seeded_crop_flip_decoder(output_size: tuple[int, int], seed: int):
    """ffcv's ``RandomResizedCropRGBImageDecoder`` followed by a horizontal flip (p = 0.5), with numba's RNG reseeded
    for every image from (``seed``, the batch's sample ids, the image's id). FFCV's sample order is a function of
    (seed, epoch), and the rank picks the shard, so the batch ids stand for (seed, epoch, step, rank), as in ffcv's own
    mixup (``np.random.seed(indices[-1])``). Seeding per image rather than per batch matters because numba's RNG is
    per thread and the images of a batch are decoded by ``data.num_workers`` threads: the augmentation of an image
    then does not depend on which thread decodes it, and a resumed epoch replays exactly."""
    from ffcv.fields.rgb_image import (
        IMAGE_MODES,
        RandomResizedCropRGBImageDecoder,
        get_random_crop,
        imdecode,
        resize_crop,
    )
    from ffcv.pipeline.compiler import Compiler

    class SeededRandomResizedCropFlip(RandomResizedCropRGBImageDecoder):
        def generate_code(self):
            jpg = IMAGE_MODES["jpg"]
            mem_read = self.memory_read
            my_range = Compiler.get_iterator()
            imdecode_c, resize_crop_c = Compiler.compile(imdecode), Compiler.compile(resize_crop)
            get_crop_c = Compiler.compile(get_random_crop)
            scale, ratio = np.array(self.scale), np.array(self.ratio)
            base = np.int64(seed % 1_000_003)

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage = my_storage
                batch_key = np.int64(0)
                for k in range(len(batch_indices)):
                    batch_key = (batch_key * 31 + np.int64(batch_indices[k])) % 1_000_000_007
                for dst_ix in my_range(len(batch_indices)):
                    source_ix = batch_indices[dst_ix]
                    np.random.seed((base * 7_919 + batch_key * 104_729 + np.int64(source_ix)) % 2_147_483_647)
                    field = metadata[source_ix]
                    image_data = mem_read(field["data_ptr"], storage_state)
                    height, width = np.uint32(field["height"]), np.uint32(field["width"])
                    if field["mode"] == jpg:
                        temp_buffer = temp_storage[dst_ix]
                        imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                        temp_buffer = temp_buffer.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                    else:
                        temp_buffer = image_data.reshape(height, width, 3)
                    i, j, h, w = get_crop_c(height, width, scale, ratio)
                    resize_crop_c(temp_buffer, i, i + h, j, j + w, destination[dst_ix])
                    if np.random.rand() < 0.5:
                        destination[dst_ix] = destination[dst_ix][:, ::-1].copy()
                return destination[:len(batch_indices)]

            decode.is_parallel = True
            return decode

    return SeededRandomResizedCropFlip(output_size)


def make_order_pure(loader) -> None:
    """ffcv's QUASI_RANDOM order shuffles its page table in place, so epoch e's order depends on how many epochs this
    process ran before (a resumed run would see other batches). Start every epoch from the pristine table: the order
    becomes a function of (seed, epoch) only, as RANDOM's already is."""
    order = loader.traversal_order
    table = getattr(order, "page_to_samples_array", None)
    if table is None:
        return
    pristine, sample_order = table.copy(), order.sample_order

    def pure_sample_order(epoch: int):
        table[...] = pristine
        return sample_order(epoch)

    order.sample_order = pure_sample_order


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 3, H, W) in [0, 255] → float (B, 3, H, W) normalised; mean/std are (1, 3, 1, 1) in [0, 255]."""
    x = (images.float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def reduce_meter(meter: ClassificationMeter, device: torch.device) -> ClassificationMeter:
    """Sum a meter over DDP ranks. Its sums live on the CPU, which NCCL cannot reduce: on CUDA they travel through
    the GPU (gloo reduces CPU tensors directly)."""
    if device.type != "cuda" or world_size() == 1:
        return meter.all_reduce()
    for t in (meter.totals, meter.ece.count, meter.ece.conf_sum, meter.ece.correct_sum):
        t.copy_(all_reduce_sum(t.to(device)).cpu())
    return meter


# --------------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------------
class ImageNetTrainer:
    """ffcv-imagenet's trainer shape: ``create_*`` builds each part, ``train`` runs ``train_loop`` / ``eval_and_log``
    per epoch and writes an atomic checkpoint after each."""

    def __init__(self, cfg: dict[str, Any], estimate: bool = False, synthetic: bool = False):
        """``estimate``: build only what training steps need (no val loader, resume or output folder) for
        :meth:`estimate`; ``synthetic``: generated batches instead of ``data.train_dataset``."""
        self.cfg = cfg
        import ffcv  # noqa: F401  before init_distributed silences print on rank > 0: numba's import inspects print
        self.dist = init_distributed(cfg.training.device or None)
        self.device = self.dist.device
        self.main = self.dist.rank == 0
        torch.manual_seed(cfg.training.seed + self.dist.rank)
        np.random.seed(cfg.training.seed + self.dist.rank)
        d = cfg.data
        self.mean = torch.tensor(list(d.mean), device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(list(d.std), device=self.device).view(1, 3, 1, 1) * 255
        self.output_dir = Path(cfg.logging.folder)
        self.start_epoch = 0
        self.last_metrics: dict[str, float] = {}
        roles = ("val",) if cfg.training.eval_only else ("train", "val")
        roles = () if synthetic else ("train",) if estimate else roles
        # fail fast, before any JIT work
        self.betons = {role: check_beton(d[f"{role}_dataset"], role, cfg.model.num_classes, d.allow_missing_sidecar)
                       for role in roles}
        check_classes(self.betons, cfg.model.num_classes)
        real = d.real_labels and not estimate
        self.real = load_real_labels(self.betons["val"], d.real_labels) if real else None
        self.partial: dict[str, Any] | None = None
        if synthetic:  # uint8 batches on the device, as FFCV hands them over; the train split's length
            n = train_split_size(dataset_name(cfg))[0] // (self.per_process_batch * self.dist.world_size)
            res = train_resolution(0, cfg.resolution)
            self.train_loader = self.decoder = SyntheticBatches(n, self.per_process_batch, cfg.model.num_classes,
                                                                (res, res), self.device, seed=cfg.training.seed)
        elif not cfg.training.eval_only:
            self.train_loader, self.decoder = self.create_train_loader()
        if not estimate:
            self.val_loader = self.create_val_loader()
        self.model, self.scaler = self.create_model_and_scaler()
        self.criterion = self.create_criterion()
        self.optimizer = self.create_optimizer()
        if estimate:
            return
        self.resume()
        self.initialize_logger()

    # ---------------------------------------------------------------------------------------------------- data
    @property
    def per_process_batch(self) -> int:
        return per_process_batch(self.cfg, self.dist.world_size)

    def _label_pipeline(self) -> list:
        from ffcv.fields.decoders import IntDecoder
        from ffcv.transforms import Squeeze, ToDevice, ToTensor

        pipe = [IntDecoder(), ToTensor(), Squeeze()]
        return pipe + [ToDevice(self.device, non_blocking=True)] if self.device.type == "cuda" else pipe

    def _image_tail(self) -> list:
        # uint8 leaves the loader (4× less to copy than float); normalisation happens in torch, so no cupy.
        from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

        dev = [ToDevice(self.device, non_blocking=True)] if self.device.type == "cuda" else []
        return [ToTensor(), *dev, ToTorchImage()]

    def create_train_loader(self):
        from ffcv.loader import Loader, OrderOption

        d = self.cfg.data
        n = self.betons["train"].num_samples
        if n < self.per_process_batch * self.dist.world_size:
            raise UserError(f"{d.train_dataset} has {n} images, fewer than one batch of training.batch_size = "
                            f"{self.cfg.training.batch_size} (the last partial batch is dropped)")
        check_accum_steps(n // (self.per_process_batch * self.dist.world_size), self.cfg.training.accum_steps,
                          images=n // self.dist.world_size, batch_size=self.cfg.training.batch_size,
                          batch_flag="training.batch_size", accum_flag="training.accum_steps")  # drop_last batches
        res = train_resolution(self.start_epoch, self.cfg.resolution)
        decoder = seeded_crop_flip_decoder((res, res), self.cfg.training.seed)
        order = OrderOption.RANDOM if self.dist.distributed else OrderOption.QUASI_RANDOM
        loader = Loader(d.train_dataset, batch_size=self.per_process_batch, num_workers=d.num_workers,
                        order=order, os_cache=d.in_memory, drop_last=True, distributed=self.dist.distributed,
                        seed=self.cfg.training.seed,
                        pipelines={"image": [decoder, *self._image_tail()],
                                   "label": self._label_pipeline()})
        make_order_pure(loader)
        return loader, decoder

    def create_val_loader(self):
        from ffcv.fields.decoders import CenterCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption

        d, v = self.cfg.data, self.cfg.validation
        decoder = CenterCropRGBImageDecoder((v.resolution, v.resolution), ratio=v.crop_ratio)
        # Rank r reads images r, r + W, ...: every image once at any world size (ffcv's distributed=True pads the
        # sequential order with duplicates, which would bias accuracy, NLL and ECE).
        n = self.betons["val"].num_samples
        shard = np.arange(self.dist.rank, n, self.dist.world_size)
        return Loader(d.val_dataset, batch_size=self.per_process_batch, num_workers=d.num_workers,
                      order=OrderOption.SEQUENTIAL, drop_last=False, indices=shard,
                      pipelines={"image": [decoder, *self._image_tail()], "label": self._label_pipeline()})

    # ---------------------------------------------------------------------------------------------------- model
    def create_model_and_scaler(self):
        m, t = self.cfg.model, self.cfg.training
        model = create_model(m.arch, m.num_classes, blurpool=t.use_blurpool, **m.kwargs)
        if t.finetune:  # paper Table 6: a pretrained backbone (a resume overrides it later)
            info = load_pretrained_backbone(model, t.finetune)
            print(f"fine-tuning from {t.finetune}: {info['loaded']} tensors loaded, head "
                  f"{'replaced' if info['head_replaced'] else 'kept'}")
        if self.cfg.dist.sync_bn and self.dist.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.dist.distributed:
            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None)
        if t.compile:
            model = torch.compile(model)
        scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        return model, scaler

    @property
    def module(self) -> nn.Module:
        return unwrap_model(self.model)

    def create_criterion(self) -> nn.Module:
        loss = self.cfg.loss
        return build_criterion(loss.name, self.cfg.model.num_classes, self.cfg.training.epochs, model=self.module,
                               **loss_options(loss)).to(self.device)

    def create_optimizer(self) -> torch.optim.Optimizer:
        """SGD; BatchNorm parameters get no weight decay unless optimizer.bn_weight_decay (grouped by module type,
        so torchvision's ``downsample.1`` BN is included, unlike ffcv-imagenet's ``'bn' in name`` test)."""
        t = self.cfg.training
        norm, rest = [], []
        for module in self.module.modules():
            is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
            (norm if is_norm and not t.bn_wd else rest).extend(module.parameters(recurse=False))
        groups = [{"params": rest, "weight_decay": t.weight_decay}, {"params": norm, "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=self.cfg.lr.lr, momentum=t.momentum, nesterov=t.nesterov)

    # ---------------------------------------------------------------------------------------------------- state
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoint.pth"

    def save_checkpoint(self, epoch: int, step: int, partial: dict[str, Any] | None = None) -> None:
        """``epoch``: the last completed epoch; ``partial``: progress inside the next one (preemption)."""
        check_finite_model(self.module, epoch if partial is None else epoch + 1, step, **NONFINITE_HINT)  # all ranks
        if not self.main:
            return
        d, m, v = self.cfg.data, self.cfg.model, self.cfg.validation
        atomic_save({
            "trainer": TRAINER,
            "model": self.module.state_dict(),
            "arch": arch_spec(m.arch, m.num_classes, blurpool=self.cfg.training.use_blurpool, **m.kwargs),
            # ffcv's center crop (ratio × short side, resized to val_res) = Resize(val_res / ratio) + CenterCrop.
            "eval_transform": transform_spec(v.resolution, crop_pct=v.crop_ratio, mean=list(d.mean), std=list(d.std)),
            "args": resolved_config(self.cfg, self.dist.world_size),
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "criterion": self.criterion.state_dict(),
            "rng": rng_state(),
            "metrics": self.last_metrics,
            **({"partial": partial} if partial else {}),
            **({"classes": names} if (names := self.class_names()) else {}),  # index = label (hub convert reads it)
        }, self.checkpoint_path())

    def class_names(self) -> list[str] | None:
        """The train .beton sidecar's ``classes`` (the name of label k: class folders, or a zip map's label order),
        where it names every output of the model; None otherwise (no sidecar, synthetic data, a test-set val)."""
        beton = self.betons.get("train") or self.betons.get("val")
        if beton is None or beton.classes is None or beton.class_indices is not None:
            return None
        names = [str(n) for n in beton.classes]
        return names if len(names) == self.cfg.model.num_classes else None

    def resume(self) -> None:
        path = self.cfg.training.resume
        if path == "auto":
            path = str(self.checkpoint_path()) if self.checkpoint_path().is_file() else ""
        if not path:
            if self.cfg.training.eval_only:
                raise UserError("training.eval_only needs a checkpoint: pass --training.resume=<checkpoint.pth>")
            return
        if self.cfg.training.eval_only:
            ckpt = load_checkpoint(path, map_location="cpu")  # load_state_dict moves each tensor to its parameter
            missing = [k for k in ("model", "epoch", "optimizer", "criterion") if k not in ckpt]
            if missing:
                raise UserError(f"{path} is not a Conv/ffcv checkpoint (missing {', '.join(missing)})")
            head = ckpt.get("arch", {}).get("num_classes")
            if head is not None and head != self.cfg.model.num_classes:
                raise UserError(f"{path} has a {head}-class head but model.num_classes = "
                                f"{self.cfg.model.num_classes}; evaluate it with --model.num_classes={head} on "
                                f"data with {head} classes")
        else:
            current = _flatten(resolved_config(self.cfg, self.dist.world_size))
            ckpt = open_resume(path, TRAINER, current, resume_keys(current), flag=resume_flag,
                               saved=lambda c: _flatten(c["args"]) if isinstance(c.get("args"), dict) else {},
                               required=("model", "epoch", "optimizer", "criterion"),
                               recognise=lambda a: isinstance(a.get("training"), dict) and isinstance(a.get("loss"),
                                                                                                     dict),
                               new_run_hint="--training.finetune")
        load_state_dict_strict(self.module, ckpt["model"], path)
        resumed = restore_state(ckpt, {"optimizer": self.optimizer, "scaler": self.scaler, "criterion": self.criterion})
        self.start_epoch, self.partial = resumed.start_epoch, resumed.partial
        if not self.cfg.training.eval_only:
            # FFCV's sample order is a function of (seed, epoch): continue where the checkpoint stopped.
            self.train_loader.next_epoch = self.start_epoch
        print(f"resumed from {path} (epoch {ckpt['epoch']} done)")

    # ---------------------------------------------------------------------------------------------------- loops
    def get_lr(self, epoch: float) -> float:
        return learning_rate(epoch, self.cfg.lr, self.cfg.training.epochs)

    def autocast(self):
        dtype = PRECISIONS[self.cfg.training.precision]
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None)

    def train_loop(self, epoch: int, preemption: Preemption | None = None) -> dict[str, Any]:
        """One epoch. Each step ends with :func:`maxsup.training.step_guard` (NaN/inf on any rank stops all;
        a preemption signal returns ``{"preempted": progress}`` at that step boundary). ``self.partial`` (from a
        preemption checkpoint) skips the steps already done."""
        t = self.cfg.training
        self.model.train()
        res = train_resolution(epoch, self.cfg.resolution)
        self.decoder.output_size = (res, res)  # progressive resizing (no recompilation needed)
        self.criterion.set_epoch(epoch)
        iters = len(self.train_loader)
        partial, self.partial = self.partial or {}, None
        loss_sum = torch.tensor(partial.get("loss_sum", 0.0), device=self.device)
        penalties = PenaltyStatsMeter(self.cfg.logging.stats_every)  # on the device; one sync at the end of the epoch
        if "penalties" in partial:
            penalties.load_state_dict(partial["penalties"], self.device)
        watch = Stopwatch(self.device)  # maxsup.timing: the whole loop, the first (FFCV JIT) iteration included
        batches, first = skip_done_batches(self.train_loader, partial)  # FFCV's order is a function of (seed, epoch)
        bar = tqdm(batches, total=iters, initial=first, desc=f"epoch {epoch}",
                   disable=not (self.main and self.cfg.logging.progress))
        clip = t.clip_grad_norm
        accum = t.accum_steps  # one optimizer step per `accum` batches; a last incomplete group is skipped
        usable = iters - iters % accum
        for it, (images, target) in enumerate(bar, start=first):
            if it == usable:
                break
            kill_point("step")
            last_micro = (it + 1) % accum == 0
            lr = self.get_lr(epoch + it / iters)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images = normalize(images.to(self.device, non_blocking=True), self.mean, self.std, t.channels_last)
            target = target.to(self.device, non_blocking=True).long()
            if it % accum == 0:
                self.optimizer.zero_grad(set_to_none=True)
            no_sync = self.model.no_sync() if not last_micro and hasattr(self.model, "no_sync") \
                else contextlib.nullcontext()
            with no_sync:  # DDP all-reduces only on the last batch of an accumulation group
                with self.autocast():
                    output, loss = compute_loss(self.model, self.criterion, images, target)
                self.scaler.scale(loss / accum).backward()
            if last_micro:
                if clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            loss_sum += loss.detach().float()
            penalties.update(it, output, target)
            stop = preemption is not None and preemption.requested
            # a preemption stops at the end of an accumulation group, so no half-accumulated gradient is lost
            if step_guard(loss, epoch, it, stop_requested=stop, **NONFINITE_HINT) and last_micro and it + 1 < usable:
                return {"preempted": {"step": it + 1, "loss_sum": loss_sum.item(),
                                      "penalties": penalties.state_dict()}}
        timing = train_timing((usable - first) * self.per_process_batch * self.dist.world_size, watch.seconds())
        self.criterion.on_epoch_end()  # OLS updates its soft targets here (all-reduced under DDP)
        train_loss = all_reduce_sum(loss_sum).item() / (max(usable, 1) * self.dist.world_size)
        return {"train_loss": train_loss, "lr": lr, "train_res": res, "alpha": getattr(self.criterion, "alpha", None),
                "train_samples": usable * self.per_process_batch * self.dist.world_size, **timing,
                **{f"train_{k}": v for k, v in penalties.compute().items()}}

    @torch.no_grad()
    def val_loop(self) -> dict[str, float]:
        """top-1/5, NLL and ECE over the val .beton; for ImageNet-A/R over the logits of its ``class_indices`` only
        (the standard protocol), and with ``data.real_labels`` the ReaL top-1 (``test_real_acc1`` over
        ``test_n_real`` images with a non-empty ReaL set)."""
        self.model.eval()
        keep = self.betons["val"].class_indices
        keep_idx = None if keep is None else torch.tensor(keep, device=self.device)
        meter = ClassificationMeter(self.cfg.model.num_classes if keep is None else len(keep))
        preds = []
        for images, target in self.val_loader:
            images = normalize(images.to(self.device, non_blocking=True), self.mean, self.std,
                               self.cfg.training.channels_last)
            with self.autocast():
                logits = self.model(images).float()
                if self.cfg.validation.lr_tta:  # averaged (ffcv-imagenet sums), so NLL/ECE stay meaningful
                    logits = (logits + self.model(torch.flip(images, dims=[3])).float()) / 2
            if keep_idx is not None:
                logits = logits.index_select(1, keep_idx)
            meter.update(logits, target.to(self.device).long())
            if self.real is not None:
                preds.append(logits.argmax(1).cpu())
        out = reduce_meter(meter, self.device).compute()
        stats = {"top_1": out["acc1"], "top_5": out["acc5"], "val_nll": out["nll"], "val_ece": out["ece"],
                 "val_n": out["n"]}
        if self.real is not None:
            local = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
            pred = gather_in_order(local, self.betons["val"].num_samples)
            real = RealScorer.result(*self.real.counts(pred))
            stats.update(test_real_acc1=real["real_acc1"], test_n_real=real["n_real"])
        return stats

    def eval_and_log(self, epoch: int, extra: dict[str, Any] | None = None,
                     before_log: Any = None) -> dict[str, Any]:
        """Validate, then ``before_log()`` (the checkpoint), then log: a kill never logs an unsaved epoch."""
        watch = Stopwatch(self.device)
        stats = {**self.val_loop(), "eval_seconds": watch.seconds()}
        if not self.cfg.training.eval_only:
            self.criterion.on_eval(stats["top_1"])  # Adaptive LS: the best checkpoint so far becomes its teacher
        self.last_metrics = stats
        if before_log is not None:
            before_log()
        self.log({"epoch": epoch, **(extra or {}), **stats})
        self.tensorboard.log({**(extra or {}), **stats}, epoch)
        return stats

    def train(self) -> dict[str, Any]:
        epochs = self.cfg.training.epochs
        if self.cfg.training.eval_only:
            return self.eval_and_log(self.start_epoch - 1, {"eval_only": True})
        stats: dict[str, Any] = dict(self.last_metrics)
        with Preemption() as preemption:
            for epoch in range(self.start_epoch, epochs):
                train_stats = self.train_loop(epoch, preemption)
                if "preempted" in train_stats:  # checkpoint at this step boundary, then exit cleanly
                    step = train_stats["preempted"]["step"]
                    self.save_checkpoint(epoch - 1, step, train_stats["preempted"])
                    preemption.checkpointed(epoch, step, f"rerun with {RESUME_FLAG}")
                    break
                stats = self.eval_and_log(epoch, train_stats,
                                          lambda e=epoch: self.save_checkpoint(e, len(self.train_loader)))
                if preemption.stop_after_epoch(epoch, epochs, self.device):
                    break
        barrier()
        self.tensorboard.close()
        return stats

    def estimate(self, steps: int) -> dict[str, Any]:
        """``--estimate N``: warm-up + N steps of :meth:`train_loop` at the last epoch's resolution (progressive
        resizing ends there; earlier epochs cost less), one JSON line (``maxsup.estimate``), nothing written."""
        t = self.cfg.training
        epoch = t.epochs - 1
        full = len(self.train_loader)
        self.train_loader = StepClock(self.train_loader, steps, t.accum_steps, self.device)
        self.train_loop(epoch)
        synthetic = isinstance(self.decoder, SyntheticBatches)
        return print_estimate(estimate_record(
            self.train_loader, trainer="ffcv", steps_per_epoch=full // t.accum_steps, epochs=t.epochs,
            world_size=self.dist.world_size, total_batch_size=t.batch_size, device=self.device,
            model=self.cfg.model.arch, loss=self.cfg.loss.name,
            resolution=train_resolution(epoch, self.cfg.resolution),
            data="synthetic" if synthetic else self.cfg.data.train_dataset))

    # ---------------------------------------------------------------------------------------------------- logging
    def initialize_logger(self) -> None:
        self.start_time = time.time()
        # eval_only writes its log into its own folder, never into a training run's folder (it prints only)
        self.writes_folder = not (self.cfg.training.eval_only and holds_run(self.output_dir, RUN_MARKERS))
        if not self.writes_folder and self.main:
            print(f"eval_only: {self.output_dir} holds a training run; the evaluation is printed, not logged there")
        self.tensorboard = ScalarWriter(self.cfg.logging.tensorboard, enabled=self.main)
        if not self.main or not self.writes_folder:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        config = resolved_config(self.cfg, self.dist.world_size)
        params = {**_flatten(config), "world_size": self.dist.world_size, "device": str(self.device),
                  "loader": type(self.val_loader).__module__ + "." + type(self.val_loader).__name__}
        atomic_write(self.output_dir / "params.json", json.dumps(params, indent=2, default=str) + "\n")
        if self.cfg.training.eval_only:  # its own folder: params.json and the evaluation's log line
            return
        repair_log(self.output_dir / "log.jsonl", self.start_epoch - 1)  # epochs past the checkpoint, a torn line
        write_run_record(self.output_dir, trainer="ffcv", config=config,
                         dataset=dataset_name(self.cfg),
                         model=self.cfg.model.arch, loss=self.cfg.loss.name, epochs=self.cfg.training.epochs,
                         seed=self.cfg.training.seed, world_size=self.dist.world_size, device=self.device,
                         alpha=alpha_schedule_of(self.criterion),
                         log_file="log.jsonl", metric_keys={"acc1": "top_1", "nll": "val_nll", "ece": "val_ece"},
                         not_recipe=NOT_RECIPE)

    def log(self, content: dict[str, Any]) -> None:
        if not self.main:
            return
        record = {"timestamp": time.time(), "relative_time": time.time() - self.start_time, **content}
        print(json.dumps(record), flush=True)
        if self.writes_folder:
            append_log(self.output_dir / "log.jsonl", record)


def local_checkpoints(cfg: DictConfig, keys: tuple[str, ...] = ("resume", "finetune")) -> DictConfig:
    """``cfg`` with each of ``training.<keys>`` that holds an http(s) URL replaced by its downloaded copy in
    torch.hub's cache (``maxsup.hub.local_checkpoint``, as the other trainers' ``--resume URL``); ``cfg`` itself is
    left as the user typed it."""
    local = copy.deepcopy(cfg)
    for key in keys:
        local.training[key] = local_checkpoint(cfg.training[key], f"--training.{key}")
    return local


def train_in_folder(cfg: DictConfig) -> dict[str, Any]:
    """One run; training claims ``logging.folder`` for as long as it runs (one run per folder,
    ``maxsup.training.runfolder``), ``training.eval_only`` writes nothing there."""
    t = cfg.training
    out = Path(cfg.logging.folder)
    resume = str(out / "checkpoint.pth") if t.resume == "auto" and (out / "checkpoint.pth").is_file() else \
        (t.resume if t.resume != "auto" else "")
    import ffcv  # noqa: F401  before init_distributed silences print on rank > 0: numba's import inspects print
    init_distributed(t.device or None)  # before the claim: every rank, not only rank 0, hears a refusal
    with claim_run_folder(None if t.eval_only else out, RUN_MARKERS, resume_from=resume, overwrite=t.overwrite,
                          resume_hint=RESUME_FLAG, overwrite_hint=OVERWRITE_FLAG):
        return ImageNetTrainer(local_checkpoints(cfg)).train()  # a URL: downloaded once, then its local path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("config keys (defaults and comments in config.yaml):")
        for key, value in _flatten(OmegaConf.to_container(read_yaml(DEFAULT_CONFIG))).items():
            print(f"  --{key}={json.dumps(value)}")
        return {}
    argv, estimate, synthetic = pop_estimate_flags(argv)  # --estimate N [--estimate-synthetic]: time, write nothing
    show = "--print-config" in argv
    argv = [a for a in argv if a != "--print-config"]
    seeds_arg = None
    for i, arg in enumerate(argv):  # --seeds 0,3,7 / --seeds=0,3,7: a sweep, not a config key
        if arg == "--seeds" or arg.startswith("--seeds="):
            seeds_arg = arg.partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else "")
            del argv[i:i + (1 if "=" in arg else 2)]
            break
    cfg = load_config(argv)
    seeds = parse_seeds(seeds_arg)
    if show:
        return print_config({**resolved_config(cfg, launcher_world_size()),
                             "seeds": seeds if seeds is not None else [cfg.training.seed]})
    if estimate and cfg.training.eval_only:
        raise UserError("--estimate times training steps; it cannot be combined with --training.eval_only=true")
    if estimate:
        # the weights to time from; a resume is not read for an estimate, so it is not downloaded either
        return ImageNetTrainer(local_checkpoints(cfg, ("finetune",)), estimate=True,
                               synthetic=synthetic).estimate(estimate)
    if seeds is None or cfg.training.eval_only:  # eval_only evaluates one checkpoint, whatever SEEDS says
        return train_in_folder(cfg)

    def run(seed: int) -> dict[str, Any]:  # one run folder (and TensorBoard folder) per seed, one after the other
        cfg_seed = copy.deepcopy(cfg)
        cfg_seed.training.seed = seed
        cfg_seed.logging.folder = seed_dir(cfg.logging.folder, seed)
        cfg_seed.logging.tensorboard = seed_dir(cfg.logging.tensorboard, seed)
        return train_in_folder(cfg_seed)

    return run_seeds(seeds, run, cfg.logging.folder, RESUME_FLAG)


if __name__ == "__main__":
    run_cli(main)
