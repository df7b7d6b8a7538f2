"""How a benchmark imports a trainer's modules; the one place in ``bench/`` that touches ``sys.path``.

The trainers are flat script folders in their anchors' layout (DeiT: ``Deit/main.py`` beside ``engine.py``,
``smmix.py``, ``token_labeling.py``; FFCV: ``Conv/ffcv/main.py`` beside ``write_imagenet.py``; torchvision references:
``Conv/common_resnet/train.py`` beside ``utils.py``). Their modules import their siblings by bare name
(``from engine import ...``), so they are not a package, and a module can only be imported with its folder on
``sys.path``, as ``python Deit/main.py`` has it. A benchmark runs in its own process and imports from one trainer, so
the bare names cannot collide (the tests import several trainers in one session and use ``tests/flat_import.py``,
which takes the modules out of ``sys.modules`` again). ``maxsup`` itself comes from the installed package
(``make install``, i.e. ``pip install -e .``).

Usage in ``bench/<name>.py`` (run as ``python bench/<name>.py``, so ``bench/`` is on ``sys.path``)::

    from _trainers import trainer_module

    train_one_epoch = trainer_module("Deit", "engine").train_one_epoch
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def trainer_module(folder: str, name: str) -> ModuleType:
    """``REPO/<folder>/<name>.py`` imported under its bare name ``name``, with ``REPO/<folder>`` put first on
    ``sys.path`` (once), so that its own sibling imports resolve as when the trainer runs."""
    path = REPO / folder
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"{path / name}.py does not exist; trainer_module takes a trainer folder relative to "
                                f"the repository root and a module name, e.g. trainer_module('Deit', 'engine')")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return importlib.import_module(name)
