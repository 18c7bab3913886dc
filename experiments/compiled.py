"""Keep a long process under the kernel's limit on memory maps of compiled code.

Every executable XLA compiles for the CPU is mapped into the process by LLVM's JIT in
about 15 separate regions, and JAX keeps every executable of every shape for the life
of the process. Linux caps a process's mapped regions at ``vm.max_map_count`` (65,530 by
default): past about 4,000 executables, the next compilation fails with ``LLVM
compilation error: Cannot allocate memory`` and the process dies. The full figure set
in one process (``python -m experiments.figures`` from empty records) reached it in
Figure 6 after Figures 1-5 (2026-11-27); so can any long sweep run by the basic
launcher, which computes its cells in one process.

:func:`release_compiled` clears JAX's caches of compiled code (``jax.clear_caches``)
once the process holds more than half the limit; the next calls recompile what they
need. Compilation is deterministic, so numbers do not change. The sweep calls it after
each cell, and the figure script after each figure and each cached item.

:func:`use_classic_emitters` makes a process and the processes it starts compile with
XLA's classic CPU emitters (:data:`CLASSIC_EMITTERS`) where the installed jaxlib has them:
the apps that write records (the sweep, the items app, the figures command and its
workers) and the test suite call it before their first computation.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax

from theory.checked import check_argument

__all__ = ["CLASSIC_EMITTERS", "accepts_flags", "classic_emitters_if_fresh", "emitters", "other_flags", "mapped_regions", "xla_flags", "max_map_count", "release_compiled", "use_classic_emitters"]

log = logging.getLogger(__name__)


def mapped_regions() -> int:
    """Memory-mapped regions of this process (``/proc/self/maps``); 0 where the system has no such file."""
    try:
        with open("/proc/self/maps", "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


def max_map_count(default: int = 65530) -> int:
    """The kernel's limit on a process's mapped regions (``vm.max_map_count``), or ``default``."""
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return default


def release_compiled(fraction: float = 0.5) -> bool:
    """Clear JAX's compiled-code caches if this process maps more than ``fraction`` of the limit.

    Returns:
      whether the caches were cleared.
    """
    check_argument("fraction", fraction, "number in (0, 1]")
    used, limit = mapped_regions(), max_map_count()
    if used <= fraction * limit:
        return False
    jax.clear_caches()
    gc.collect()
    log.info("cleared JAX's compiled code: %d of the %d memory maps allowed were in use, %d now", used, limit, mapped_regions())
    return True


#: XLA's classic CPU emitters instead of its newer fusion emitters. On these 2-core CPUs
#: most of a record's time is compiling its programs, which this makes 1.5-1.75x faster
#: (BENCHMARKS.md sections 4d and 4i: the test suite 1.35x; two of the figure set's tasks
#: 1.20x and 1.45x, its records 1.27-1.36x in two runs against one). Computed values agree to the
#: last bit or within a few ulps, but where a capped design's rounded allocation is nearly
#: tied a few ulps in the solver can move a label, and then the Monte-Carlo numbers move
#: within their error. So a record's numbers depend on this setting: it is part of every
#: record's code version (:func:`experiments.cell.code_version`, through :func:`emitters`)
#: and every app that writes records sets it.
CLASSIC_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
_FLAG = "--xla_cpu_use_fusion_emitters"

#: Environment variable holding the probe's answer, ``"<jaxlib version>:1"`` (this jaxlib
#: accepts the flag) or ``":0"``, so that the processes a process starts do not probe again.
_PROBED = "WHICHPAIRS_XLA_CLASSIC_EMITTERS"


def xla_flags() -> dict[str, str]:
    """``XLA_FLAGS`` as ``{name: its last setting}``, e.g. ``{"--xla_cpu_use_fusion_emitters":
    "--xla_cpu_use_fusion_emitters=false"}`` (XLA keeps a flag's last setting)."""
    return {tok.partition("=")[0]: tok for tok in os.environ.get("XLA_FLAGS", "").split()}


def _setting() -> str | None:
    """The CPU emitters ``XLA_FLAGS`` sets (its last setting of the flag), or ``None``."""
    tok = xla_flags().get(_FLAG)
    if tok is None:
        return None
    return "classic" if tok.partition("=")[2].strip().lower() in ("false", "0") else "default"


def emitters() -> str:
    """``"classic"`` or ``"default"``: the CPU emitters ``XLA_FLAGS`` asks for (no setting means
    XLA's default). :func:`use_classic_emitters` changes ``XLA_FLAGS`` only before JAX starts its
    backend (or to make the processes it starts match this one), so this is what the process
    compiles with."""
    return _setting() or "default"


def other_flags() -> tuple[str, ...]:
    """The settings in ``XLA_FLAGS`` other than the CPU emitters' (which :func:`emitters`
    reports), one ``--name=value`` per flag (its last setting), sorted by name; ``()`` where
    there are none, as for the apps run without ``XLA_FLAGS``.

    Part of every record's code version (:func:`experiments.cell.code_version`): a flag such
    as ``--xla_backend_optimization_level`` changes the compiled code and so, by rounding, a
    capped design's nearly tied allocation, as the emitters do. Flags that change no number
    (a dump folder) also give a new version: a needless recomputation, never a mix. A
    ``--flagfile`` is seen by its name, not its contents.
    """
    flags = xla_flags()
    return tuple(flags[name] for name in sorted(flags) if name != _FLAG)


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without this (private) query: assume too late
        log.warning("cannot tell whether JAX's backend has started (jax._src.xla_bridge.backends_are_initialized is gone): "
                    "XLA's default CPU emitters are kept")
        return True


def classic_emitters_if_fresh() -> None:
    """:func:`use_classic_emitters` where this process has not computed yet; otherwise nothing, not even
    the environment the processes it starts inherit (a summary read in a notebook that has computed
    must not switch the sweeps it launches afterwards to XLA's default emitters)."""
    if not _backends_initialized():
        use_classic_emitters()


def accepts_flags(extra: str) -> bool:
    """Whether a child process with ``extra`` added to ``XLA_FLAGS`` compiles and runs a program
    (XLA aborts the process on a flag it does not know, so it cannot be tried here)."""
    flags = (os.environ.get("XLA_FLAGS", "") + " " + extra).strip()
    probe = "import jax, jax.numpy as jnp; jax.jit(lambda x: jnp.exp(x).sum())(jnp.ones(3)).block_until_ready()"
    try:
        return subprocess.run([sys.executable, "-c", probe], env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
                              capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _supported() -> bool:
    """Whether the installed jaxlib accepts :data:`CLASSIC_EMITTERS` (probed once a jaxlib, the
    answer kept in the environment). A probe that fails without the flag too says nothing
    (a warning; tried again at the next call)."""
    import jaxlib

    version = jaxlib.__version__
    got_version, _, answer = os.environ.get(_PROBED, "").rpartition(":")
    if got_version == version and answer in ("0", "1"):
        return answer == "1"
    if accepts_flags(CLASSIC_EMITTERS):
        answer = "1"
    elif accepts_flags(""):
        answer = "0"
        log.info("jaxlib %s does not accept %s: XLA's default CPU emitters", version, CLASSIC_EMITTERS)
    else:
        log.warning("a child process could not run JAX to try %s: XLA's default CPU emitters for now", CLASSIC_EMITTERS)
        return False
    os.environ[_PROBED] = f"{version}:{answer}"
    return answer == "1"


def use_classic_emitters() -> bool:
    """Compile with :data:`CLASSIC_EMITTERS` in this process and the processes it starts, where
    the installed jaxlib accepts it; returns whether this process compiles with them.

    Call it before the first JAX computation: XLA reads its flags when JAX starts its CPU
    backend. A process whose backend has started without a setting keeps XLA's default
    emitters, and then the flag is set to the default explicitly for the processes it
    starts, so that one run never mixes the two. A setting of the emitters already in
    ``XLA_FLAGS`` (the user's) is left alone. The first call tries the flag in a child
    process (about 2 s) and keeps the answer in the environment for later calls and children.
    """
    setting = _setting()
    if setting is not None:
        return setting == "classic"
    if not _supported():
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if _backends_initialized():
        os.environ["XLA_FLAGS"] = (flags + " " + _FLAG + "=true").strip()  # what this process has: its children match it
        return False
    os.environ["XLA_FLAGS"] = (flags + " " + CLASSIC_EMITTERS).strip()
    return True
