"""Which runs pool: the group key is the resolved recipe minus what does not change what is trained.

A run folder's ``run.json`` records the trainer's resolved configuration (the ``--print-config`` JSON). Two runs
pool into one mean ± std only when every value of that configuration is equal, except the keys of
:data:`NOT_TRAINED`: the seed, paths, workers, print frequency, logging, resume/evaluation switches, and how the
global batch is split (per-process batch, world size, accumulation steps; ``total_batch_size`` = per-process batch ×
world size × accumulation steps stays in the key, so 8 × 64 pools with 4 × 64 × ``--accum-steps 2``). The key is
generic: a config key a trainer adds later (a loss option, a resolved ``loss_options`` dict) splits groups unless it
is listed here.

>>> group_key({"seed": 0, "loss": "maxsup", "alpha_denominator": "E-1", "batch_size": 64, "total_batch_size": 512})
(('alpha_denominator', 'E-1'), ('loss', 'maxsup'), ('total_batch_size', 512))
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from maxsup.recipes import _equal

__all__ = ["MISSING", "NOT_TRAINED", "NOT_TRAINED_PREFIXES", "describe_differences", "field", "flatten", "group_key",
           "same"]

#: Config keys (matched on the whole dotted key or its last part) that do not change what is trained or measured.
#: ``lr`` is left out because ``effective_lr`` (the learning rate after the trainer's batch scaling) is in every
#: trainer's config; ``finetune`` (a checkpoint path) is replaced by the method that trained that checkpoint.
NOT_TRAINED = frozenset({
    # the seed: what pooling averages over
    "seed", "seeds",
    # paths and data locations
    "output_dir", "data_path", "train_dataset", "val_dataset", "resume", "finetune", "token_label_data",
    "download", "cache", "in_memory",
    # processes, workers, devices and the split of the global batch (total_batch_size stays)
    "device", "num_workers", "workers", "world_size", "batch_size", "per_process_batch_size", "accum_steps",
    "pin_mem", "dist_eval", "eval_batch_size", "compile", "channels_last", "model_ema_force_cpu",
    "use_deterministic_algorithms",
    # learning rate before the trainer's batch scaling (effective_lr stays)
    "lr", "unscale_lr",
    # logging, printing, resume and evaluation-only switches
    "print_freq", "stats_every", "tensorboard", "print_config", "progress", "start_epoch", "save_every_epoch",
    "eval", "eval_ema", "test_only", "eval_only", "skip_corrupt", "real_labels", "extra_val", "overwrite",
    "estimate", "estimate_synthetic", "allow_missing_sidecar",
    # loss options as typed (``--loss-opt``, FFCV's ``loss.opts`` and its unset-or-given α): what they resolve to
    # is in ``loss_options`` / ``loss.options`` (every option, defaults filled in), which stays in the key
    "loss_opt", "opts", "loss.alpha_start", "loss.alpha_end", "loss.alpha_denominator",
})
#: Whole config sections that are logging only (FFCV's ``logging.*``).
NOT_TRAINED_PREFIXES = ("logging.",)

MISSING = object()


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections → dotted keys (``{"loss": {"name": "ls"}}`` → ``{"loss.name": "ls"}``); lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (list, dict, tuple)) else value


def group_key(config: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> tuple[tuple[str, Any], ...]:
    """The sorted (key, value) pairs of ``config`` (flattened) that change what is trained, plus ``extra``
    (fields derived from the run record, e.g. the trainer). Lists and dicts are compared as canonical JSON."""
    flat = flatten(config)
    kept = {k: v for k, v in flat.items()
            if k not in NOT_TRAINED and k.rpartition(".")[2] not in NOT_TRAINED
            and not k.startswith(NOT_TRAINED_PREFIXES)}
    kept.update(extra or {})
    return tuple(sorted((k, _hashable(v)) for k, v in kept.items()))


def field(fields: Mapping[str, Any], key: str) -> Any:
    """``fields[key]``; else the value of the dotted keys whose last part is ``key`` (``alpha_denominator`` finds a
    ``loss_options.alpha_denominator``). Where several hold it, those set (not None) must agree: FFCV's
    ``loss.alpha_denominator`` is null unless given, its resolved value is ``loss.options.alpha_denominator``. Else
    :data:`MISSING`."""
    if key in fields:
        return fields[key]
    hits = [fields[k] for k in fields if k.rpartition(".")[2] == key]
    if len(hits) > 1:
        hits = [v for v in hits if v is not None]
        hits = hits[:1] if hits and all(_hashable(v) == _hashable(hits[0]) for v in hits) else hits
    return hits[0] if len(hits) == 1 else MISSING


def same(got: Any, want: Any) -> bool:
    """Recipe-value equality (floats with a relative tolerance of 1e-9, bools never equal to numbers)."""
    return got is not MISSING and _equal(got, want)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def describe_differences(keys: Iterable[tuple[tuple[str, Any], ...]]) -> str:
    """``a: 1 vs 2; b: x vs (absent)``: every key whose value is not the same in all the given group keys."""
    dicts = [dict(k) for k in keys]
    names = sorted(set().union(*dicts))
    parts = []
    for name in names:
        values = [d.get(name, MISSING) for d in dicts]
        shown = list(dict.fromkeys("(absent)" if v is MISSING else _show(v) for v in values))
        if len(shown) > 1:
            parts.append(f"{name}: {' vs '.join(shown)}")
    return "; ".join(parts) or "no config difference (different input kinds)"
