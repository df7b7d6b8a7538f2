"""Path bootstrap: ``python analysis/NAME.py`` imports exactly as ``python -m analysis.NAME`` from the repository root.

Run by path (the layout ``Deit/main.py`` users know), Python puts the script's own folder, ``analysis/``, first on
``sys.path``. ``import analysis`` then fails, and the scripts' own module names (``tables``, ``logits``, ``common``,
``inputs``) would shadow installed modules of those names. Every script runs, as its first statement after
``from __future__``::

    if not __package__:  # run by path: see analysis/_bootstrap.py
        import _bootstrap  # noqa: F401

``__package__`` is empty only when the file runs by path, and then ``analysis/`` is on ``sys.path``, so this module
is found without the package. Importing it puts the repository root in that entry's place, whatever the working
directory, so ``analysis`` and this checkout's ``maxsup`` resolve as they do under ``python -m`` (the root first,
ahead of an installed copy). Nothing is installed into site-packages. Under ``python -P`` / ``PYTHONSAFEPATH`` Python
puts no script folder on the path, so run ``python -m analysis.NAME`` from the root there.
"""

from __future__ import annotations

import sys
from pathlib import Path

ANALYSIS_DIR = Path(__file__).resolve().parent
REPO_ROOT = ANALYSIS_DIR.parent


def _is(entry: str, folder: Path) -> bool:
    """Whether the ``sys.path`` entry ``entry`` ('' = the working directory) names ``folder``."""
    try:
        return Path(entry or ".").resolve() == folder
    except (OSError, RuntimeError):  # an unreadable or looping entry cannot be either folder
        return False


sys.path[:] = [str(REPO_ROOT), *(p for p in sys.path if not _is(p, ANALYSIS_DIR) and not _is(p, REPO_ROOT))]
