"""Parameter checks: one ``check(name, value)`` per parameter name, raising
``ValueError`` naming ``design.params.<name>`` and the allowed values.

The checks are specs of the one validation layer (:mod:`theory.checked`) worded as
configuration; only the cap (``null``, ``'auto'`` or an integer) has its own function."""

from __future__ import annotations

from typing import Callable

import numpy as np

from synthetic.rounding import ROUNDINGS
from theory.checked import check_argument, one_of, parse_spec

__all__ = ["PARAM_CHECKS", "spec_check", "choice_check", "interval_check", "integer_check"]


def _fail(name, allowed, value):
    raise ValueError(f"design.params.{name} must be {allowed}, got {value!r}")


def spec_check(spec: str, null_means: str = "") -> Callable:
    """A check ``check(name, value)`` of ``design.params.<name>`` against a spec of the one
    validation layer (:func:`theory.checked.check_argument`, e.g. ``"number in (0, 1)"``,
    ``"optional int >= 1"``, ``"one of a, b"``, ``"bool"``), worded as configuration
    (``null``, ``true``/``false``). The spec is parsed once, here."""
    parsed = parse_spec(spec)

    def check(name, value):
        check_argument(f"design.params.{name}", value, parsed, config=True, null_means=null_means)

    return check


def choice_check(*allowed):
    """A check that the value is one of ``allowed`` (strings)."""
    return spec_check(one_of(allowed))


def interval_check(lo, hi, lo_open=True, hi_open=True, optional=False):
    """A check that the value is a finite number in the interval (``None`` too if ``optional``)."""
    lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
    return spec_check(f"{'optional ' if optional else ''}number in {lb}{_end(lo)}, {_end(hi)}{rb}")


def _end(x) -> str:
    """An interval end as the message writes it: ``0``, ``inf``, ``0.25`` (``:g``), exact
    (the spec compares against this text, so ``:g`` is used only where it is exact)."""
    text = f"{x:g}"
    return text if float(text) == float(x) else repr(float(x))


def integer_check(lo, optional=False, null_means=""):
    """A check that the value is an integer ``>= lo`` (``None`` too if ``optional``)."""
    return spec_check(f"{'optional ' if optional else ''}int >= {lo}", null_means if optional else "")


def _cap_check(name, value):
    if value is None or (isinstance(value, str) and value == "auto"):
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        _fail(name, "null (unlimited), 'auto' (1 when budget <= number of edges, else unlimited) or an integer >= 1", value)


_bool_check = spec_check("bool")


#: The check of each parameter name the registered designs use. A design may
#: override one with ``register_design(..., checks={name: fn})`` (e.g. ``at``, whose
#: allowed values differ by design). ``fn(name, value)`` raises ``ValueError``.
PARAM_CHECKS: dict[str, Callable] = {
    "rounding": choice_check(*ROUNDINGS),
    "max_labels_per_edge": _cap_check,
    "prior_precision": interval_check(0.0, np.inf, lo_open=False, optional=True),
    "ridge": interval_check(0.0, np.inf, lo_open=False),
    "tol": interval_check(0.0, np.inf),
    "pilot_fraction": interval_check(0.0, 1.0),
    "pilot_ridge": interval_check(0.0, np.inf),  # > 0: a small pilot's unpenalised MLE often does not exist
    "gamma": interval_check(0.0, np.inf),
    "with_replacement": _bool_check,
    "num_pairs": integer_check(1, optional=True, null_means="min(budget, number of edges)"),
    "reward": choice_check("proxy", "pilot"),
    "correlation": interval_check(-1.0, 1.0, lo_open=False, hi_open=False),
    "num_samples": integer_check(1),
    "fraction": interval_check(0.0, 1.0, hi_open=False),
    "at": choice_check("reference", "truth", "pilot"),
}

def _check_choice(name, value, allowed):
    """A function argument that must be one of ``allowed`` (strings); the message names ``name``."""
    check_argument(name, value, one_of(allowed))


def _check_fraction(name, value, lo=0.0, hi=1.0, lo_open=True, hi_open=True):
    """A function argument that must be a finite number in the interval; the message names ``name``."""
    check_argument(name, value, f"number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")
