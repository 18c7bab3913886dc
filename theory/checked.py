"""One validation layer: :func:`checked` turns a kernel into a checked public function.

A public function of :mod:`theory` is a kernel (usually ``jax.jit``-compiled, exported
as ``<name>_kernel``, unchecked) wrapped by :func:`checked`, which validates every
argument named in its specs *before* the kernel runs and raises ``ValueError`` naming
the argument and what is allowed::

    @checked(theta="[d] finite", diffs="[E, d] finite", weights="[E] probability",
             beta="number > 0")
    def information_matrix(theta, diffs, weights, beta):
        return information_matrix_kernel(theta, diffs, weights, beta)

Specs (one string per argument, checked in the order they are given):

* arrays: ``"[m, K, d]"`` then optional words. Dimension names are shared by all
  arguments of one call: the first argument that shows a dimension fixes it and a
  later one that disagrees is named in the error (``"diffs must have shape [E, d] with
  d = 2 columns to match theta ..."``); every dimension must be ``>= 1``. Words:
  ``float`` (the default: real numbers, float or integer dtype; integers reach the kernel
  as the default float dtype), ``int`` (integer
  dtype), ``finite`` (no NaN or inf), ``logprob`` (log-probabilities, ``-inf`` for an
  absent entry, each row with at least one finite entry), ``probability`` (finite,
  ``>= 0``, sums to 1), ``symmetric`` (finite and symmetric), ``psd`` (finite, symmetric and
  positive semi-definite at the symmetry test's tolerance);
* scalars: ``"number"``, ``"int"`` or ``"bool"``, optionally followed by a bound
  ``> x`` or ``>= x``, or by an interval ``in [a, b)`` (brackets ``[`` ``]`` closed,
  ``(`` ``)`` open; ``inf`` allowed; the message writes ``a`` and ``b`` as given), and
  by ``as float`` (the kernel then receives ``float(value)``);
* choices: ``"one of L, A, D"`` (the value must equal one of the listed strings);
* any kind prefixed by ``optional`` also accepts ``None``.

The same specs check configuration values (the sweep's keys, a design's parameters):
``check_argument(..., config=True)`` writes ``None`` as ``null`` and booleans as
``true``/``false`` in its messages, as a YAML file or a Hydra override spells them.

Shapes and dtypes are checked always, so they hold under ``jax.jit`` and ``jax.vmap``;
values (finiteness, signs, sums, bounds) need concrete arrays and are checked only in
eager calls (``theory/_validation.py``, README "Checks under jit and vmap").

The wrapper keeps the kernel's signature and docstring (``functools.wraps``) and
exposes ``wrapper.specs`` (the spec strings) and ``wrapper.kernel`` (the unchecked
function it calls).
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import types
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from theory import _validation as V

__all__ = ["Spec", "parse_spec", "one_of", "checked", "check_argument", "is_checked"]

_VALUE_WORDS = ("finite", "logprob", "probability", "symmetric", "psd")
_ARRAY_KINDS = {"float": "fiu", "int": "iu"}
# What an empty dimension means, where the message has a fixed wording callers rely on.
_EMPTY = {"E": "is empty: there are no edges (E = 0); a design needs at least one edge"}


@dataclass(frozen=True)
class Spec:
    """A parsed argument spec (see the module docstring for the grammar)."""

    text: str
    optional: bool
    dims: tuple[str, ...] | None  # None for a scalar
    kind: str  # arrays: "float" | "int"; scalars: "number" | "int" | "bool"; "choice"
    values: tuple[str, ...] = ()
    op: str | None = None  # ">" or ">="
    bound: float | None = None
    as_float: bool = False
    choices: tuple[str, ...] = ()
    interval: tuple[str, str, str, str] | None = None  # (left bracket, a, b, right bracket) as written
    ends: tuple[float, float] | None = None  # the interval's ends as numbers

    @property
    def is_array(self) -> bool:
        return self.dims is not None


def one_of(values) -> str:
    """The spec ``"one of a, b, c"`` for these strings (in their order). A value that is not
    a non-empty string without commas or surrounding spaces cannot be written in a spec and
    is a ``TypeError`` (e.g. a design registered under such a name)."""
    values = tuple(values)
    bad = [v for v in values if not isinstance(v, str) or not v or "," in v or v != v.strip()]
    if bad or not values:
        raise TypeError(f"one_of: choices must be non-empty strings without commas or surrounding spaces, got {bad or values!r}")
    return "one of " + ", ".join(values)


def parse_spec(text: str) -> Spec:
    """Parse one spec string; a malformed spec is a ``TypeError`` (a programming error)."""
    if not isinstance(text, str):
        raise TypeError(f"a spec must be a string, got {text!r}")
    rest = text.strip()
    optional = rest.startswith("optional ")
    if optional:
        rest = rest[len("optional "):].strip()
    if rest.startswith("one of "):
        choices = tuple(c.strip() for c in rest[len("one of "):].split(",") if c.strip())
        if not choices:
            raise TypeError(f"spec {text!r}: 'one of' needs at least one choice")
        return Spec(text, optional, None, "choice", choices=choices)
    arr = re.fullmatch(r"\[([^\]]*)\]\s*(.*)", rest)
    if arr:
        dims = tuple(x.strip() for x in arr.group(1).split(",") if x.strip())
        if not dims or not all(re.fullmatch(r"[A-Za-z_]\w*", x) for x in dims):
            raise TypeError(f"spec {text!r}: dimensions must be names, e.g. [m, K, d]")
        words = arr.group(2).split()
        kind = "float"
        if words and words[0] in _ARRAY_KINDS:
            kind, words = words[0], words[1:]
        bad = [w for w in words if w not in _VALUE_WORDS]
        if bad:
            raise TypeError(f"spec {text!r}: unknown words {bad}; allowed {list(_ARRAY_KINDS) + list(_VALUE_WORDS)}")
        return Spec(text, optional, dims, kind, tuple(words))
    iv = re.fullmatch(r"(number|int)\s+in\s+([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])(\s+as float)?", rest)
    if iv:
        kind, left, a, b, right, as_float = iv.groups()
        try:
            lo, hi = float(a), float(b)
        except ValueError:
            lo = hi = math.nan
        if math.isnan(lo) or math.isnan(hi) or "_" in a + b:
            raise TypeError(f"spec {text!r}: interval ends must be numbers (inf allowed)")
        if not (lo <= hi if left == "[" and right == "]" else lo < hi) or (kind == "int" and not all(
                math.isinf(x) or x.is_integer() for x in (lo, hi))):
            raise TypeError(f"spec {text!r}: empty interval or non-integer ends for an int")
        return Spec(text, optional, None, kind, as_float=bool(as_float), interval=(left, a, b, right), ends=(lo, hi))
    sc = re.fullmatch(r"(number|int|bool)(?:\s*(>=|>)\s*(\S+))?(\s+as float)?", rest)
    if not sc:
        raise TypeError(
            f"spec {text!r}: expected '[dims] words', 'number|int|bool [> x | >= x | in [a, b)] [as float]' or 'one of a, b'"
        )
    kind, op, bound, as_float = sc.groups()
    if kind == "bool" and (op or as_float):
        raise TypeError(f"spec {text!r}: a bool takes no bound")
    return Spec(text, optional, None, kind, (), op, float(bound) if bound else None, bool(as_float))


# ------------------------------------------------------------------ the checks


def _axis_word(axis: int, rank: int) -> str:
    if rank == 1:
        return "entries"
    if rank == 2:
        return ("rows", "columns")[axis]
    return f"on axis {axis}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _check_array(name: str, x, spec: Spec, dims: dict) -> None:
    shape = tuple(np.shape(x))
    want = ", ".join(spec.dims)
    if len(shape) != len(spec.dims):
        raise ValueError(f"{name} must have shape [{want}], got shape {list(shape)}")
    new = {}
    for axis, (dim, size) in enumerate(zip(spec.dims, shape)):
        known = dims.get(dim) or new.get(dim)
        if known is not None and known[0] != size:
            src = "its axis %d" % known[2] if known[1] == name else f"{known[1]} (shape {list(known[3])})"
            raise ValueError(
                f"{name} must have shape [{want}] with {dim} = {known[0]} {_axis_word(axis, len(shape))} "
                f"to match {src}, got shape {list(shape)}"
            )
        if known is None:
            new[dim] = (size, name, axis, shape)
    if 0 in shape:
        dim = spec.dims[shape.index(0)]
        if dim in _EMPTY:
            raise ValueError(f"{name} {_EMPTY[dim]}")
        raise ValueError(f"{name} must have {', '.join(spec.dims)} >= 1, got shape {list(shape)}")
    dtype = np.dtype(getattr(x, "dtype", None) or np.asarray(x).dtype)
    if dtype.kind not in _ARRAY_KINDS[spec.kind]:
        what = "real numbers (a float or integer dtype)" if spec.kind == "float" else "integers (an integer dtype)"
        raise ValueError(f"{name} must hold {what}, got dtype {dtype}")
    dims.update(new)
    if not spec.values or not V.is_concrete(x):
        return
    a = np.asarray(x)
    for word in spec.values:
        if word == "finite" and not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite (no NaN or inf)")
        if word == "logprob":
            V.check_log_ref_values(a, name)
        if word == "probability":
            V.check_probability_values(a, name)
        if word == "symmetric":
            V.check_symmetric_values(a, name)
        if word == "psd":
            V.check_psd_values(a, name)


def _check_scalar(name: str, x, spec: Spec, config: bool = False, null_means: str = ""):
    null = ("null" if config else "None") + (f" ({null_means})" if null_means else "")
    none = f"{null} or " if spec.optional else ""
    if spec.kind == "choice":
        if not (isinstance(x, str) and x in spec.choices):
            raise ValueError(f"{name} must be {none}one of {list(spec.choices)}, got {x!r}")
        return x
    shape = tuple(np.shape(x))
    if shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {list(shape)}")
    if spec.kind == "bool":
        if not isinstance(x, (bool, np.bool_)):
            raise ValueError(f"{name} must be {none}{'true or false' if config else 'True or False'}, got {x!r}")
        return x
    fail = f"{name} must be {none}{_allowed_text(spec)}, got {x!r}"
    if spec.kind == "int":
        if isinstance(x, (bool, np.bool_)) or not (
            isinstance(x, (int, np.integer)) or np.dtype(getattr(x, "dtype", np.float64)).kind in "iu"
        ):
            raise ValueError(fail)
    else:
        dtype = getattr(x, "dtype", None)
        if isinstance(x, (bool, np.bool_)) or (dtype is not None and np.dtype(dtype).kind not in "fiu"):
            raise ValueError(fail)
        if dtype is None and not isinstance(x, (int, float, np.integer, np.floating)):
            raise ValueError(fail)
    if not V.is_concrete(x):
        return x
    v = float(x)
    if spec.interval is not None:
        (left, _, _, right), (lo, hi) = spec.interval, spec.ends
        ok = (v > lo if left == "(" else v >= lo) and (v < hi if right == ")" else v <= hi)
    else:
        ok = spec.op is None or (v > spec.bound if spec.op == ">" else v >= spec.bound)
    if not (math.isfinite(v) and ok):
        raise ValueError(fail)
    return v if spec.as_float else x


def _allowed_text(spec: Spec) -> str:
    """What a scalar spec allows, as its error message says it: ``a finite number > 0``,
    ``an integer >= 1``, ``in (0, 1)`` (an interval of numbers), ``an integer in [1, 9]``."""
    if spec.interval is not None:
        left, a, b, right = spec.interval
        return ("an integer in" if spec.kind == "int" else "in") + f" {left}{a}, {b}{right}"
    what = "an integer" if spec.kind == "int" else "a finite number"
    return what + (f" {spec.op} {_fmt(spec.bound)}" if spec.op else "")


def check_argument(name: str, value, spec: Spec | str, dims: dict | None = None, *, config: bool = False,
                   null_means: str = ""):
    """Check one argument against its spec; returns the value the kernel receives.

    ``dims`` (name -> size and where it came from) is shared across the arguments
    of one call; pass ``None`` for a single check. ``config=True``: the value is a
    configuration setting, and the message spells ``null``, ``true`` and ``false``;
    ``null_means`` says in the message what an optional value's ``None`` stands for.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if value is None and spec.optional:
        return None
    if spec.is_array:
        _check_array(name, value, spec, {} if dims is None else dims)
        if spec.kind == "float" and np.dtype(getattr(value, "dtype", None) or np.asarray(value).dtype).kind in "biu":
            # integers for reals: the kernel gets the default float dtype (kernels that take a dtype from their
            # inputs, e.g. uniform prompt weights 1/m, made every pool quantity 0 from int64 features)
            import jax.numpy as jnp

            return jnp.asarray(value).astype(jnp.result_type(float))
        return value
    return _check_scalar(name, value, spec, config, null_means)


# -------------------------------------------------------------- the decorator


def checked(**specs: str) -> Callable[[Callable], Callable]:
    """Decorator: validate the named arguments (in the order given), then call the kernel.

    Arguments without a spec are passed through unchecked. Specs are parsed once, at
    decoration; a spec for an argument the kernel does not take is a ``TypeError``.
    """
    parsed = {name: parse_spec(text) for name, text in specs.items()}

    def decorate(kernel: Callable) -> Callable:
        sig = inspect.signature(kernel)
        unknown = [n for n in parsed if n not in sig.parameters]
        if unknown:
            raise TypeError(f"checked: specs for {unknown}, which {getattr(kernel, '__name__', kernel)} does not take")

        @functools.wraps(kernel)
        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            dims: dict[str, Any] = {}
            for name, spec in parsed.items():
                arguments[name] = check_argument(name, arguments[name], spec, dims)
            return kernel(*bound.args, **bound.kwargs)

        wrapper.specs = types.MappingProxyType(dict(specs))
        wrapper.kernel = kernel
        return wrapper

    return decorate


def is_checked(fn) -> bool:
    """True for a function made by :func:`checked`."""
    return callable(fn) and isinstance(getattr(fn, "specs", None), types.MappingProxyType) and callable(getattr(fn, "kernel", None))
