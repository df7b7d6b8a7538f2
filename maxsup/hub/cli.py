"""The authors' released checkpoints (registry, verified download, conversion, evaluation) and publishing our runs.

The command line of :mod:`maxsup.hub` (``python -m maxsup.hub`` and the ``maxsup-hub`` console script).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..cli import ArgumentParser, positive_int, run_cli
from ..data.imagenet_variants import EVAL_SETS, add_real_labels_arg
from ..errors import UserError
from ..models import parse_model_kwargs
from ..training.checkpoint import atomic_save
from .convert import convert_checkpoint, load_released_checkpoint
from .download import download, list_remote, pick_file
from .evaluate import evaluate_checkpoint, resolve_for_eval
from .mmseg import export_mmseg
from .publish import export, push
from .registry import REGISTRY, DownloadError, file_rule

__all__ = ["get_args_parser", "main"]

log = logging.getLogger("maxsup.hub")


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m maxsup.hub", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="show the registry and the rule that picks each model's file")
    p.add_argument("--remote", action="store_true", help="also list each release/repository now and show which "
                   "file the rule picks (or why none)")

    def add_fetch(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dest", default=None, help="folder for the downloaded file (default: the cache, "
                       "$MAXSUP_CACHE or ~/.cache/maxsup)")
        p.add_argument("--filename", default=None, help="pick this file of the release/repository instead of "
                       "the one the rule picks (see `list --remote`)")
        p.add_argument("--offline", action="store_true", help="never use the network; use --dest or the cache")

    def add_convert(p: argparse.ArgumentParser) -> None:
        p.add_argument("--label-order", default="auto", choices=("auto", "zip", "standard"),
                       help="upstream files: auto permutes the head from the authors' zip order when the "
                       "checkpoint's args say cache=True; zip: always; standard: never. A file in this project's "
                       "format keeps its head unless zip is given, which is refused where it is provably in "
                       "sorted-wnid order (trained on class folders, or written by convert), or it records its "
                       "classes as wnids out of sorted order, which auto sorts it by (standard keeps it)")
        p.add_argument("--zip-map", default=None, help="local copy of the authors' zip_val_map.txt (default: "
                       "download it from their repository); for a file in this project's format, with "
                       "--label-order zip only")
        p.add_argument("--plain-torchvision", action="store_true", help="opt-in: load BlurPool ResNet weights "
                       "into a plain torchvision ResNet by dropping the blur (changes the function); evaluate: "
                       "upstream files only")
        p.add_argument("--model-kwargs", nargs="*", default=None, metavar="KEY=VALUE",
                       help="extra arguments of the network the weights belong to, as the trainers' --model-kwargs "
                       "(e.g. img_size=384 for a DeiT fine-tuned at 384 px); stored in the converted file")

    p = sub.add_parser("download", help="download a registry checkpoint (sha256-verified, resumable)")
    p.add_argument("name")
    p.add_argument("--sha256", default=None, help="expected sha256 (overrides the API's digest and the recorded "
                   "hash)")
    add_fetch(p)
    p = sub.add_parser("export-mmseg", help="DeiT-S backbone in MMSegmentation's VisionTransformer key layout, "
                       "plus an UperNet + DeiT-S ADE20K config beside it")
    p.add_argument("ckpt", help="a DeiT-S checkpoint: ours (any trainer, or `convert` output) or the authors' file")
    p.add_argument("out", help="the MMSegmentation checkpoint to write (.pth)")
    p.add_argument("--config", default=None, help="where to write the config (default: OUT's folder, "
                   "<OUT stem>_upernet_ade20k.py); 'none' writes no config")
    p = sub.add_parser("convert", help="convert an upstream checkpoint to this project's format")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--arch", required=True, help="a timm name (deit_small_patch16_224, lvvit_s) or a torchvision "
                   "ResNet (resnet50); the file may be ours (then the network it records), DeiT's/SMMix's "
                   "{'model'}, timm-train, LV-ViT's bare state_dict or Lightning")
    p.add_argument("--offline", action="store_true", help="do not download the zip map")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    add_convert(p)
    p = sub.add_parser("evaluate", help="top-1/top-5/NLL/ECE of a registry name or checkpoint on an ImageFolder")
    p.add_argument("checkpoint", help=f"one of {', '.join(REGISTRY)}, or a checkpoint path")
    p.add_argument("--data-path", required=True, help="ImageFolder with one folder per wnid (e.g. imagenet/val)")
    p.add_argument("--arch", default=None, help="architecture of a raw upstream checkpoint path (a file in this "
                   "project's format records its own; another name is refused)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    p.add_argument("--workers", type=int, default=4, help="data-loading processes")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--dataset", default="imagefolder", choices=["imagefolder", *EVAL_SETS],
                   help="layout of --data-path: an ImageFolder (ImageNet val), ImageNetV2 (folders 0..999), "
                        "ImageNet-A/-R (200 wnid folders; the 200 logits only) or ImageNet-Sketch")
    add_real_labels_arg(p, "(real_acc1, over n_real images)")
    add_fetch(p)
    add_convert(p)
    p = sub.add_parser("export", help="a run's weights as timm loads them: model.safetensors + config.json "
                       "(pretrained_cfg: input size, crop, interpolation, mean/std, label names)")
    p.add_argument("run", help="a run folder (its checkpoint.pth) or a checkpoint file of this project")
    p.add_argument("out", help="the folder to write")
    p.add_argument("--format", default="safetensors", choices=["safetensors"], help="weights format")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p = sub.add_parser("push", help="export a run and publish it with a model card to the Hugging Face Hub "
                       "(timm.create_model('hf-hub:ORG/NAME', pretrained=True) loads it)")
    p.add_argument("run", help="a run folder (run.json + checkpoint.pth)")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub (created if missing)")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--paper-table", default=None, help="a table written by `python -m analysis.collect ... "
                   "--paper TN --out DIR` (DIR/TN.md): the run's numbers beside the paper's, put in the model card")
    return parser


def _print_list(remote: bool) -> None:
    for entry in REGISTRY.values():
        where = "GitHub release" if entry.source == "github" else "Hugging Face repo"
        print(f"{entry.name:20s} {entry.arch:24s} {where} {entry.repo}@{entry.revision}")
        print(f"{'':20s} {entry.description}")
        print(f"{'':20s} rule: {file_rule(entry)}")
        if not remote:
            continue
        try:
            files, found_in = list_remote(entry)
            chosen = pick_file(entry, files, None, found_in)
            check = (f"sha256 {chosen.sha256}" if chosen.sha256 else
                     "no sha256 from the API: recorded at first download")
            print(f"{'':20s} picks: {chosen.name} ({chosen.size} bytes, {check})")
        except DownloadError as exc:
            print(f"{'':20s} picks nothing: {exc}")


def _run(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)
    if args.command == "list":
        _print_list(args.remote)
    elif args.command == "download":
        print(download(args.name, dest=args.dest, filename=args.filename, offline=args.offline, sha256=args.sha256))
    elif args.command == "convert":
        if Path(args.dst).is_file() and not args.force:  # checked before the (slow) load: nothing is replaced
            raise UserError(f"{args.dst} exists; pass --force to replace it")
        raw = load_released_checkpoint(args.src)
        ckpt = convert_checkpoint(raw, args.arch, label_order=args.label_order, zip_map=args.zip_map,
                                  plain_torchvision=args.plain_torchvision, offline=args.offline, source=args.src,
                                  model_kwargs=parse_model_kwargs(args.model_kwargs))
        atomic_save(ckpt, args.dst)
        print(json.dumps({"dst": str(args.dst), **ckpt["hub"], "arch": ckpt["arch"]}))
    elif args.command == "export-mmseg":
        config = None if args.config in (None, "none") else args.config
        out, cfg = export_mmseg(args.ckpt, args.out, config=config, write_config=args.config != "none")
        print(json.dumps({"checkpoint": str(out), "config": str(cfg) if cfg else None}))
    elif args.command == "evaluate":
        ckpt = resolve_for_eval(args.checkpoint, args)
        result = evaluate_checkpoint(ckpt, args.data_path, args.batch_size, args.workers, args.device, args.limit,
                                     dataset=args.dataset, real=args.real_labels)
        print(json.dumps({"checkpoint": args.checkpoint, **result}))
    elif args.command == "export":
        print(export(args.run, args.out, fmt=args.format, force=args.force))
    elif args.command == "push":
        paper = None
        if args.paper_table:
            try:
                paper = Path(args.paper_table).read_text()
            except OSError as exc:
                raise UserError(f"--paper-table {args.paper_table}: {exc.strerror}; write it with `python -m "
                                f"analysis.collect RUNS --paper TN --out DIR`") from None
        print(push(args.run, args.repo_id, token=args.token, private=args.private, paper=paper))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point: bad input becomes one ``error: ...`` line on stderr and exit status 2."""
    return run_cli(_run, argv)
