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

__all__ = ["CLASSIC_EMITTERS", "mapped_regions", "max_map_count", "release_compiled", "use_classic_emitters"]

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
#: most of a record's time is compiling its programs, which this makes 1.4-1.7x faster
#: (BENCHMARKS.md sections 4d and 4i: the test suite 1.35x, the figure set's records
#: 1.2-1.45x a task). Computed values agree to the last bit or within a few ulps; where a
#: capped design's rounded allocation is nearly tied, a few ulps in the solver can move a
#: label (then the Monte-Carlo numbers move within their error). The numbers of a record
#: therefore depend on this setting: every app that writes records uses it.
CLASSIC_EMITTERS = "--xla_cpu_use_fusion_emitters=false"

#: Environment variable holding the probe's answer ("1": this jaxlib accepts the flag, "0":
#: it does not), so that the processes a process starts do not probe again.
_PROBED = "WHICHPAIRS_XLA_CLASSIC_EMITTERS"


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without this (private) query: assume too late
        return True


def _accepts(flags: str) -> bool:
    """Whether a child process with ``XLA_FLAGS=flags`` compiles and runs a program (XLA aborts
    the process on a flag it does not know, so it cannot be tried here)."""
    probe = "import jax, jax.numpy as jnp; jax.jit(lambda x: jnp.exp(x).sum())(jnp.ones(3)).block_until_ready()"
    try:
        return subprocess.run([sys.executable, "-c", probe], env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
                              capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def use_classic_emitters() -> bool:
    """Add :data:`CLASSIC_EMITTERS` to ``XLA_FLAGS`` (this process and every process it starts)
    if the installed jaxlib accepts it; returns whether this process compiles with them.

    Call it before the first JAX computation: XLA reads its flags when JAX creates its CPU
    backend, so a process whose backend exists keeps what it started with (returns whether
    that included the flag). A setting of the emitters already in ``XLA_FLAGS`` (the user's)
    is left alone. The first call tries the flag in a child process (about 2 s) and leaves
    the answer in the environment for the processes started later.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_use_fusion_emitters" in flags or _backends_initialized():
        return CLASSIC_EMITTERS in flags.split()
    if os.environ.get(_PROBED) not in ("0", "1"):
        os.environ[_PROBED] = "1" if _accepts((flags + " " + CLASSIC_EMITTERS).strip()) else "0"
    if os.environ[_PROBED] == "0":
        return False
    os.environ["XLA_FLAGS"] = (flags + " " + CLASSIC_EMITTERS).strip()
    return True
