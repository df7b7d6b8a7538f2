"""The loss registry through the trainers: a loss defined only in this file, registered with
``maxsup.losses.register_loss``, is usable by name in Deit's and common_resnet's ``--loss``/``--loss-opt`` and
``--print-config``; loss options are spelled one way (``--loss-opt KEY=VALUE``) and resolved with the class defaults;
resume compares the resolved options.

The trainers run in this process (``--print-config`` reads no data and builds nothing), so the test's registration is
seen by their parsers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from flat_import import load_flat
from torch import Tensor

from maxsup.cli import run_cli
from maxsup.errors import UserError
from maxsup.losses import LOSSES, Loss, loss_defaults, register_loss
from maxsup.training import check_resume

ROOT = Path(__file__).resolve().parents[1]
DEIT = load_flat(ROOT / "Deit", "main", ("engine", "datasets", "samplers"))
COMMON = load_flat(ROOT / "Conv/common_resnet", "train", ("presets", "utils", "sampler"))
TRAINERS = {"deit": DEIT, "common_resnet": COMMON}


class PolyTemperedLoss(Loss):
    """A loss that exists only in this test: CE on z / temperature, plus weight·(z_max − mean z) when ``penalise``."""

    def __init__(self, num_classes: int, temperature: float = 2.0, weight: float = 0.5, penalise: bool = False,
                 label: str = "poly", warmup: int = 3) -> None:
        super().__init__()
        self.num_classes, self.temperature, self.weight, self.penalise = num_classes, temperature, weight, penalise
        self.label, self.warmup = label, warmup

    def forward(self, outputs: Tensor, target: Tensor) -> Tensor:
        z, target = self._inputs(outputs, target)
        loss = F.cross_entropy(z / self.temperature, target)
        if self.penalise:
            loss = loss + self.weight * (z.max(-1).values - z.mean(-1)).mean()
        return loss


@pytest.fixture
def test_loss():
    """Register the test's loss for one test, and remove it again (the table is process-wide)."""
    register_loss("poly-tempered")(PolyTemperedLoss)
    try:
        yield "poly-tempered"
    finally:
        LOSSES.pop("poly-tempered", None)


def _print_config(trainer: str, argv: list[str], capsys, monkeypatch) -> dict:
    for name in ("RANK", "SEEDS", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    capsys.readouterr()
    TRAINERS[trainer].cli([*argv, "--print-config"])
    return json.loads(capsys.readouterr().out)


def _error_line(trainer: str, argv: list[str], capsys, monkeypatch) -> str:
    monkeypatch.delenv("SEEDS", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(TRAINERS[trainer].cli, [*argv, "--print-config"])
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert exc.value.code != 0 and out.out == "" and len(lines) == 1 and lines[0].startswith("error: "), out.err
    return lines[0]


@pytest.mark.parametrize("trainer", TRAINERS)
def test_a_loss_defined_in_a_test_is_usable_by_name(trainer, test_loss, capsys, monkeypatch):
    help_text = TRAINERS[trainer].get_args_parser().format_help()
    assert test_loss in help_text and "temperature=2.0" in help_text  # --help reads the registry
    cfg = _print_config(trainer, ["--loss", test_loss], capsys, monkeypatch)
    assert cfg["loss"] == test_loss
    assert cfg["loss_options"] == {"temperature": 2.0, "weight": 0.5, "penalise": False, "label": "poly", "warmup": 3}
    # the α keys keep their meaning (the α schedule, here its defaults) for a loss without one
    assert (cfg["alpha_start"], cfg["alpha_end"], cfg["alpha_denominator"]) == (0.1, 0.2, "E-1")
    cfg = _print_config(trainer, ["--loss", test_loss, "--loss-opt", "penalise=true", "--loss-opt", "temperature=4",
                                  "--loss-opt", "warmup=7", "--loss-opt", "label=x=y"], capsys, monkeypatch)
    assert cfg["loss_options"] == {"temperature": 4.0, "weight": 0.5, "penalise": True, "label": "x=y", "warmup": 7}
    msg = _error_line(trainer, ["--loss", test_loss, "--loss-opt", "gamma=2"], capsys, monkeypatch)
    assert "has no option 'gamma'" in msg and "temperature (default 2.0)" in msg and "warmup (default 3)" in msg


def test_the_test_loss_trains_through_common_resnets_criterion(test_loss):
    args = COMMON.get_args_parser().parse_args(["--loss", test_loss, "--loss-opt", "penalise=1", "--loss-opt",
                                                "weight=2"])
    crit = COMMON._criterion(args, 5)
    assert isinstance(crit, PolyTemperedLoss) and (crit.num_classes, crit.weight, crit.penalise) == (5, 2.0, True)
    z, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    expected = F.cross_entropy(z / 2.0, y) + 2.0 * (z.max(-1).values - z.mean(-1)).mean()
    assert torch.allclose(crit(z, y), expected)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_print_config_records_the_resolved_options_and_the_alpha_keys(trainer, capsys, monkeypatch):
    cfg = _print_config(trainer, ["--loss", "maxsup"], capsys, monkeypatch)
    assert cfg["loss_options"] == loss_defaults("maxsup") == {"alpha_start": 0.1, "alpha_end": 0.2,
                                                              "alpha_denominator": "E-1"}
    assert (cfg["alpha_start"], cfg["alpha_end"], cfg["alpha_denominator"]) == (0.1, 0.2, "E-1")
    # the α flags and --loss-opt set the same options
    flags = _print_config(trainer, ["--loss", "ls", "--alpha-end", "0.1", "--alpha-denominator", "E"], capsys,
                          monkeypatch)
    opts = _print_config(trainer, ["--loss", "ls", "--loss-opt", "alpha_end=0.1", "--loss-opt", "alpha_denominator=E"],
                         capsys, monkeypatch)
    assert flags["loss_options"] == opts["loss_options"] == {"alpha_start": 0.1, "alpha_end": 0.1,
                                                             "alpha_denominator": "E"}
    assert flags["alpha_end"] == opts["alpha_end"] == 0.1 and opts["alpha_denominator"] == "E"
    cfg = _print_config(trainer, ["--loss", "zipf", "--loss-opt", "dense=true"], capsys, monkeypatch)
    assert cfg["loss_options"] == {"lam": 0.1, "power": 1.0, "dense": True}


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("argv, message", [
    (["--loss", "focal", "--loss-opt", "tau=0.1"], "loss 'focal' has no option 'tau'; loss 'focal' takes gamma"),
    (["--loss", "zipf", "--loss-opt", "dense=maybe"], "expected a bool value"),
    (["--loss", "lp", "--loss-opt", "beta"], "is not KEY=VALUE"),
    (["--loss", "ce", "--alpha-start", "0.2"], "loss 'ce' has no option 'alpha_start'"),
    (["--loss", "ls", "--alpha-end", "0.3", "--loss-opt", "alpha_end=0.1"], "'alpha_end' is set twice"),
])
def test_bad_loss_options_are_one_error_line(trainer, argv, message, capsys, monkeypatch):
    assert message in _error_line(trainer, argv, capsys, monkeypatch)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_resume_compares_the_resolved_loss_options(trainer):
    module = TRAINERS[trainer]
    resolve = module.resolve_loss if trainer == "deit" else module._resolve_loss
    flag = module.resume_flag if trainer == "deit" else module._resume_flag

    def resolved(argv: list[str]) -> argparse.Namespace:
        args = module.get_args_parser().parse_args(argv)
        resolve(args)
        return args

    saved = vars(resolved(["--loss", "zipf"]))
    ckpt = {"trainer": module.TRAINER, "model": {}, "optimizer": {}, "epoch": 0}
    keys = ["loss", "loss_options"]
    # the defaults spelled out are the same run
    check_resume(ckpt, "ckpt.pth", module.TRAINER, saved, vars(resolved(["--loss", "zipf", "--loss-opt", "lam=0.1"])),
                 keys, flag=flag, required=())
    with pytest.raises(UserError, match=r'--loss-opt \{"dense": false, .*\} → \{"dense": true, '):
        check_resume(ckpt, "ckpt.pth", module.TRAINER, saved,
                     vars(resolved(["--loss", "zipf", "--loss-opt", "dense=true"])), keys, flag=flag, required=())
