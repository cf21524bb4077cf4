"""Build backbones by name: ``build("gru", input_dim=20, output_dim=6, width=128)``.

Each backbone module registers a factory ``factory(*, input_dim, output_dim, width, **kwargs) -> Backbone``
with ``@register(name)``. ``width`` is the one size knob every backbone has (hidden size, model width);
``build_matched`` searches it so that different backbones can be compared at an equal parameter budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from metarl.models.base import Backbone, check_positive_int

logger = logging.getLogger(__name__)

Factory = Callable[..., Backbone]
_FACTORIES: dict[str, Factory] = {}
#: name -> function(kwargs) -> the step between valid widths (e.g. transformer widths are multiples of num_heads)
_WIDTH_MULTIPLE: dict[str, Callable[[dict], int]] = {}
_MAX_WIDTH = 1 << 14


def register(name: str, *, width_multiple: Callable[[dict], int] | None = None) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(*, input_dim, output_dim, width, **kwargs)`` under ``name``.

    ``width_multiple(kwargs)`` tells ``build_matched`` which widths are valid (default: every positive int).
    """

    def decorator(factory: Factory) -> Factory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"backbone name {name!r} is already registered to {_FACTORIES[name]!r}")
        _FACTORIES[name] = factory
        _WIDTH_MULTIPLE[name] = width_multiple or (lambda kwargs: 1)
        return factory

    return decorator


def available() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_FACTORIES)


def _factory(name: str) -> Factory:
    if name not in _FACTORIES:
        raise ValueError(f"unknown backbone {name!r}; available backbones: {', '.join(available())}")
    return _FACTORIES[name]


def build(name: str, *, input_dim: int, output_dim: int, width: int = 128, **kwargs) -> Backbone:
    """Build the backbone ``name``; ``kwargs`` are backbone-specific (see each factory's docstring)."""
    factory = _factory(name)
    check_positive_int("input_dim", input_dim)
    check_positive_int("output_dim", output_dim)
    check_positive_int("width", width)
    return factory(input_dim=input_dim, output_dim=output_dim, width=width, **kwargs)


def num_params(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _count(name: str, width: int, input_dim: int, output_dim: int, kwargs: dict) -> int:
    with torch.device("meta"):  # counts without allocating or initialising real tensors
        return num_params(build(name, input_dim=input_dim, output_dim=output_dim, width=width, **kwargs))


def build_matched(name: str, *, target_params: int, input_dim: int, output_dim: int, **kwargs) -> Backbone:
    """Build ``name`` at the valid width whose parameter count is closest to ``target_params`` (``matched_width``)."""
    width = matched_width(name, target_params=target_params, input_dim=input_dim, output_dim=output_dim, **kwargs)
    model = build(name, input_dim=input_dim, output_dim=output_dim, width=width, **kwargs)
    logger.debug("build_matched(%s): width %d -> %d params (target %d)", name, width, num_params(model),
                 target_params)
    return model


def matched_width(name: str, *, target_params: int, input_dim: int, output_dim: int, **kwargs) -> int:
    """The valid width of ``name`` whose parameter count is closest to ``target_params``.

    Parameter counts grow with width, so the width is found by bisection over multiples of the backbone's
    width step; ties go to the smaller width.
    """
    _factory(name)
    check_positive_int("target_params", target_params)
    if "width" in kwargs:
        raise ValueError("build_matched chooses `width` itself; do not pass it")
    step = _WIDTH_MULTIPLE[name](kwargs)
    lo, hi = 1, _MAX_WIDTH // step  # search over k, width = k * step
    while lo < hi:  # smallest k with count(k) >= target
        mid = (lo + hi) // 2
        if _count(name, mid * step, input_dim, output_dim, kwargs) >= target_params:
            hi = mid
        else:
            lo = mid + 1
    candidates = [k for k in (lo - 1, lo) if k >= 1]
    best = min(candidates, key=lambda k: abs(_count(name, k * step, input_dim, output_dim, kwargs) - target_params))
    return best * step
