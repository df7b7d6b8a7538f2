"""``maxsup/`` as packages: no import circle (function-level imports included), what importing it registers, the
names the rest of the repository imports from the package roots, and ``python -m maxsup.hub``.

Importing each module alone does not find a circle whose second half is a function-level import (it only runs when
the function is called), so this test reads every module with :mod:`ast` and walks every ``import`` / ``from ...
import`` statement, wherever it sits (module level, inside functions, under ``if TYPE_CHECKING``), relative and
absolute alike. An edge goes to the module a statement names; ``from pkg import name`` goes to ``pkg.name`` when
that is a module, else to ``pkg`` (its ``__init__``). Importing a submodule also runs its parent packages'
``__init__`` files, but those edges are left out: every package would otherwise sit in a circle with its own
children, which Python handles (the parent is already in ``sys.modules``) and which is not what this test is about.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "maxsup"


def module_names(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every .py file of ``package`` (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """Absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_edges(modules: dict[str, Path], package: str) -> dict[str, set[str]]:
    """{module: the modules of ``package`` it imports anywhere in its body}."""
    edges: dict[str, set[str]] = {name: set() for name in modules}

    def known(name: str) -> str | None:
        # "maxsup.models.vit.LVViT" is not a module: the longest known prefix is the module that runs
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    resolved = known(target)
                    if resolved is not None and resolved != name:
                        edges[name].add(resolved)
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_function_level_and_relative_circles(tmp_path):
    """A circle closed by a function-level relative import, and one through ``from pkg import module``."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "sub" / "__init__.py").write_text("from .c import g\n")
    (pkg / "sub" / "c.py").write_text("import pkg.d\n\ndef g():\n    pass\n")
    (pkg / "d.py").write_text("def h():\n    from pkg.sub import c\n")
    (pkg / "e.py").write_text("from .a import f\nfrom pkg.sub.c import g\n")  # imports into circles: no circle
    modules = module_names(tmp_path, "pkg")
    assert set(modules) == {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.d", "pkg.e"}
    edges = import_edges(modules, "pkg")
    assert edges["pkg.b"] == {"pkg.a"} and edges["pkg.d"] == {"pkg.sub.c"} and edges["pkg.sub"] == {"pkg.sub.c"}
    assert sorted(find_cycles(edges)) == [["pkg.a", "pkg.b"], ["pkg.d", "pkg.sub.c"]]


@pytest.mark.parametrize("package", [PACKAGE])
def test_no_import_circle(package):
    modules = module_names(ROOT, package)
    assert f"{package}.losses" in modules or f"{package}.hub" in modules  # the walk found the package
    cycles = find_cycles(import_edges(modules, package))
    assert cycles == [], "import circles in maxsup/ (break them by moving the shared part into a module both use): " \
        + "; ".join(" <-> ".join(c) for c in cycles)


def _run_python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (nothing imported yet) with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_importing_maxsup_registers_lvvit_with_timm():
    """``timm.create_model("lvvit_t")`` works after ``import maxsup`` alone (issue 22, item 5), and not before; the
    model is LV-ViT-T with the official README's 8.53M parameters (1000 classes)."""
    proc = _run_python(
        "import timm\n"
        "before = timm.is_model('lvvit_t')\n"
        "import maxsup\n"
        "m = timm.create_model('lvvit_t')\n"
        "print(before, type(m).__module__, type(m).__name__, m.num_classes, round(sum(p.numel() for p in "
        "m.parameters()) / 1e6, 2))\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "maxsup.models.vit", "LVViT", "1000", "8.53"]


def test_public_names_import_from_the_package_roots():
    """What trainers, analysis/, data/ and the tests import, from ``maxsup.models`` and ``maxsup.hub``."""
    from maxsup import hub, models

    for name in ("create_model", "arch_spec", "model_from_checkpoint", "load_pretrained_backbone",
                 "load_state_dict_strict", "features_and_logits", "classifier_layer", "logits_and_dense_logits",
                 "unwrap_model", "CIFAR_RESNETS", "CifarResNet", "BlurPoolConv2d", "apply_blurpool", "CifarResNet32",
                 "CausalNormClassifier", "LVViT", "TokenHeadViT", "with_token_head", "dense_class_scores",
                 "patch_grid", "strip_prefixes", "compare_keys"):
        assert callable(getattr(models, name)) or isinstance(getattr(models, name), dict), name
    assert set(models.__all__) <= set(dir(models)) and set(hub.__all__) <= set(dir(hub))
    assert hub.main is hub.cli.main and hub.REGISTRY["deit_small_maxsup"].arch == "deit_small_patch16_224"


def test_strict_key_check_names_the_offending_keys():
    import torch

    from maxsup.errors import UserError
    from maxsup.models import compare_keys, load_state_dict_strict, strip_prefixes

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 4))
    sd = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}  # DDP + compile prefixes
    assert list(strip_prefixes(sd)) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    load_state_dict_strict(model, sd)  # loads through both prefixes
    bad = {**strip_prefixes(sd), "1.weight": torch.zeros(5, 2), "2.bias": torch.zeros(1)}
    del bad["0.bias"]
    mismatch = compare_keys(model.state_dict(), bad)
    assert (mismatch.missing, mismatch.unexpected, mismatch.shapes) == (["0.bias"], ["2.bias"],
                                                                        ["1.weight (5, 2) vs (4, 2)"])
    with pytest.raises(UserError, match=r"missing 1 keys \(e.g. 0.bias\); unexpected 1 keys \(e.g. 2.bias\); 1 shape "
                                        r"mismatches \(e.g. 1.weight \(5, 2\) vs \(4, 2\)\)"):
        load_state_dict_strict(model, bad, "ckpt.pth")


def test_python_m_maxsup_hub_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "maxsup.hub", "list"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["deit_small_maxsup", "deit_small_patch16_224"] and "RuntimeWarning" not in \
        proc.stderr
    bad = subprocess.run([sys.executable, "-m", "maxsup.hub", "evaluate", "nonexistent.pth", "--data-path", "."],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown checkpoint 'nonexistent.pth'")


def test_dataset_registry_builds_splits_and_reports_missing_files(tmp_path):
    """One table serves common_resnet, Deit and analysis/: options a dataset does not take are ignored, test sets
    have one split, and missing files are one sentence naming the folder."""
    from maxsup.data import DATASETS, build_split, split_num_classes
    from maxsup.errors import UserError

    ds = build_split("fmnist", None, train=False, classes=[7, 2], limit_per_class=3, download=False)
    # classes 7 and 2 relabelled 0 and 1 in that order; the first 3 test images of each, in file order
    assert (ds.classes, ds.targets, split_num_classes(ds)) == (["Sneaker", "Pullover"], [1, 0, 0, 1, 1, 0], 2)
    assert DATASETS["fmnist"].input_size == 28 and DATASETS["cifar100"].mean == (0.5071, 0.4865, 0.4409)
    assert [n for n, d in DATASETS.items() if d.eval_only] == ["imagenetv2", "imagenet-a", "imagenet-r",
                                                                "imagenet-sketch"]
    with pytest.raises(UserError, match=f"CIFAR10 not found in {tmp_path}: extract cifar-10-python.tar.gz"):
        build_split("cifar10", tmp_path, train=True, classes=[0])  # `classes` is Fashion-MNIST's: ignored
    with pytest.raises(UserError, match="--dataset imagenet-a needs --data-path"):
        build_split("imagenet-a", None, train=False)
    with pytest.raises(UserError, match=f"image folder {tmp_path / 'val'} does not exist"):
        build_split("imagefolder", tmp_path, train=False)
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        build_split("mnist", tmp_path, train=False)
