"""Import a flat script folder's modules (the DeiT / torchvision-references layout: ``main.py`` beside ``engine.py``,
``utils.py``, ...) without leaving them in ``sys.modules``, where Deit's and common_resnet's ``utils`` / ``datasets``
would shadow each other."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType


def load_flat_modules(folder: Path, names: tuple[str, ...], imports: tuple[str, ...] | None = None
                      ) -> dict[str, ModuleType]:
    """Import ``imports`` (default: all of ``names``) from ``folder``; ``names`` are every module of the folder
    that the imports pull in, removed from ``sys.modules`` afterwards (what was there before is put back)."""
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        return {n: importlib.import_module(n) for n in (imports or names)}
    finally:
        sys.path[:] = [p for p in sys.path if p != str(folder)]  # Deit/main.py inserts its folder too
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def load_flat(folder: Path, entry: str, siblings: tuple[str, ...]) -> ModuleType:
    """``folder/entry.py`` imported with its sibling modules ``siblings`` (see :func:`load_flat_modules`)."""
    return load_flat_modules(folder, (entry, *siblings), (entry,))[entry]
