"""The READMEs' commands form chains that connect, and no two runs share a folder (issue 20, items 4 and 5).

Every path a documented command reads must be written by a documented command or be one of the user's downloads in
``USER_DOWNLOADS``; different training commands must write different run folders. The rules, kept simple on purpose:

1. **Commands** are the lines of the ```bash blocks of ``READMES``, lines ending in ``\\`` joined, ``#`` comments
   dropped (``shlex``). ``NAME=value`` alone on a line sets a variable for the rest of that README; ``$NAME`` and
   ``${NAME}`` expand (unknown ones stay as written); ``for V in a b c; do`` ... ``done``, each on its own line and
   nestable, repeats its body once per value; ``A && B`` is two commands; leading ``NAME=value`` words are the
   command's environment.
2. **Where a command runs**: the repository root, except ``Conv/common_resnet/README.md``, whose commands run in
   ``Conv/common_resnet/`` (that README says so: the torchvision-references idiom). ``cd DIR`` changes it until the
   end of the block; ``cd`` into a folder that is not the repository's (``cd mmsegmentation``) ends our part of it.
3. **Our programs only**: ``python``/``python3``/``torchrun``/``bash`` running a file of the repository, ``python -m``
   a module of ``maxsup``/``analysis``, or a repository script run by path. Other commands (``make``, ``pip``,
   ``apt-get``) are skipped. A script that does not exist where the command runs is an error.
4. **Reads**: the values of ``READ_FLAGS`` (``--checkpoint NAME=PATH`` reads PATH), the positional inputs in
   ``POSITIONAL``, ``DATA_PATH`` of ``Deit/train_with_MaxSup.sh`` and ``IMAGENET_DIR`` of ``write_imagenet.sh``. A value
   is a path when it contains ``/`` or ends in a file suffix (``deit_small_maxsup`` and ``dm_nfnet_f6`` are names).
   ``--config``/``--config-file`` must name a file of the repository.
5. **Writes**: the values of ``WRITE_FLAGS``, ``--data-path`` next to ``--download``, the positional outputs in
   ``POSITIONAL``, and the scripts' defaults (``OUTPUT_DIR`` of ``train_with_MaxSup.sh`` as its header sets it,
   ``WRITE_DIR`` of ``write_imagenet.sh``, ``~/.cache/maxsup`` of ``maxsup.hub download``, ``.`` for
   ``common_resnet/train.py`` without ``--output-dir``; Deit's ``--output_dir ''`` writes nothing).
   ``Conv/ffcv/main.py`` commands are resolved by the trainer's own ``--print-config``, so what a config file sets
   (output folder, ``.beton`` paths) counts as well.
6. **A read is satisfied** when a written path equals it, lies above it (a file in a run folder) or below it (a
   folder of runs, as ``analysis.collect runs/`` reads), or when it lies under ``USER_DOWNLOADS``. Inside one block
   the writer must come first (a block is a script); across blocks and READMEs any documented writer counts (the
   READMEs are reference pages, e.g. Conv/ffcv documents evaluating a checkpoint before the section that trains it).
7. **Distinct folders**: two training commands (a trainer run without ``--eval``, ``--test-only``, ``eval_only`` or
   ``--print-config``) that differ in any word, the launcher's included, must write different run folders.
8. **Flags exist**: the arguments of every command of a program with a ``get_args_parser()`` parse with it (the
   launcher ``Deit/train_with_MaxSup.sh`` passes its arguments to ``Deit/main.py``'s); a command with a literal
   ``...`` is an excerpt and is left out. ``Conv/ffcv/main.py``'s keys are checked by its ``--print-config`` (rule 5),
   which refuses an unknown one.

Paths are compared as written after normalisation (``~`` and absolute paths kept, relative ones made relative to the
repository root); nothing is read from or written to the disk.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from maxsup.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
READMES = ("README.md", "data/README.md", "Deit/README.md", "Conv/ffcv/README.md", "Conv/common_resnet/README.md",
           "analysis/README.md")
#: where the commands of a README run, when not at the repository root
RUNS_IN = {"Conv/common_resnet/README.md": "Conv/common_resnet"}
#: what the user downloads (absolute, or relative to the repository root); everything else a command reads must be
#: written by a documented command
USER_DOWNLOADS = (
    "/data/imagenet",                       # ImageNet-1k: train/ and val/ ImageFolders (or the authors' zip cache)
    "/data/imagenetv2-matched-frequency", "/data/imagenet-a", "/data/imagenet-c",  # ImageNet test sets under shift
    "datasets/CIFAR-10-C",                  # Hendrycks & Dietterich's published .npy files (T8)
    "datasets/cub200", "datasets/cars", "datasets/flowers102", "datasets/food101", "datasets/pets",  # T6 / T12
)
READ_FLAGS = frozenset({"--resume", "--finetune", "--checkpoint", "--data-path", "--precomputed", "--token-label-data",
                        "--src", "--data-dir", "--zip", "--map", "--zip-map", "--root"})
WRITE_FLAGS = frozenset({"--output-dir", "--output_dir", "--out", "--write-path", "--dest", "--job_dir",
                         "--train.output_dir", "--logging.folder"})
RUN_DIR_FLAGS = frozenset({"--output-dir", "--output_dir", "--job_dir", "--train.output_dir", "--logging.folder"})
CONFIG_FLAGS = frozenset({"--config", "--config-file"})
#: program (and subcommand) -> (indices of the positional arguments it reads, indices it writes)
POSITIONAL = {"maxsup.hub convert": ((0,), (1,)), "maxsup.hub export-mmseg": ((0,), (1,)),
              "maxsup.hub evaluate": ((0,), ()), "data/imagenet_downsampled.py info": ((0,), ()),
              "analysis.collect": ((0, 1, 2, 3, 4, 5, 6, 7), ())}
TRAINERS = frozenset({"Deit/main.py", "Deit/train_with_MaxSup.sh", "Conv/common_resnet/train.py", "Conv/ffcv/main.py"})
FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".ffcv", ".beton", ".json", ".npy", ".zip", ".txt", ".tar", ".py")
FENCE = re.compile(r"^```(\S*)([^\n]*)\n(.*?)^```", re.M | re.S)
ASSIGN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.S)
FOR = re.compile(r"for (\w+) in (.*); do")


@dataclass
class Command:
    """One documented command after expansion: where it is, where it runs, what it reads and writes."""

    readme: str
    block: int
    text: str
    program: str
    args: list[str]
    env: dict[str, str]
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    run_dirs: list[str] = field(default_factory=list)  # the run folders among ``writes``
    training: bool = False


def _expand(text: str, variables: dict[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` replaced by the block's variables; unknown names stay as written."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def _norm(path: str, cwd: str) -> str:
    """``path`` as written, relative to the repository root when it is relative to ``cwd``."""
    if path.startswith(("/", "~")):
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(cwd, path))


def _is_path(value: str) -> bool:
    """Whether a flag's value names a file or folder (rule 4), not a model name or a switch."""
    return bool(value) and value not in ("auto", "true", "false") and ("/" in value or value.endswith(FILE_SUFFIXES))


def _options(args: list[str]) -> list[tuple[str, str | None]]:
    """(flag, value) pairs: ``--flag=value``, or ``--flag value`` when the next word is not an option."""
    out = []
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        flag, eq, value = arg.partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else None
        out.append((flag, value))
    return out


def _lines(body: str) -> list:
    """The block's lines as a tree: str for a line, (variable, values, children) for a for loop."""
    root: list = []
    stack = [root]
    for raw in body.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if m := FOR.fullmatch(line):
            node: tuple = (m.group(1), m.group(2), [])
            stack[-1].append(node)
            stack.append(node[2])
        elif line == "done":
            assert len(stack) > 1, f"'done' without 'for' in {body!r}"
            stack.pop()
        elif line and not line.startswith("#"):
            stack[-1].append(line)
    assert len(stack) == 1, f"'for' without 'done' in {body!r}"
    return root


def _program(tokens: list[str], cwd: str) -> tuple[str, list[str]] | None:
    """(program, its arguments) for a command of ours; None for others. Programs are a repository path relative to
    the root, or a module name (``maxsup.hub convert``, ``analysis.robustness``)."""
    launcher, rest = tokens[0], tokens[1:]
    if launcher in ("python", "python3") and rest[:1] == ["-m"]:
        module, rest = rest[1], rest[2:]
        if module.split(".")[0] not in ("maxsup", "analysis"):
            return None
        if module == "maxsup.hub" and rest:
            module, rest = f"{module} {rest[0]}", rest[1:]
        return module, rest
    if launcher == "torchrun":  # its own options come before the script: --nproc_per_node=8 or --nproc_per_node 8
        while rest and rest[0].startswith("-"):
            takes_value = "=" not in rest[0] and len(rest) > 1 and not rest[1].endswith((".py", ".sh"))
            rest = rest[1 + takes_value:]
    elif launcher in ("python", "python3", "bash"):
        pass
    elif launcher.endswith((".sh", ".py")):
        rest = [launcher, *rest]
    else:
        return None
    script = _norm(rest[0], cwd)
    where = cwd or "."
    assert (ROOT / script).is_file(), f"{' '.join(tokens)!r} (run in {where}/) names {script}, which does not exist"
    rest = rest[1:]
    if script == "data/imagenet_downsampled.py" and rest:
        return f"{script} {rest[0]}", rest[1:]
    return script, rest


def _launcher_output_dir(env: dict[str, str]) -> str:
    """The run folder Deit/train_with_MaxSup.sh writes without --output_dir: the OUTPUT_DIR defaults it sets (read
    from the script, so a changed default is followed), or OUTPUT_DIR from the command's environment."""
    defaults = re.findall(r'OUTPUT_DIR="\$\{OUTPUT_DIR:-([^}]*)\}"', (ROOT / "Deit/train_with_MaxSup.sh").read_text())
    assert len(defaults) == 2, defaults  # the ImageNet recipe's, then the Fashion-MNIST default's
    return env.get("OUTPUT_DIR", defaults[0] if env.get("DATA_PATH") else defaults[1])


def _section(cfg: dict, *names: str) -> dict:
    """The first of ``names`` that is a section of an FFCV --print-config (``training`` in the YAML config of
    ffcv-imagenet's naming, ``train`` in the TOML one)."""
    return next((cfg[n] for n in names if isinstance(cfg.get(n), dict)), {})


def _classify(cmd: Command, cwd: str, ffcv_config: Callable[[list[str], int], dict], nproc: int) -> None:
    """Fill ``cmd.reads``, ``cmd.writes`` and ``cmd.training`` (rules 4, 5 and 7 of the module docstring)."""
    args, opts = cmd.args, _options(cmd.args)
    flags = {f for f, _ in opts}
    reads, writes, run_dirs = cmd.reads, cmd.writes, cmd.run_dirs
    for flag, value in opts:
        if value is None:
            continue
        if flag in CONFIG_FLAGS:
            assert (ROOT / _norm(value, cwd)).is_file(), f"{cmd.text!r}: {flag} {value} is not a file of the repository"
        elif flag in WRITE_FLAGS and value:
            writes.append(_norm(value, cwd))
            run_dirs += [writes[-1]] if flag in RUN_DIR_FLAGS else []
        elif flag in READ_FLAGS:
            if flag == "--checkpoint" and "=" in value and "/" not in value.partition("=")[0]:
                value = value.partition("=")[2]
            if _is_path(value):
                (writes if flag == "--data-path" and "--download" in flags else reads).append(_norm(value, cwd))
    positional = list(args[:next((i for i, a in enumerate(args) if a.startswith("-")), len(args))])
    read_at, write_at = POSITIONAL.get(cmd.program, ((), ()))
    reads += [_norm(positional[i], cwd) for i in read_at if i < len(positional) and _is_path(positional[i])]
    writes += [_norm(positional[i], cwd) for i in write_at if i < len(positional)]
    if cmd.program == "maxsup.hub download" and "--dest" not in flags:
        writes.append(os.path.normpath(cmd.env.get("MAXSUP_CACHE", "~/.cache/maxsup")))
    if cmd.program == "Conv/ffcv/write_imagenet.sh":
        reads.append(_norm(cmd.env["IMAGENET_DIR"], cwd))
        writes.append(_norm(cmd.env["WRITE_DIR"], cwd))
    evaluating = bool(flags & {"--eval", "--test-only", "--print-config"})
    if cmd.program == "Deit/train_with_MaxSup.sh":
        if cmd.env.get("DATA_PATH"):
            reads.append(_norm(cmd.env["DATA_PATH"], cwd))
        if "--output_dir" not in flags:
            writes.append(_norm(_launcher_output_dir(cmd.env), cwd))
            run_dirs.append(writes[-1])
    if cmd.program == "Conv/common_resnet/train.py" and not flags & {"--output-dir", "--job_dir"} and not evaluating:
        writes.append(_norm(".", cwd))
        run_dirs.append(writes[-1])
    if cmd.program == "Conv/ffcv/main.py":
        cfg = ffcv_config(args, nproc)
        train, data = _section(cfg, "training", "train"), _section(cfg, "data")
        evaluating = evaluating or bool(train.get("eval_only"))
        writes.append(_norm(train.get("output_dir") or _section(cfg, "logging")["folder"], cwd))
        run_dirs.append(writes[-1])
        keys = [train.get("resume"), train.get("finetune"), data.get("val_dataset"),
                data.get("real_labels") if isinstance(data.get("real_labels"), str) else None]
        keys += [] if evaluating else [data.get("train_dataset")]
        reads += [_norm(v, cwd) for v in keys if isinstance(v, str) and _is_path(v)]
    cmd.training = cmd.program in TRAINERS and not evaluating
    if cmd.program == "Deit/main.py" and "--output_dir" not in flags:
        cmd.training = False  # Deit's default --output_dir '' writes nothing


def documented_commands(texts: dict[str, str], ffcv_config: Callable[[list[str], int], dict]) -> list[Command]:
    """Every command of ours in the ```bash blocks of ``texts`` (README path -> its text), expanded (rules 1-3)."""
    commands: list[Command] = []
    for readme, text in texts.items():
        variables: dict[str, str] = {}
        for block, (lang, _info, body) in enumerate(FENCE.findall(text)):
            if lang != "bash":
                continue
            state = {"cwd": RUNS_IN.get(readme, ""), "ours": True}

            def run(items: list, block: int = block, readme: str = readme, variables: dict = variables,
                    state: dict = state) -> None:
                for item in items:
                    if isinstance(item, tuple):
                        name, values, body = item
                        for value in shlex.split(_expand(values, variables)):
                            variables[name] = value
                            run(body)
                        continue
                    tokens = shlex.split(_expand(item, variables), comments=True)
                    if len(tokens) == 1 and ASSIGN.fullmatch(tokens[0]):
                        name, _, value = tokens[0].partition("=")
                        variables[name] = value
                        continue
                    while tokens and state["ours"]:
                        cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                        words, tokens = tokens[:cut], tokens[cut + 1:]
                        env = {}
                        while words and ASSIGN.fullmatch(words[0]):
                            name, _, value = words.pop(0).partition("=")
                            env[name] = value
                        if not words:
                            continue
                        if words[0] == "cd":
                            state["cwd"] = _norm(words[1], state["cwd"]) if len(words) > 1 else ""
                            state["cwd"] = "" if state["cwd"] == "." else state["cwd"]
                            state["ours"] = (ROOT / state["cwd"]).is_dir() and not state["cwd"].startswith("..")
                            continue
                        found = _program(words, state["cwd"])
                        if found is None:
                            continue
                        nproc = 1
                        if words[0] == "torchrun":
                            nproc_opt = next((w for w in words if w.startswith("--nproc_per_node")), "=1")
                            nproc = int(nproc_opt.partition("=")[2] or words[words.index(nproc_opt) + 1])
                        cmd = Command(readme, block, " ".join(words), found[0], found[1], env)
                        _classify(cmd, state["cwd"], ffcv_config, nproc)
                        commands.append(cmd)

            run(_lines(body))
    return commands


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def chain_problems(commands: list[Command]) -> list[str]:
    """One line per read without a writer (rule 6) and per run folder shared by different training commands
    (rule 7)."""
    problems = []
    for i, cmd in enumerate(commands):
        for path in cmd.reads:
            if any(_within(path, os.path.normpath(d)) for d in USER_DOWNLOADS):
                continue
            writers = [w for j, other in enumerate(commands) for w in other.writes
                       if (other.readme, other.block) != (cmd.readme, cmd.block) or j <= i]
            if not any(_within(path, w) or _within(w, path) for w in writers):
                problems.append(f"{cmd.readme}: {cmd.text!r} reads {path}, which no documented command writes")
    owner: dict[str, Command] = {}
    for cmd in commands:
        if not cmd.training:
            continue
        for folder in cmd.run_dirs:
            first = owner.setdefault(folder, cmd)
            if (first.text, first.env) != (cmd.text, cmd.env):  # the launcher counts: torchrun -n 2 is another run
                problems.append(f"{folder} is the run folder of two different runs: {first.readme}: {first.text!r} "
                                f"and {cmd.readme}: {cmd.text!r}")
    return problems


#: the programs rule 8 checks, beyond those whose parser is built inside ``main`` (not reachable without running it)
UNPARSED = frozenset({"Conv/ffcv/main.py", "Conv/ffcv/write_imagenet.sh", "data/make_token_labels.py"})


def _parser(program: str) -> tuple[argparse.ArgumentParser, list[str]] | None:
    """The parser of ``program`` and the words that go before its arguments (a subcommand); None if it has no
    ``get_args_parser()``."""
    from flat_import import load_flat, load_flat_modules  # noqa: PLC0415  (tests/ is on sys.path under pytest)

    script, _, sub = program.partition(" ")
    if script in ("Deit/main.py", "Deit/train_with_MaxSup.sh"):
        module = load_flat_modules(ROOT / "Deit", ("main", "engine", "datasets", "samplers"))["main"]
    elif script == "Conv/common_resnet/train.py":
        module = load_flat(ROOT / "Conv/common_resnet", "train", ("presets", "utils", "sampler"))
    elif script.endswith(".py"):
        module = load_flat((ROOT / script).parent, Path(script).stem, ())
    elif script.startswith(("analysis.", "maxsup.")):
        module = importlib.import_module(script + ".cli" if script == "maxsup.hub" else script)
    else:
        return None
    factory = getattr(module, "get_args_parser", None)
    if factory is None:
        return None
    parser = factory()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for p in [parser, *(q for a in subparsers for q in a.choices.values())]:
        p.allow_abbrev = False  # a README spells flags in full: a prefix breaks once another flag shares it
    return parser, [sub] if sub else []


def parse_problems(commands: list[Command]) -> tuple[list[str], set[str]]:
    """One line per command whose arguments its program's parser refuses (rule 8), and the programs checked."""
    parsers: dict[str, tuple[argparse.ArgumentParser, list[str]] | None] = {}
    problems, checked = [], set()
    for cmd in commands:
        if cmd.program in UNPARSED or "..." in cmd.args:
            continue
        if cmd.program not in parsers:
            parsers[cmd.program] = _parser(cmd.program)
        assert parsers[cmd.program] is not None, f"{cmd.program} has no get_args_parser(): add it to UNPARSED"
        parser, before = parsers[cmd.program]
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parser.parse_args([*before, *cmd.args])
        except UserError as e:  # maxsup.cli.ArgumentParser: one line, turned into 'error: ...' by run_cli
            problems.append(f"{cmd.readme}: {cmd.text!r}: {e}")
        except SystemExit:  # a plain argparse parser has printed its error
            message = err.getvalue().strip().splitlines()[-1:] or ["(no message)"]
            problems.append(f"{cmd.readme}: {cmd.text!r}: {message[0]}")
        checked.add(cmd.program)
    return problems, checked


def _no_ffcv(args: list[str], nproc: int) -> dict:
    raise AssertionError(f"unexpected FFCV command {args}")


@pytest.fixture
def ffcv_config(monkeypatch) -> Callable[[list[str], int], dict]:
    """The FFCV trainer's --print-config for a documented command, run in this process from the repository root
    (it reads the config files only: no data, no process group)."""
    from flat_import import load_flat  # noqa: PLC0415  (tests/ is on sys.path under pytest)

    main = load_flat(ROOT / "Conv/ffcv", "main", ()).main
    monkeypatch.chdir(ROOT)
    for name in ("RANK", "SEEDS"):
        monkeypatch.delenv(name, raising=False)

    def resolve(args: list[str], nproc: int) -> dict:
        monkeypatch.setenv("WORLD_SIZE", str(nproc))
        with contextlib.redirect_stdout(io.StringIO()):
            return main([*args, "--print-config"])

    return resolve


# --------------------------------------------------------------------------------------------------------------------
# the repository's READMEs
# --------------------------------------------------------------------------------------------------------------------
def test_readme_chains_connect_and_runs_have_their_own_folders(ffcv_config):
    commands = documented_commands({r: (ROOT / r).read_text() for r in READMES}, ffcv_config)
    problems = chain_problems(commands)
    assert not problems, "\n".join(problems)
    # the parse saw what the READMEs document (a parser that skips everything would pass the check above)
    by_program = {c.program for c in commands}
    assert {"Deit/main.py", "Deit/train_with_MaxSup.sh", "Conv/common_resnet/train.py", "Conv/ffcv/main.py",
            "analysis.linear_transfer", "analysis.robustness", "maxsup.hub export-mmseg"} <= by_program
    runs = {w for c in commands if c.training for w in c.run_dirs}
    # T4's six losses on the four ImageNet models, each in its own folder, which analysis/README.md reads
    assert {f"runs/ffcv_{m}_{loss}" for m in ("rn50", "rn18", "rn101", "mbv2")
            for loss in ("ce", "ls", "ols", "zipf", "maxsup", "lp")} <= runs
    assert {"Conv/common_resnet/runs/t10_r50_maxsup", "Conv/common_resnet/runs/c10_ce", "out/t5_maxsup",
            "out/mix_ls", "runs/ffcv_fmnist_cpu", "runs/ffcv_fmnist_cpu_ddp"} <= runs
    reads = {r for c in commands for r in c.reads}
    # the T12 loop covers its six datasets (CIFAR-100 included, Cars, a T6 dataset, not)
    t12 = {r for c in commands if c.program == "analysis.linear_transfer" for r in c.reads if r.startswith("datasets/")}
    assert t12 == {f"datasets/{d}" for d in ("cifar10", "cifar100", "cub200", "flowers102", "food101", "pets")}
    assert "Conv/common_resnet/runs/t10_r50_maxsup/checkpoint.pth" in reads  # T6 and the test-only commands
    assert "datasets/cifar10" in {w for c in commands if c.program == "Conv/common_resnet/train.py" for w in c.writes}


def test_every_documented_command_parses(ffcv_config):
    commands = documented_commands({r: (ROOT / r).read_text() for r in READMES}, ffcv_config)
    problems, checked = parse_problems(commands)
    assert not problems, "\n".join(problems)
    assert {"Deit/main.py", "Deit/train_with_MaxSup.sh", "Conv/common_resnet/train.py", "Conv/ffcv/write_imagenet.py",
            "analysis.linear_transfer", "analysis.robustness", "maxsup.hub evaluate", "maxsup.hub export-mmseg",
            "data/prepare_fashion_mnist.py", "data/imagenet_downsampled.py write"} <= checked


# --------------------------------------------------------------------------------------------------------------------
# the checker itself, on READMEs written here (no FFCV commands: their config is resolved by the trainer)
# --------------------------------------------------------------------------------------------------------------------
T10 = """```bash
python train.py --dataset imagefolder --data-path /data/imagenet --loss maxsup --output-dir runs/t10_r50_maxsup
python train.py --test-only --resume runs/t10_maxsup/checkpoint.pth --dataset imagefolder --data-path /data/imagenet
```
"""


def test_a_read_without_writer_is_named():
    problems = chain_problems(documented_commands({"Conv/common_resnet/README.md": T10}, _no_ffcv))
    assert problems == ["Conv/common_resnet/README.md: 'python train.py --test-only --resume "
                        "runs/t10_maxsup/checkpoint.pth --dataset imagefolder --data-path /data/imagenet' reads "
                        "Conv/common_resnet/runs/t10_maxsup/checkpoint.pth, which no documented command writes"]
    fixed = T10.replace("runs/t10_maxsup/", "runs/t10_r50_maxsup/")
    assert chain_problems(documented_commands({"Conv/common_resnet/README.md": fixed}, _no_ffcv)) == []


def test_a_flag_the_program_lacks_is_named():
    """A renamed or misspelt flag in a README is one line naming the command and the flag; an excerpt is skipped."""
    text = """```bash
python -m analysis.logits --checkpoint CE=runs/ce/checkpoint.pth --out results/fig5 --thresold 0.01
python -m maxsup.hub evaluate deit_small_maxsup --data-path /data/imagenet/val --real-label
bash Deit/train_with_MaxSup.sh --loss maxsup --alpha-end 0.1
python Deit/main.py --data-path /data/imagenet_zip --cache ...
```
"""
    problems, checked = parse_problems(documented_commands({"README.md": text}, _no_ffcv))
    assert len(problems) == 2, problems
    assert "analysis.logits" in problems[0] and "--thresold" in problems[0]
    assert "--real-label" in problems[1]
    assert checked == {"analysis.logits", "maxsup.hub evaluate", "Deit/train_with_MaxSup.sh"}
    fixed = text.replace("--thresold", "--threshold").replace("--real-label\n", "--real-labels\n")
    assert parse_problems(documented_commands({"README.md": fixed}, _no_ffcv))[0] == []


def test_paths_resolve_from_where_each_command_runs():
    """common_resnet's commands run in its folder: its datasets/ is not the root's, unless the path says so."""
    train = ("```bash\nC10=\"--dataset cifar10 --data-path {path} --download\"\n"
             "python train.py $C10 --output-dir runs/c10\n```\n")
    robust = ("```bash\npython -m analysis.robustness --checkpoint CE=Conv/common_resnet/runs/c10/checkpoint.pth "
              "--dataset cifar10 --data-path datasets/cifar10 --out results/t8\n```\n")
    for path, ok in (("datasets/cifar10", False), ("../../datasets/cifar10", True)):
        texts = {"Conv/common_resnet/README.md": train.format(path=path), "analysis/README.md": robust}
        problems = chain_problems(documented_commands(texts, _no_ffcv))
        assert problems == ([] if ok else ["analysis/README.md: " + repr(robust.splitlines()[1]) +
                                           " reads datasets/cifar10, which no documented command writes"])
    # a cd inside a block moves the commands after it
    moved = robust.replace("```bash\npython", "```bash\ncd Conv/common_resnet && python").replace(
        "CE=Conv/common_resnet/runs", "CE=runs")
    texts = {"Conv/common_resnet/README.md": train.format(path="datasets/cifar10"), "analysis/README.md": moved}
    assert chain_problems(documented_commands(texts, _no_ffcv)) == []


def test_loops_and_variables_expand_and_shared_folders_are_refused():
    text = """```bash
COMMON="--data-path /data/imagenet --epochs 90"
for L in ce ls maxsup; do
  torchrun --nproc_per_node=8 train.py $COMMON --loss $L --output-dir runs/t10_$L
done
python train.py $COMMON --loss lp --output-dir runs/t10_maxsup
```
"""
    commands = documented_commands({"Conv/common_resnet/README.md": text}, _no_ffcv)
    assert [c.run_dirs for c in commands] == [[f"Conv/common_resnet/runs/t10_{loss}"] for loss in
                                            ("ce", "ls", "maxsup", "maxsup")]
    assert [c.args[c.args.index("--loss") + 1] for c in commands] == ["ce", "ls", "maxsup", "lp"]
    problems = chain_problems(commands)
    assert len(problems) == 1 and problems[0].startswith("Conv/common_resnet/runs/t10_maxsup is the run folder of "
                                                         "two different runs"), problems
    # the same command twice (e.g. quoted in two READMEs) is one run; an evaluation writes no run folder
    again = text.replace("--loss lp --output-dir runs/t10_maxsup", "--loss lp --output-dir runs/t10_lp")
    again += ("```bash\npython train.py --test-only --resume runs/t10_lp/checkpoint.pth --data-path /data/imagenet\n"
              "```\n")
    assert chain_problems(documented_commands({"Conv/common_resnet/README.md": again + again}, _no_ffcv)) == []


def test_a_read_before_its_writer_in_the_same_block_is_refused():
    text = """```bash
python -m maxsup.hub export-mmseg out/t5/checkpoint.pth seg/deit.pth
torchrun --nproc_per_node=4 Deit/main.py --data-path /data/imagenet --output_dir out/t5
```
"""
    problems = chain_problems(documented_commands({"Deit/README.md": text}, _no_ffcv))
    assert len(problems) == 1 and "reads out/t5/checkpoint.pth" in problems[0], problems
    # in separate blocks the order does not matter; Deit's default --output_dir '' writes nothing
    split = text.replace("seg/deit.pth\n", "seg/deit.pth\n```\n```bash\n")
    assert chain_problems(documented_commands({"Deit/README.md": split}, _no_ffcv)) == []
    nothing = split.replace(" --output_dir out/t5", "")
    assert len(chain_problems(documented_commands({"Deit/README.md": nothing}, _no_ffcv))) == 1


# --------------------------------------------------------------------------------------------------------------------
# the shell scripts: which python they run, and every environment variable they read is documented
# --------------------------------------------------------------------------------------------------------------------
SCRIPTS = {"Conv/ffcv/write_imagenet.sh": "Conv/ffcv/README.md", "Deit/train_with_MaxSup.sh": "Deit/README.md"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_environment_variable_a_script_reads_is_documented(script):
    text = (ROOT / script).read_text()
    assigned = set(re.findall(r"^\s*([A-Z][A-Z0-9_]*)=", text, re.M))
    expanded = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text)) - {"BASH_SOURCE"}  # bash's own
    env = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):?[-?]", text)) | (expanded - assigned)
    assert {"PYTHON", "VIRTUAL_ENV"} <= env, env
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    readme = (ROOT / SCRIPTS[script]).read_text()
    assert not {v for v in env if not re.search(rf"\b{v}\b", header)}, f"{script}: not in its header comment"
    assert not {v for v in env if f"`{v}`" not in readme}, f"{script}: not in {SCRIPTS[script]}"


def _fake_repo(tmp_path: Path, script: str, venv: bool) -> tuple[Path, Path]:
    """A copy of ``script`` in a repository layout under tmp_path, with a recording fake .venv python if ``venv``,
    and a recording ``python3`` on a PATH of its own."""
    repo = tmp_path / "repo"
    (repo / script).parent.mkdir(parents=True)
    shutil.copy(ROOT / script, repo / script)
    log = tmp_path / "calls.log"
    fakes = [repo / ".venv/bin/python"] if venv else []
    fakes += [tmp_path / "bin/python3"]
    for fake in fakes:
        fake.parent.mkdir(parents=True, exist_ok=True)
        fake.write_text(f'#!/bin/sh\necho "{fake.parent.parent.name} $*" >> "{log}"\n')
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return repo, log


@pytest.mark.parametrize("venv,env,expected", [
    (True, {}, ".venv"),                                 # no activated venv: the repository's .venv
    (True, {"VIRTUAL_ENV": "/some/venv"}, "tmp"),        # an activated virtualenv: python3 from the PATH
    (False, {}, "tmp"),                                  # no .venv: python3 from the PATH
    (True, {"PYTHON": "{tmp}/bin/python3"}, "tmp"),      # PYTHON wins
])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_pick_the_repository_venv_like_the_deit_launcher(tmp_path, script, venv, env, expected):
    repo, log = _fake_repo(tmp_path, script, venv)
    run_env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "IMAGENET_DIR": "/in",
               "WRITE_DIR": str(tmp_path / "out"), "NUM_WORKERS": "3",
               **{k: v.format(tmp=tmp_path) for k, v in env.items()}}
    args = ["500", "0.50", "90"] if script.endswith("write_imagenet.sh") else ["--epochs", "1"]
    proc = subprocess.run(["bash", str(repo / script), *args], env=run_env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    owner = ".venv" if expected == ".venv" else tmp_path.name
    assert calls and all(c.split()[0] == owner for c in calls), calls
    if script.endswith("write_imagenet.sh"):
        assert len(calls) == 2  # train and val
        assert "--data-dir /in/train" in calls[0] and "--num-workers 3" in calls[0]
        assert f"--write-path {tmp_path}/out/val_500_0.50_90.ffcv" in calls[1]
