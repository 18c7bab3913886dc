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
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import jax

from theory.checked import check_argument

__all__ = ["mapped_regions", "max_map_count", "release_compiled"]

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
