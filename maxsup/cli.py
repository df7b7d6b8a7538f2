"""Turn bad-input exceptions into one line on stderr and a non-zero exit (no traceback)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .errors import UserError
from .training.distributed import cleanup_distributed

#: Exceptions that mean "the input was wrong", not "the code is wrong".
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError, NotADirectoryError,
                                               PermissionError)


def run_cli(main: Callable[..., Any], argv: list[str] | None = None, exit_code: int = 2) -> Any:
    """Call ``main(argv)`` (or ``main()`` when argv is None); report user errors as ``error: <msg>`` and exit.

    The torch.distributed process group, if any, is destroyed on the way out."""
    try:
        return main(argv) if argv is not None else main()
    except USER_ERRORS as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename and exc.filename not in msg:
            msg = f"{msg}: {exc.filename}"
        print(f"error: {msg}", file=sys.stderr, flush=True)
        sys.exit(exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        cleanup_distributed()
