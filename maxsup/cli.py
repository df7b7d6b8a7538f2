"""Turn bad-input exceptions into one line on stderr and a non-zero exit (no traceback)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from .errors import UserError
from .io_errors import os_error_line, unwrap_worker_message
from .training.distributed import cleanup_distributed

#: Exceptions that mean "the input was wrong", not "the code is wrong". Every ``OSError`` (a missing, read-only,
#: full or not-a-folder path) is one too: :func:`maxsup.io_errors.os_error_line` says which path and what to do.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose report of a bad flag (unknown flag or choice, missing or malformed value) is one ``error: ...``
    line through :func:`run_cli`, like every other bad input, instead of the usage block (``--help`` prints it).
    Sub-command parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see --help)")


def _number(convert: Callable[[str], Any], accept: Callable[[Any], bool], expects: str, name: str,
            doc: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert`` the text, then refuse a value ``accept`` rejects (NaN fails every range);
    both refusals read ``expects <expects>, got <text>``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {expects}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expects {expects}, got {text}")
        return value

    parse.__name__ = parse.__qualname__ = name
    parse.__doc__ = doc
    return parse


positive_int = _number(int, lambda v: v >= 1, "a whole number >= 1", "positive_int", """argparse ``type`` of counts \
that must be at least 1 (images, bins, samples per class): '0' and '-1' are refused here rather than meaning "none" \
or dropping the last item of a slice.""")
positive_float = _number(float, lambda v: 0 < v < math.inf, "a number > 0", "positive_float", """argparse ``type`` \
of sizes that must be finite and above 0 (inches per figure panel).""")
non_negative_int = _number(int, lambda v: v >= 0, "a whole number >= 0", "non_negative_int", """argparse ``type`` of \
counts where 0 means none or off (warm-up epochs, workers, a print period of 0 = never).""")
non_negative_float = _number(float, lambda v: 0 <= v < math.inf, "a number >= 0", "non_negative_float", """argparse \
``type`` of finite magnitudes where 0 means none or off and a negative value has no meaning: learning rates, weight \
decay, momentum, a gradient-norm clip whose 0 = off, Mixup/CutMix α, loss weights.""")
probability = _number(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]", "probability", """argparse ``type`` \
of probabilities and rates in [0, 1] (dropout, drop-path, random erasing, flip and mixing probabilities, an EMA \
decay).""")


def check_value(name: str, value: Any, kind: Callable[[str], Any]) -> None:
    """Check ``value`` of a config key (not an argparse flag: e.g. FFCV's ``training.weight_decay``) with one of the
    argparse types above; a value it refuses is a :class:`UserError` ``<name> expects ..., got ...``."""
    try:
        kind(str(value))
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"{name} {exc}") from None


def int_list(text: str) -> list[int]:
    """argparse ``type`` of a comma list of integers (``3,17,42``)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects comma-separated integers such as 3,17,42, got {text!r}") from None


def error_line(exc: BaseException) -> str:
    """The one line (without ``error: ``) that the CLI prints for a user error ``exc``."""
    if isinstance(exc, OSError):
        return os_error_line(exc)
    text = unwrap_worker_message(str(exc)).strip()  # a DataLoader worker's error: the worker's own message
    return text.splitlines()[0] if text else type(exc).__name__


def run_cli(main: Callable[..., Any], argv: list[str] | None = None, exit_code: int = 2) -> Any:
    """Call ``main(argv)`` (or ``main()`` when argv is None); report user errors as ``error: <msg>`` and exit.

    The torch.distributed process group, if any, is destroyed on the way out."""
    try:
        return main(argv) if argv is not None else main()
    except USER_ERRORS as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        cleanup_distributed()
