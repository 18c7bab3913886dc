"""Parameter checks: one ``check(name, value)`` per parameter name, raising
``ValueError`` naming ``design.params.<name>`` and the allowed values."""

from __future__ import annotations

from typing import Callable

import numpy as np

from synthetic.rounding import ROUNDINGS

__all__ = ["PARAM_CHECKS", "choice_check", "interval_check", "integer_check"]


def _fail(name, allowed, value):
    raise ValueError(f"design.params.{name} must be {allowed}, got {value!r}")


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and np.isfinite(value)


def choice_check(*allowed):
    """A check that the value is one of ``allowed``."""

    def check(name, value):
        if value not in allowed:
            _fail(name, f"one of {list(allowed)}", value)

    return check


def interval_check(lo, hi, lo_open=True, hi_open=True, optional=False):
    """A check that the value is a finite number in the interval (``None`` too if ``optional``)."""
    lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
    text = f"in {lb}{lo:g}, {hi:g}{rb}" + (" or null" if optional else "")

    def check(name, value):
        if optional and value is None:
            return
        ok = _is_number(value) and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        if not ok:
            _fail(name, text, value)

    return check


def integer_check(lo, optional=False, null_means=""):
    """A check that the value is an integer ``>= lo`` (``None`` too if ``optional``)."""
    text = (f"null ({null_means}) or " if optional else "") + f"an integer >= {lo}"

    def check(name, value):
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            _fail(name, text, value)

    return check


def _cap_check(name, value):
    if value is None or (isinstance(value, str) and value == "auto"):
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        _fail(name, "null (unlimited), 'auto' (1 when budget <= number of edges, else unlimited) or an integer >= 1", value)


def _bool_check(name, value):
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, "true or false", value)


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
    "pilot_ridge": interval_check(0.0, np.inf, lo_open=False),
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
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _check_fraction(name, value, lo=0.0, hi=1.0, lo_open=True, hi_open=True):
    ok = isinstance(value, (int, float)) and np.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}")

