"""Shared fixtures. Tests run in float64 (derivative and oracle comparisons need it).

Compiled XLA executables go to a persistent cache for the session, so that the many
subprocess runs of the sweep app (kill and resume, launchers, figures, notebooks) and
tests that build the same computation again load it instead of compiling it. The cache
is keyed by the computation and the JAX version, so it changes no number; it lives in
a temporary folder removed at exit unless ``JAX_COMPILATION_CACHE_DIR`` is already set.
The tests compile with XLA's classic CPU emitters where the installed jaxlib has them
(:data:`CLASSIC_EMITTERS`), and with XLA's cheapest code generation (:data:`FAST_COMPILE`).
"""

import atexit
import os
import shutil
import tempfile

# XLA's classic CPU emitters, as the apps that write records use them
# (experiments.compiled.use_classic_emitters: the suite is mostly compilation of small
# programs, which they make about 1.35x faster, BENCHMARKS.md section 4d). Set
# XLA_FLAGS=--xla_cpu_use_fusion_emitters=true to test with XLA's default emitters.
from experiments.compiled import CLASSIC_EMITTERS, accepts_flags, use_classic_emitters, xla_flags  # noqa: E402

use_classic_emitters()

# XLA's cheapest code generation (LLVM at -O0, its expensive passes off), for the tests and
# their subprocesses: compiling small programs is most of the suite, and this compiles them
# about 3x faster (the whole suite 1.2-1.5x faster on 2 cores in two runs, BENCHMARKS.md
# section 4k) at the price of slower compiled loops. The apps keep XLA's optimisation, so the
# suite checks the same code at another optimisation level: numbers agree to rounding, not
# bit for bit, with records the apps write (and a record's code version includes these flags,
# experiments.compiled.other_flags, so the two never pass for each other). Set
# XLA_FLAGS=--xla_backend_optimization_level=3 to test with the apps' setting (the suite
# passes with both); a setting of either flag in XLA_FLAGS is left alone.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
_FAST_PROBED = "WHICHPAIRS_TESTS_FAST_COMPILE"  # the probe's answer, "1" or "0", for pytest-xdist's workers


def _fast_compile_accepted() -> bool:
    """Whether the jaxlib accepts :data:`FAST_COMPILE`, probed once a test run (a child process)."""
    if os.environ.get(_FAST_PROBED) not in ("0", "1"):
        os.environ[_FAST_PROBED] = "1" if accepts_flags(FAST_COMPILE) else "0"
    return os.environ[_FAST_PROBED] == "1"


if not xla_flags().keys() & {flag.partition("=")[0] for flag in FAST_COMPILE.split()} and _fast_compile_accepted():
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE).strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="jax-cache-tests-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
# Inherited by subprocesses; small and fast compilations are cached too.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update(
    "jax_persistent_cache_min_entry_size_bytes",
    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
)


def pytest_runtest_teardown(item, nextitem):
    """Clear JAX's compiled code once a worker maps half the kernel's limit of memory maps
    (``vm.max_map_count``, 65,530 here): every compiled executable holds some, a worker runs about
    450 tests, and past the limit XLA's next compilation or cache write segfaulted the worker (two
    fresh-clone runs of 887 tests, in fit_newton's first compilations of two different tests). The
    apps do the same after each cell (``experiments.compiled.release_compiled``)."""
    from experiments.compiled import release_compiled

    release_compiled(0.5)


def pytest_report_header(config):
    flags = os.environ.get("XLA_FLAGS", "")
    used = CLASSIC_EMITTERS in flags
    fast = FAST_COMPILE in flags
    return (f"XLA_FLAGS: {flags or '(none)'} ({'classic CPU emitters' if used else 'XLA default emitters'}; "
            f"{'LLVM -O0, as the suite sets it' if fast else 'the optimisation level XLA_FLAGS gives'})")


@pytest.fixture
def rng():
    """A seeded numpy generator for building test instances (not for model randomness)."""
    return np.random.default_rng(20261123)


def random_pool(rng, m=4, k=5, d=3, pad=True, concentration=1.0):
    """A random padded pool: features [m,K,d], log_ref [m,K] (normalised), rho [m]."""
    feats = rng.normal(size=(m, k, d))
    logits = concentration * rng.normal(size=(m, k))
    if pad:
        sizes = rng.integers(2, k + 1, size=m)
        present = np.arange(k)[None, :] < sizes[:, None]
        logits = np.where(present, logits, -np.inf)
        feats = np.where(present[..., None], feats, 0.0)
    log_ref = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    rho = rng.dirichlet(np.ones(m))
    return feats, log_ref, rho
