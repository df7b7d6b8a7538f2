"""The loss registry: one table name → loss class, the options each loss takes, and the factory.

A loss's options are the keyword arguments of its ``__init__``, and their defaults are the ones written there:
:func:`loss_defaults` reads them, :func:`parse_loss_options` types command-line ``KEY=VALUE`` strings by them, and
:func:`build_criterion` fills in what only the trainer knows (``num_classes``, ``epochs``, ``model``). Adding a loss is
one class with ``@register_loss("name")`` above it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from torch import Tensor, nn

from ..models import logits_and_dense_logits

__all__ = ["LOSSES", "CRITERIA", "register_loss", "loss_defaults", "parse_loss_options", "resolve_loss_options",
           "describe_loss_options", "build_criterion", "compute_loss"]

#: name → loss class, in registration order. The one table every trainer, ``--help`` text and config reads.
LOSSES: dict[str, type[nn.Module]] = {}

#: The registered names: a live view of :data:`LOSSES` (a loss registered later shows up here too).
CRITERIA = LOSSES.keys()

#: Constructor arguments the factory supplies; they are not user options.
SUPPLIED = ("num_classes", "epochs", "model")

_OPTION_TYPES = (bool, int, float, str)
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")

L = TypeVar("L", bound=type[nn.Module])


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def _options(cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    return {p.name: p for p in params if p.name not in SUPPLIED}


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator: add the class to :data:`LOSSES` under ``name`` (lower case, ``-`` separated).

    The class's ``__init__`` may take ``num_classes``, ``epochs`` and ``model`` (supplied by :func:`build_criterion`)
    plus keyword options, each with a bool/int/float/str default. A name already registered is refused.
    """
    key = _canonical(name)

    def add(cls: L) -> L:
        if key in LOSSES:
            raise ValueError(f"loss {key!r} is already registered (by {LOSSES[key].__qualname__})")
        for p in _options(cls).values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not isinstance(p.default, _OPTION_TYPES):
                raise TypeError(f"loss {key!r}: option {p.name!r} of {cls.__qualname__} needs a bool/int/float/str "
                                f"default in its __init__ signature")
        LOSSES[key] = cls
        return cls

    return add


def _loss_class(name: str) -> tuple[str, type[nn.Module]]:
    key = _canonical(name)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    return key, LOSSES[key]


def loss_defaults(name: str | type[nn.Module]) -> dict[str, Any]:
    """The options of loss ``name`` (or of a loss class, e.g. :class:`~maxsup.losses.base.ScheduledLoss` for the α
    schedule's) and their defaults, read from its ``__init__`` signature (in its order)."""
    cls = name if isinstance(name, type) else _loss_class(name)[1]
    return {k: p.default for k, p in _options(cls).items() if p.default is not inspect.Parameter.empty}


def _takes(key: str, defaults: dict[str, Any]) -> str:
    return f"loss {key!r} takes " + (", ".join(f"{k} (default {v!r})" for k, v in defaults.items()) or "no options")


def _typed(key: str, option: str, value: str, default: Any) -> Any:
    kind = type(default)
    if kind is bool:
        if value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
    elif kind is int:
        try:
            return int(value)
        except ValueError:
            pass
    elif kind is float:
        try:
            return float(value)
        except ValueError:
            pass
    else:
        return value
    raise ValueError(f"loss {key!r} option {option}={value!r}: expected a {kind.__name__} value like {default!r}")


def parse_loss_options(name: str, items: Iterable[str]) -> dict[str, Any]:
    """``["alpha_end=0.2", "dense=true"]`` → ``{"alpha_end": 0.2, "dense": True}``, typed by each option's default.

    ``-`` in a key reads as ``_``. A malformed item, an option the loss does not take, a value of the wrong type, or
    the same key twice raises ``ValueError`` naming the loss's valid options.
    """
    key, _ = _loss_class(name)
    defaults = loss_defaults(key)
    out: dict[str, Any] = {}
    for item in items:
        option, sep, value = item.partition("=")
        option = option.strip().replace("-", "_")
        if not sep or not option:
            raise ValueError(f"loss option {item!r} is not KEY=VALUE; {_takes(key, defaults)}")
        if option not in defaults:
            raise ValueError(f"loss {key!r} has no option {option!r}; {_takes(key, defaults)}")
        if option in out:
            raise ValueError(f"loss option {option!r} is given twice")
        out[option] = _typed(key, option, value.strip(), defaults[option])
    return out


def describe_loss_options() -> str:
    """The registered losses that take options, with their defaults (losses with the same options grouped), for a
    ``--help`` text: ``"ls, maxsup, ...: alpha_start=0.1, alpha_end=0.2, alpha_denominator=E-1; lp: beta=0.002; ..."``.
    """
    groups: dict[str, list[str]] = {}
    for name in LOSSES:
        defaults = loss_defaults(name)
        if defaults:
            groups.setdefault(", ".join(f"{k}={v}" for k, v in defaults.items()), []).append(name)
    return "; ".join(f"{', '.join(names)}: {options}" for options, names in groups.items())


def resolve_loss_options(name: str, items: Iterable[str] = (), **given: Any) -> dict[str, Any]:
    """Every option of loss ``name`` with its value for this run, defaults filled in (what a trainer records).

    Layers, later wins: the class's defaults, ``items`` (``KEY=VALUE`` strings, :func:`parse_loss_options`), then
    ``given`` values that are not None (a trainer's dedicated flags, e.g. ``alpha_start``; None = not given). A given
    option the loss does not take, or one set both ways to different values, raises ``ValueError``.
    """
    key, _ = _loss_class(name)
    defaults = loss_defaults(key)
    parsed = parse_loss_options(key, items)
    for option, value in given.items():
        if value is None:
            continue
        if option not in defaults:
            raise ValueError(f"loss {key!r} has no option {option!r}; {_takes(key, defaults)}")
        if option in parsed and parsed[option] != value:
            raise ValueError(f"loss option {option!r} is set twice, to {parsed[option]!r} and {value!r}")
        parsed[option] = value
    return {**defaults, **parsed}


def build_criterion(name: str, num_classes: int, epochs: int = 1, *, model: nn.Module | None = None,
                    **options: Any) -> nn.Module:
    """Build the registered loss ``name`` (see :data:`LOSSES`) with ``options`` over its defaults.

    Args:
        name: a key of :data:`LOSSES` (``_`` reads as ``-``).
        num_classes: K.
        epochs: total training epochs (the α schedule's E).
        model: the network being trained (unwrapped from DDP / torch.compile); ``adaptive-ls`` copies it as its
            teacher. Ignored by the losses that do not take it.
        **options: the loss's keyword options (:func:`loss_defaults` lists them). An option the loss does not take
            is refused with ``ValueError``.
    """
    key, cls = _loss_class(name)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    defaults = loss_defaults(key)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"loss {key!r} has no option {', '.join(unknown)}; {_takes(key, defaults)}")
    params = inspect.signature(cls.__init__).parameters
    supplied = {k: v for k, v in (("num_classes", num_classes), ("epochs", epochs), ("model", model)) if k in params}
    return cls(**supplied, **options)


def compute_loss(model: nn.Module, criterion: nn.Module, samples: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """One training forward pass and its loss: ``(outputs, criterion(outputs, target, ...))``.

    Supplies what some losses need beyond the logits: per-position logits for Zipf-LS with ``dense=True``
    (:func:`maxsup.models.logits_and_dense_logits`) and the input batch for Adaptive LS's teacher. Call it inside
    the trainer's autocast block.
    """
    extra: dict[str, Tensor] = {}
    if getattr(criterion, "dense", False):
        outputs, extra["dense_logits"] = logits_and_dense_logits(model, samples)
    else:
        outputs = model(samples)
    if getattr(criterion, "needs_inputs", False):
        extra["inputs"] = samples
    return outputs, criterion(outputs, target, **extra)
