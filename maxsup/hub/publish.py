"""Export a run's weights in the form timm loads, and publish them to the Hugging Face Hub with a model card.

``export`` rebuilds the run's network as the timm model of the same architecture, loads the weights into it strictly
(so a file that timm could not load is never written), and saves it with timm's own ``save_for_hf``:
``model.safetensors`` plus ``config.json`` in timm's ``pretrained_cfg`` form (architecture, num_classes, input size,
mean/std, crop, interpolation, label names). ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` then builds
it, with the run's evaluation transform in ``model.pretrained_cfg``.

Architectures: every timm model (DeiT, ViT, LV-ViT once ``import maxsup`` has registered it) and torchvision's
ResNets, whose parameter names timm's ResNets share. Networks with no timm counterpart (BlurPool ResNets, the CIFAR
ResNets, token-head wrappers) are refused with one sentence: publish those as the trainer's checkpoint instead.

``push`` exports into a temporary folder, adds a model card (the run's resolved recipe, its provenance, its results
and how to evaluate it) and uploads the folder through ``huggingface_hub`` (``HF_ENDPOINT`` and ``HF_TOKEN`` are
honoured, as huggingface_hub does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["export", "model_card", "push", "resolve_run"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def resolve_run(ref: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(checkpoint file, run folder or None)`` for a run folder (its last ``checkpoint.pth``) or a checkpoint file."""
    path = Path(ref)
    if path.is_dir():
        ckpt = path / "checkpoint.pth"
        if not ckpt.is_file():
            raise UserError(f"{path} has no checkpoint.pth; pass a run folder of a trainer, or the checkpoint file")
        return ckpt, path
    if path.is_file():
        return path, path.parent if (path.parent / "run.json").is_file() else None
    raise UserError(f"{path} does not exist; pass a run folder or a checkpoint file")


def _timm_model(ckpt: Mapping[str, Any], source: str):
    """The checkpoint's network as a timm model with its weights loaded strictly, and the timm name."""
    import timm

    from .. import models  # noqa: F401  (registers LV-ViT with timm)
    from ..models import load_state_dict_strict

    arch = ckpt.get("arch")
    if not isinstance(arch, Mapping) or "model" not in ckpt:
        raise UserError(f"{source} is not a checkpoint of this project (no 'arch'/'model'); convert an upstream file "
                        f"first with `python -m maxsup.hub convert`")
    name, kwargs = arch["name"], dict(arch.get("kwargs") or {})
    timm_name = timm.is_model(name) or name in _TORCHVISION_RESNETS
    if kwargs.pop("blurpool", False) or "token_head" in kwargs or not timm_name:
        raise UserError(f"{source}: {name} {arch.get('kwargs') or ''} has no timm counterpart, so it cannot be "
                        f"exported in timm's form; share its checkpoint.pth (maxsup.models.model_from_checkpoint "
                        f"loads it)")
    model = timm.create_model(name, pretrained=False, num_classes=int(arch["num_classes"]), **kwargs)
    load_state_dict_strict(model, ckpt["model"], source)
    return model.eval(), name, kwargs


def _data_config(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    if not spec:
        return {}
    size = int(spec["img_size"])
    return {"input_size": (3, size, size), "interpolation": spec.get("interpolation", "bilinear"),
            "mean": tuple(spec["mean"]), "std": tuple(spec["std"]), "crop_pct": float(spec.get("crop_pct", 1.0)),
            "crop_mode": "center"}


def export(ref: str | os.PathLike, out: str | os.PathLike, *, fmt: str = "safetensors", force: bool = False,
           label_names: list[str] | None = None) -> Path:
    """Write ``out/`` = ``model.safetensors`` + ``config.json`` (timm ``save_for_hf``); returns ``out``.

    The folder is assembled beside ``out`` and moved into place at the end, so a failed export leaves nothing."""
    from timm.models import save_for_hf

    from ..training import load_checkpoint

    if fmt != "safetensors":
        raise UserError(f"--format {fmt!r} is not supported; use --format safetensors")
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to replace it")
    ckpt_path, _ = resolve_run(ref)
    ckpt = load_checkpoint(ckpt_path)
    model, name, kwargs = _timm_model(ckpt, str(ckpt_path))
    labels = label_names or ckpt.get("classes")
    config = {"label_names": list(labels)} if labels else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_for_hf(model, str(tmp), model_config=config, model_args=kwargs or None,
                    data_config=_data_config(ckpt.get("eval_transform")), safe_serialization=True)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _results(run_dir: Path | None, record: Mapping[str, Any]) -> dict[str, Any]:
    """Last and best top-1 of the run's log (the keys its run.json names)."""
    if run_dir is None or not record.get("log_file"):
        return {}
    log, key = run_dir / record["log_file"], record.get("metric_keys", {}).get("acc1")
    if not log.is_file() or not key:
        return {}
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    scores = [(r["epoch"], r[key]) for r in rows if key in r]
    if not scores:
        return {}
    best = max(scores, key=lambda s: s[1])
    return {"epochs_logged": len(scores), "last_top1": scores[-1][1], "best_top1": best[1], "best_epoch": best[0]}


def model_card(repo_id: str, record: Mapping[str, Any], results: Mapping[str, Any],
               paper: str | None = None) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) for one run."""
    loss, model, dataset = record.get("loss", "?"), record.get("model", "?"), record.get("dataset", "?")
    lines = ["---", "tags:", "- image-classification", "- timm", "- maxsup", "library_name: timm",
             "license: apache-2.0", "---", "", f"# {repo_id.split('/')[-1]}", "",
             f"{model} trained on {dataset} with the `{loss}` loss by "
             "[maxsup-repro](https://arxiv.org/abs/2502.15798) (MaxSup: Overcoming Representation Collapse in Label "
             "Smoothing, NeurIPS 2025).", "", "## Use", "", "```python", "import timm",
             f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
             "cfg = timm.data.resolve_data_config({}, model=model)  # the run's evaluation crop and normalisation",
             "transform = timm.data.create_transform(**cfg)", "```", ""]
    if results:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items()]
        lines.append("")
    if paper:
        lines += ["## Beside the paper", "", paper, ""]
    prov = record.get("provenance") or {}
    lines += ["## Provenance", "", "```json", json.dumps(prov, indent=2, default=str), "```", "",
              "## Recipe (the run's resolved configuration)", "", "```json",
              json.dumps(record.get("config", {}), indent=2, default=str), "```", ""]
    return "\n".join(lines)


def push(run: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False,
         paper: str | None = None, commit_message: str = "Add model") -> str:
    """Export ``run`` and upload it with its model card to ``repo_id``; returns the commit URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HTTPError  # HTTPError: the transport's (resets, refusals)

    if not _REPO_ID.match(repo_id or ""):
        raise UserError(f"--repo-id {repo_id!r} is not of the form ORG/NAME (letters, digits, '-', '_', '.')")
    token = token or get_token()
    if not token:
        raise UserError("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`")
    ckpt_path, run_dir = resolve_run(run)
    record = json.loads((run_dir / "run.json").read_text()) if run_dir else {}
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        folder = export(ckpt_path, Path(tmp) / "export")
        (folder / "README.md").write_text(model_card(repo_id, record, _results(run_dir, record), paper))
        api = HfApi(endpoint=endpoint, token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        except (HfHubHTTPError, HTTPError, OSError) as exc:
            raise UserError(f"push to {endpoint}/{repo_id} failed: {str(exc).splitlines()[0]}") from None
    return str(getattr(info, "commit_url", info))
