"""The demo's recipe: what is trained and analysed, at which scale (data, not code paths).

Read by ``run_demo.py`` (the orchestration) and ``report.py`` (the tables). Changing a value here changes the runs'
identity, so ``run_demo.py`` retrains them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maxsup.data.fashion_mnist import HELD_OUT_CLASSES, SOURCE_CLASSES
from maxsup.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ",".join(map(str, SOURCE_CLASSES))
HELD_OUT = ",".join(map(str, HELD_OUT_CLASSES))
CORE_LOSSES = ("ce", "ls", "maxsup")
EXTRA_LOSSES = ("ols", "zipf", "lp")
LABELS = {"ce": "CE", "ls": "LS", "maxsup": "MaxSup", "ols": "OLS", "zipf": "Zipf-LS", "lp": "LP"}
BACKBONES = ("resnet", "vit")
BACKBONE_LABELS = {"resnet": "ResNet", "vit": "ViT"}
METRICS = ("acc", "nll", "ece", "d_within_train", "d_within_test", "d_total_train", "d_total_test", "r2_train",
           "r2_test", "transfer_acc", "misclassified_train_log", "misclassified_train_final", "corr_error",
           "corr_nll", "corr_ece")
# Table 8 analogue: Fashion-MNIST-C made on the fly by analysis.robustness (corrupt-tta, seeded per image).
DEMO_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "fog", "contrast")
DEMO_SEVERITIES = (1, 3, 5)
# Paired verdicts: MaxSup − LS per seed (same seeds, same data order), mean and 95 % t-interval over seeds.
PAIRED = (("maxsup", "ls"), ("maxsup", "ce"))
PAIRED_METRICS = ("acc", "nll", "ece", "corr_error", "corr_ece", "r2_test", "transfer_acc")
# Table 7 analogue (DEMO_SCALE=full or --long-tail): the ResNet recipe on a long-tailed split of the source classes,
# 1000, 376, 141, 53, 20 training images (many-shot > 100: 3 classes; medium: 2; few-shot < 20: none at full size).
LT_RATIO = 50
LT_LOSSES = ("ce", "ls", "maxsup", "focal")  # Table 7 compares MaxSup with Focal loss on long-tailed data
LT_LABELS = {**LABELS, "focal": "Focal"}
LT_GROUPS = ("overall", "many", "medium", "few")

# The ResNet recipe is Conv/common_resnet/README.md's "Small CPU recipe" (1,000 images per source class, 8 epochs,
# RandomCrop(28, pad 4) + flip): about 19 % of the augmented training batches are misclassified in the last epoch,
# close to ImageNet ResNet-50's ~20 %, the regime where LS and MaxSup differ (they differ only on misclassified
# samples, paper Theorem 3.3 / Corollary 3.4).
RESNET_RECIPE = ["--dataset", "fmnist", "--classes", SOURCE, "--limit-per-class", "1000", "--model", "cifar_resnet10",
                 "--model-kwargs", "width=16", "--epochs", "8", "-b", "64", "--lr", "0.1", "--wd", "5e-4",
                 "--lr-scheduler", "cosineannealinglr", "-j", "1", "--print-freq", "20"]
# The ViT recipe is the embedded default of Deit/train_with_MaxSup.sh (its MaxSup run is this set's MaxSup run).
VIT_RECIPE: list[str] = []


@dataclass(frozen=True)
class Scale:
    """Knobs that shrink the experiment for CI; the method-independent recipe stays the same."""

    resnet_extra: tuple[str, ...]
    vit_extra: tuple[str, ...]
    probe_per_class: int  # training images per class for the feature metrics (train) and the transfer probe
    epochs: dict[str, int]
    probe_extra: tuple[str, ...] = ()  # analysis/linear_transfer.py flags
    robustness_per_class: int = 200  # test images per class under each corruption and severity
    test_images: str = "the full 5,000-image test split of those classes"
    long_tail: bool = False  # also train the Table 7 analogue
    aug: bool = False  # also train the SMMix / Token Labeling ViTs (DEMO_AUG)


SCALES = {
    "default": Scale((), (), probe_per_class=1000, epochs={"resnet": 8, "vit": 5}),
    "full": Scale((), (), probe_per_class=1000, epochs={"resnet": 8, "vit": 5}, long_tail=True, aug=True),
    "smoke": Scale(("--limit-per-class", "40", "--epochs", "2", "--print-freq", "1"),
                   ("--limit-per-class", "40", "--epochs", "2", "--print-freq", "1"),
                   probe_per_class=40, epochs={"resnet": 2, "vit": 2}, probe_extra=("--num-lambdas", "9"),
                   test_images="the first 40 test images per class", robustness_per_class=40),
}


# --------------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------------
def train_command(backbone: str, loss: str, seed: int, out: Path, scale: Scale, data_path: str | None) -> list[str]:
    """Every demo run trains from scratch: ``--overwrite`` lets it replace the run a previous ``make demo`` left in
    ``out`` (the trainers refuse a fresh run into a run folder otherwise)."""
    data = ["--data-path", data_path] if data_path else []
    if backbone == "resnet":
        return [sys.executable, str(ROOT / "Conv/common_resnet/train.py"), *RESNET_RECIPE, *scale.resnet_extra,
                *data, "--loss", loss, "--seed", str(seed), "--output-dir", str(out), "--overwrite"]
    return ["bash", str(ROOT / "Deit/train_with_MaxSup.sh"), *VIT_RECIPE, *scale.vit_extra, *data, "--loss", loss,
            "--seed", str(seed), "--output_dir", str(out), "--overwrite"]


# SMMix / Token Labeling (DEMO_AUG, on with DEMO_SCALE=full): the ViT recipe again, same seeds, plus each method's
# flags. Not in the paper: an extension of ours. SMMix uses the official switch (half the batches SMMix, half Mixup
# α 0.8). Token Labeling needs an image folder (the trainer reads label maps per image file), so those runs read
# data/prepare_fashion_mnist.py's folder of the source classes (already relabelled 0..4, hence --classes ''), with
# MixToken and the label maps data/make_token_labels.py makes with the same seed's CE ResNet as the teacher: a CNN's
# logits are the global average of its per-position scores, as for the official NFNet-F6 maps, whereas a CLS-token
# ViT's head was never trained on patch tokens (with the CE ViT as teacher the majority token label matched the image
# label for 36 % of seed 0's training images, against 79 % with the CE ResNet).
AUG_METHODS = ("smmix", "tokenlabel")
AUG_LABELS = {"smmix": "SMMix", "tokenlabel": "MixToken + token labels"}
AUG_SHORT = {"smmix": "SMMix", "tokenlabel": "TL"}
AUG_TEACHER = ("resnet", "ce")  # the run whose checkpoint labels the tokens
AUG_BASELINE = ("vit", "ce")  # the plain ViT the SMMix / Token Labeling runs are compared with
TOKEN_LABEL_TOPK = 5  # all five source classes


def resolve_aug(text: str) -> list[str]:
    """``DEMO_AUG``: empty or ``0`` → none, ``all`` or ``1`` → both, else a comma list of :data:`AUG_METHODS`."""
    text = text.strip()
    if text in ("", "0", "none"):
        return []
    if text in ("1", "all"):
        return list(AUG_METHODS)
    methods = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in methods if x not in AUG_METHODS]
    if bad or not methods:
        raise UserError(f"--aug/DEMO_AUG must be empty, all, or a comma list of {','.join(AUG_METHODS)}; got {text!r}")
    return list(dict.fromkeys(methods))


def aug_train_command(method: str, loss: str, seed: int, out: Path, scale: Scale, data_path: str | None,
                      folder: Path, labels: Path) -> list[str]:
    """The ViT recipe (:func:`train_command`) with the method's flags appended (the trainer's last flag wins)."""
    if method == "smmix":
        extra = ["--smmix", "--mixup", "0.8"]
    else:
        extra = ["--mixtoken", "--data-set", "FOLDER", "--data-path", str(folder), "--classes", "",
                 "--token-label-data", str(labels)]
    return [*train_command("vit", loss, seed, out, scale, data_path), *extra]


def token_label_command(teacher: Path, folder: Path, labels: Path) -> list[str]:
    """``data/make_token_labels.py``: the teacher's top-k logits at every patch token of every training image."""
    return [sys.executable, str(ROOT / "data/make_token_labels.py"), "--checkpoint", str(teacher), "--data-path",
            str(folder / "train"), "--out", str(labels), "--topk", str(TOKEN_LABEL_TOPK), "--batch-size", "256",
            "--num-workers", "1", "--device", "cpu"]


def lt_train_command(loss: str, seed: int, out: Path, scale: Scale, data_path: str | None) -> list[str]:
    """The ResNet recipe on the ``--imb-ratio LT_RATIO`` split (same seed → same subset for every loss)."""
    return [*train_command("resnet", loss, seed, out, scale, data_path), "--imb-ratio", str(LT_RATIO)]


# A finished run is reused only if neither its command nor these trainer files changed since it was made.
TRAINER_FILES = {"resnet": ("Conv/common_resnet/train.py", "Conv/common_resnet/presets.py"),
                 "vit": ("Deit/train_with_MaxSup.sh", "Deit/main.py", "Deit/engine.py", "Deit/datasets.py")}
TRAINER_FILES["vit_aug"] = (*TRAINER_FILES["vit"], "Deit/smmix.py", "Deit/token_labeling.py", "maxsup/models/vit.py")


def run_identity(backbone: str, cmd: list[str]) -> dict[str, Any]:
    """What makes a training run: its command and the SHA-1 of the trainer files that hold the recipe."""
    files = {f: hashlib.sha1((ROOT / f).read_bytes()).hexdigest() for f in TRAINER_FILES[backbone]}
    return {"cmd": cmd[1:], "trainer_sha1": files}


def run_is_complete(out: Path, identity: dict[str, Any], epochs: int) -> bool:
    """A run is reused when it was made by the same command and trainer files and its log holds every epoch."""
    try:
        same = json.loads((out / "demo_cmd.json").read_text()) == identity
        lines = (out / "log.txt").read_text().strip().splitlines()
    except (OSError, ValueError):
        return False
    return same and len(lines) >= epochs and (out / "checkpoint.pth").is_file()


def analysis_jobs(ckpts: dict[str, Path], out: Path, scale: Scale, data_args: list[str], figures: bool
                  ) -> tuple[list[list[str]], list[list[list[str]]]]:
    """The analysis of one seed over every backbone and method (checkpoint names like ``ResNet-MaxSup``), as
    (the extraction command, independent command chains to run after it); all scripts share one feature cache."""
    py = sys.executable
    common = [*data_args, "--out", str(out), "--cache-dir", str(out / "features"), "--seed", "0", "--no-progress"]
    ck = [a for name, p in ckpts.items() for a in ("--checkpoint", f"{name}={p}")]
    cap = ["--max-per-class", str(scale.probe_per_class)]

    def script(name: str, *args: str) -> list[str]:
        return [py, "-m", f"analysis.{name}", *ck, *common, *args]  # cwd and PYTHONPATH: the repository root

    extract = script("extract", "--classes", SOURCE, "--split", "test")  # test logits, cached for the others
    chains = [
        [script("calibration", "--classes", SOURCE, "--split", "test"),
         script("feature_metrics", "--classes", SOURCE, *cap),  # Table 2: train (capped) and test
         script("decomposition", "--classes", SOURCE, "--split", "train", *cap)],  # final-model train error
        # Table 3: linear probe on the held-out classes
        [script("linear_transfer", "--classes", HELD_OUT, *cap, *scale.probe_extra)],
        # Table 8 analogue: error, NLL and ECE under corruptions
        [script("robustness", "--classes", SOURCE, "--corruptions", ",".join(DEMO_CORRUPTIONS), "--severities",
                ",".join(map(str, DEMO_SEVERITIES)), "--max-per-class", str(scale.robustness_per_class))],
    ]
    if figures:
        chains.append([script("logits", "--classes", SOURCE),
                       script("projection", "--classes", SOURCE, "--proj-classes", "0,1,2"),
                       script("gradcam", "--classes", SOURCE, "--num-images", str(len(SOURCE_CLASSES)))])
    return extract, chains


def aug_analysis_jobs(ckpts: dict[str, Path], out: Path, scale: Scale, data_args: list[str]) -> list[list[str]]:
    """The SMMix / Token Labeling runs' analysis (one chain): test logits, accuracy/ECE, d̄_within."""
    py = sys.executable
    common = [*data_args, "--out", str(out), "--cache-dir", str(out / "features"), "--seed", "0", "--no-progress"]
    ck = [a for name, p in ckpts.items() for a in ("--checkpoint", f"{name}={p}")]
    return [[py, "-m", f"analysis.{name}", *ck, *common, *args] for name, args in (
        ("extract", ["--classes", SOURCE, "--split", "test"]),
        ("calibration", ["--classes", SOURCE, "--split", "test"]),
        ("feature_metrics", ["--classes", SOURCE, "--max-per-class", str(scale.probe_per_class)]))]
