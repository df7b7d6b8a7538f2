"""recipes.toml vs the READMEs: every command of a ```bash recipe=<id>``` block, run with --print-config, must
resolve to the paper's recipe; and --print-config itself (world size, global batch, lr, seeds) in the three trainers.

The trainers run in this process (their --print-config reads no data and builds nothing); the Deit launcher script
runs as a subprocess, because what it adds is shell.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flat_import import load_file, load_flat

from maxsup.cli import run_cli
from maxsup.errors import UserError
from maxsup.recipes import load_recipes, lookup, mismatches

ROOT = Path(__file__).resolve().parents[1]
#: every README up to two folders deep (recipes for new tables, e.g. T7/T8, may live in any of them)
READMES = tuple(str(p.relative_to(ROOT)) for pattern in ("README.md", "*/README.md", "*/*/README.md")
                for p in sorted(ROOT.glob(pattern)) if not p.relative_to(ROOT).parts[0].startswith("."))
FENCE = re.compile(r"^```(\S*)([^\n]*)\n(.*?)^```", re.M | re.S)


DEIT = load_flat(ROOT / "Deit", "main", ("engine", "datasets", "samplers"))
COMMON = load_flat(ROOT / "Conv/common_resnet", "train", ("presets", "utils", "sampler"))
FFCV = load_file(ROOT / "Conv/ffcv/main.py", "ffcv_trainer_main")
ENTRY: dict[str, Callable] = {"Deit/main.py": DEIT.cli, "Conv/common_resnet/train.py": COMMON.cli,
                              "Conv/ffcv/main.py": FFCV.main}
TRAINER_OF = {"Deit/main.py": "deit", "Deit/train_with_MaxSup.sh": "deit", "Conv/common_resnet/train.py":
              "common_resnet", "Conv/ffcv/main.py": "ffcv"}
RECIPES = load_recipes()


# --------------------------------------------------------------------------------------------------------------------
# README parsing: shell variables, line continuations, env prefixes, torchrun / python / bash launchers
# --------------------------------------------------------------------------------------------------------------------
def _expand(line: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), line)


def documented_commands() -> list[tuple[str, str, str, dict[str, str], str, list[str], int]]:
    """(recipe id, readme, raw line, env, script relative to the root, arguments, nproc) per documented command."""
    out = []
    for readme in READMES:
        variables: dict[str, str] = {}
        for _lang, info, body in FENCE.findall((ROOT / readme).read_text()):
            recipe = dict(kv.split("=", 1) for kv in info.split() if "=" in kv).get("recipe")
            for raw in body.replace("\\\n", " ").splitlines():
                if recipe is None and not re.match(r"[A-Z_][A-Z0-9_]*=", raw):
                    continue  # outside recipe blocks only shell variables (RECIPE=..., DATA=...) matter
                tokens = shlex.split(_expand(raw, variables), comments=True)
                if len(tokens) == 1 and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
                    name, _, value = tokens[0].partition("=")
                    variables[name] = value
                    continue
                if not tokens or recipe is None:
                    continue
                env = {}
                while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
                    name, _, value = tokens.pop(0).partition("=")
                    env[name] = value
                launcher, rest, nproc = tokens[0], tokens[1:], 1
                if launcher == "torchrun":
                    while rest[0].startswith("--"):
                        opt = rest.pop(0)
                        if opt.startswith("--nproc_per_node"):
                            nproc = int(opt.partition("=")[2] or rest.pop(0))
                else:
                    assert launcher in ("python", "python3", "bash"), f"{readme}: unknown launcher in {raw!r}"
                script = rest.pop(0)
                if not (ROOT / script).exists():  # "commands below run from this folder"
                    script = str((ROOT / readme).parent.relative_to(ROOT) / script)
                assert (ROOT / script).exists(), f"{readme}: {raw!r} names a script that does not exist"
                out.append((recipe, readme, raw.strip(), env, script, rest, nproc))
    return out


COMMANDS = documented_commands()


def print_config(script: str, args: list[str], nproc: int, env: dict[str, str], capsys, monkeypatch) -> dict:
    """Run one documented command with --print-config, as its launcher would (WORLD_SIZE = nproc_per_node)."""
    for name in ("RANK", "SEEDS", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    if script.endswith(".sh"):
        full_env = {**os.environ, **env, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
        full_env.pop("SEEDS", None)
        proc = subprocess.run(["bash", str(ROOT / script), *args, "--print-config"], env=full_env,
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("\n") == 1, proc.stdout  # exactly one JSON object
        return json.loads(proc.stdout)
    monkeypatch.setenv("WORLD_SIZE", str(nproc))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    ENTRY[script]([*args, "--print-config"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    return json.loads(out)


# --------------------------------------------------------------------------------------------------------------------
# the table and the docs
# --------------------------------------------------------------------------------------------------------------------
def test_every_recipe_is_documented_and_every_value_is_sourced():
    documented = {c[0] for c in COMMANDS}
    table = set(RECIPES["recipes"])
    assert table <= documented, f"recipes without a README block: {table - documented}"
    assert documented <= table, f"README blocks naming unknown recipes: {documented - table}"
    for rid, recipe in RECIPES["recipes"].items():
        assert recipe["readme"] in READMES and any(c[0] == rid and c[1] == recipe["readme"] for c in COMMANDS), rid
        # the paper's headline numbers behind these recipes are stated values, not ours
        assert any("paper" in v for v in recipe["values"].values()), rid
    assert list(RECIPES["paper_results"]) == [f"T{i}" for i in range(1, 17)]  # every paper table, in order
    for table, res in RECIPES["paper_results"].items():
        assert res["cite"].startswith(f"arXiv 2502.15798, Table {table[1:]}"), table
        assert res["source"] in ("runs", "feature_metrics", "linear_transfer", "robustness", "mmseg"), table
        recipe_ids = set(res.get("recipes", [])) | {r for row in res["rows"] for r in row.get("recipes", [])}
        assert recipe_ids <= set(RECIPES["recipes"]), table
        assert all(len(row["paper"]) == len(res["columns"]) for row in res["rows"]), table
        assert all(len(row.get("metrics", res["columns"])) == len(res["columns"]) for row in res["rows"]), table
        assert res["commands"], table
    # spot checks against the paper's recipes, so a wrong table cannot agree with itself
    assert RECIPES["recipes"]["ffcv_t4_imagenet"]["values"]["effective_lr"]["value"] == 0.85
    assert RECIPES["recipes"]["c100_t4"]["values"]["lr_gamma"]["value"] == 0.2
    assert RECIPES["recipes"]["t10_imagenet"]["values"]["total_batch_size"]["value"] == 512
    t4 = RECIPES["paper_results"]["T4"]
    assert next(r for r in t4["rows"] if r["name"] == "MaxSup")["paper"][1] == "77.69±0.07"
    assert RECIPES["paper_results"]["T14"]["rows"][1]["paper"][4] == "0.4690"  # LS R² Train, as printed
    assert RECIPES["paper_results"]["T16"]["rows"][0]["paper"] == ["231", "232", "231"]


def test_readme_blocks_cover_each_table_column():
    """Every model a recipe names has at least one documented command (the T4 ImageNet configs, the C100 models)."""
    for rid, recipe in RECIPES["recipes"].items():
        if "ffcv" == recipe["trainer"] or rid == "c100_t4":
            key = next(k for k in recipe["choices"] if k.endswith("arch") or k == "model")
            seen = set()
            for c in COMMANDS:
                if c[0] == rid:
                    flag = "--model" if "--model" in c[5] else "--config-file"
                    seen.add(c[5][c[5].index(flag) + 1])
            assert len(seen) == len(recipe["choices"][key]), (rid, seen)


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c[0]}:{c[2][:60]}" for c in COMMANDS])
def test_documented_command_is_the_recipe(cmd, capsys, monkeypatch):
    recipe_id, readme, raw, env, script, args, nproc = cmd
    recipe = RECIPES["recipes"][recipe_id]
    assert TRAINER_OF[script] == recipe["trainer"], f"{readme}: {raw!r} runs {script}, recipe {recipe_id} is " \
                                                    f"{recipe['trainer']}"
    config = print_config(script, args, nproc, env, capsys, monkeypatch)
    assert config["world_size"] == (int(env.get("NPROC", 4)) if script.endswith(".sh") else nproc)
    problems = mismatches(recipe, config)
    assert not problems, f"{readme}: {raw!r} is not recipe {recipe_id}:\n" + "\n".join(problems)


def test_drift_is_reported_with_the_paper_citation(capsys, monkeypatch):
    recipe_id, _, _, env, script, args, nproc = next(c for c in COMMANDS if c[0] == "c100_t4")
    config = print_config(script, [*args, "--epochs", "100", "-b", "64"], nproc, env, capsys, monkeypatch)
    problems = mismatches(RECIPES["recipes"][recipe_id], config)
    assert any(p.startswith("epochs = 100") and "T4 setup (CIFAR-100)" in p for p in problems), problems
    assert any(p.startswith("total_batch_size = 64") for p in problems), problems
    # the same global batch through accumulation is the recipe again
    config = print_config(script, [*args, "-b", "64", "--accum-steps", "2"], nproc, env, capsys, monkeypatch)
    assert not mismatches(RECIPES["recipes"][recipe_id], config)


# --------------------------------------------------------------------------------------------------------------------
# --print-config: world size, global batch, lr, seeds, rank 0 only, no data
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world,accum,batch", [(1, 1, 1024), (2, 2, 256), (8, 1, 128), (3, 4, 7)])
def test_deit_print_config_global_batch_and_scaled_lr(world, accum, batch, capsys, monkeypatch):
    args = ["--data-path", "/does/not/exist", "--batch-size", str(batch), "--accum-steps", str(accum),
            "--lr", "5e-4"]
    cfg = print_config("Deit/main.py", args, world, {}, capsys, monkeypatch)
    assert cfg["world_size"] == world and cfg["total_batch_size"] == batch * world * accum
    assert cfg["effective_lr"] == pytest.approx(5e-4 * batch * world * accum / 512)
    assert cfg["seeds"] == [0] and cfg["data_path"] == "/does/not/exist"
    cfg = print_config("Deit/main.py", [*args, "--unscale-lr"], world, {}, capsys, monkeypatch)
    assert cfg["effective_lr"] == 5e-4


def test_ffcv_print_config_nested_with_accumulation(capsys, monkeypatch):
    args = ["--config-file", "Conv/ffcv/configs/rn50_paper_200ep.yaml", "--training.accum_steps=2", "--seeds", "0,3,7"]
    cfg = print_config("Conv/ffcv/main.py", args, 4, {}, capsys, monkeypatch)
    assert cfg["lr"]["lr"] == 0.85 and cfg["training"]["epochs"] == 200 and cfg["model"]["arch"] == "resnet50"
    assert cfg["per_process_batch_size"] == 256 and cfg["total_batch_size"] == 2048 and cfg["world_size"] == 4
    assert cfg["seeds"] == [0, 3, 7]
    with pytest.raises(UserError, match="not divisible by the 3 processes × training.accum_steps = 2"):
        print_config("Conv/ffcv/main.py", args, 3, {}, capsys, monkeypatch)


def test_ffcv_loss_section_reads_the_registry(capsys, monkeypatch):
    """A loss registered outside the trainer (here, in this test) is a valid loss.name; its options and their
    defaults come from its signature, typed; the FFCV config lists no loss of its own."""
    from torch import nn

    from maxsup.losses import LOSSES, register_loss

    @register_loss("test-scaled-ce")
    class ScaledCE(nn.Module):
        def __init__(self, scale: float = 0.5, squared: bool = False) -> None:
            super().__init__()
            self.scale, self.squared = scale, squared

    try:
        args = ["--loss.name=test-scaled-ce", "--loss.opts=[squared=1]"]
        cfg = print_config("Conv/ffcv/main.py", args, 1, {}, capsys, monkeypatch)
        assert cfg["loss"]["options"] == {"scale": 0.5, "squared": True} and cfg["loss"]["alpha_start"] is None
        with pytest.raises(UserError, match="loss 'test-scaled-ce' has no option 'beta'"):
            print_config("Conv/ffcv/main.py", ["--loss.name=test-scaled-ce", "--loss.opts=[beta=1]"], 1, {}, capsys,
                         monkeypatch)
    finally:
        del LOSSES["test-scaled-ce"]


def test_seeds_from_env_or_flag_and_bad_values(capsys, monkeypatch):
    cfg = print_config("Conv/common_resnet/train.py", [], 1, {"SEEDS": "3"}, capsys, monkeypatch)
    assert cfg["seeds"] == [0, 1, 2]
    cfg = print_config("Conv/common_resnet/train.py", ["--seeds", "5,1"], 1, {"SEEDS": "3"}, capsys, monkeypatch)
    assert cfg["seeds"] == [5, 1]  # the flag wins over the environment
    cfg = print_config("Deit/main.py", ["--seed", "4"], 1, {}, capsys, monkeypatch)
    assert cfg["seeds"] == [4]
    for argv, env, msg in ((["--seeds", "1,x"], {}, "comma list"), (["--seeds", "2,2"], {}, "distinct"),
                           ([], {"SEEDS": "0"}, "positive integer")):
        with pytest.raises(UserError, match=msg):
            print_config("Deit/main.py", argv, 1, env, capsys, monkeypatch)


def test_print_config_only_on_rank_zero(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    capsys.readouterr()
    cfg = COMMON.cli(["--print-config"])
    assert capsys.readouterr().out == "" and cfg["world_size"] == 2


def test_print_config_bad_flag_is_one_error_line(capsys, monkeypatch):
    monkeypatch.delenv("SEEDS", raising=False)
    with pytest.raises(SystemExit) as exc:
        run_cli(COMMON.cli, ["--print-config", "--accum-steps", "0"])
    out = capsys.readouterr()
    assert exc.value.code != 0 and out.out == ""
    assert out.err.strip() == "error: --accum-steps must be >= 1, got 0"


def test_lookup_nested_and_flat():
    assert lookup({"train": {"epochs": 3}}, "train.epochs") == 3
    assert lookup({"epochs": 3}, "epochs") == 3
    assert mismatches({"values": {"a.b": {"value": 1, "paper": "T0"}}}, {"a": {}}) == ["a.b: missing (recipe: 1)"]
    # only_if_set: FFCV's loss.alpha_* are null for a loss without an α schedule, which still follows the recipe
    alpha = {"values": {"loss.options.alpha_start": {"value": 0.1, "ours": "x", "only_if_set": True}}}
    assert mismatches(alpha, {"loss": {"options": {}}}) == []
    assert mismatches(alpha, {"loss": {"options": {"alpha_start": 0.2}}}) == [
        "loss.options.alpha_start = 0.2, recipe 0.1 (ours: x)"]


def test_ffcv_recipe_fingerprint_ignores_seed_folder_and_loss_but_not_the_alpha_denominator(capsys, monkeypatch):
    """analysis.collect groups runs by recipe: a seed sweep (one logging.folder per seed) and another loss with its
    options stay one recipe; Table 15's α denominator is another."""
    from maxsup.training import recipe_fingerprint

    base = ["--config-file", "Conv/ffcv/configs/rn50_paper_200ep.yaml"]
    runs = [base, [*base, "--training.seed=3", "--logging.folder=runs/x/seed3"],
            [*base, "--loss.name=lp", "--loss.opts=[beta=1e-3]"], [*base, "--loss.name=ce"],
            [*base, "--loss.alpha_denominator=E"]]
    not_recipe = FFCV.NOT_RECIPE  # the trainer's own keys
    prints = [recipe_fingerprint(print_config("Conv/ffcv/main.py", r, 8, {}, capsys, monkeypatch), not_recipe)
              for r in runs]
    assert prints[0] == prints[1] == prints[2] == prints[3] != prints[4]
