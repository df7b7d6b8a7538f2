"""Import a flat script folder's modules (the DeiT / torchvision-references layout: ``main.py`` beside ``engine.py``,
``utils.py``, ...) without leaving them in ``sys.modules``, where Deit's and common_resnet's ``utils`` / ``datasets``
would shadow each other; or one script file under a name of its own (:func:`load_file`)."""

from __future__ import annotations

import importlib
import importlib.util
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


def load_file(path: Path, name: str, *, register: bool = False) -> ModuleType:
    """Execute the script ``path`` as a module called ``name`` (a name no other module uses, e.g. ``ffcv_main``).
    ``register``: put it in ``sys.modules`` first, for code that looks its module up by name (dataclasses, pickle)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
