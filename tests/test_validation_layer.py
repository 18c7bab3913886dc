"""The validation layer (theory/checked.py): one decorator, public kernels, shape annotations.

The decorator is checked on a kernel that records its calls (a bad argument raises
ValueError naming it and the kernel never runs); the public API is checked by
introspection (every array-taking function of ``theory.__all__`` is a checked wrapper
whose specs agree with its jaxtyping annotations); wrapper and kernel agree bit for
bit on valid input; the value checks give the messages of the older helpers of
``theory/_validation.py``, which serve as the reference.
"""

import inspect
import re
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from theory import _validation as V
from theory import bounds, information, policy, second_order
from theory.checked import check_argument, checked, is_checked, one_of, parse_spec

RNG = np.random.default_rng(0)
F = RNG.normal(size=(2, 3, 2))
L = np.log(np.full((2, 3), 1 / 3))
D = F[:, 0] - F[:, 1]
W = np.array([0.25, 0.75])
T = np.array([0.3, -0.2])


def recorder(**specs):
    calls = []

    @checked(**specs)
    def kernel(features, log_ref, n=1, scale=1.0, flag=False, rho=None):
        calls.append((features, log_ref, n, scale, flag, rho))
        return "ran"

    return kernel, calls


SPECS = dict(features="[m, K, d] float finite", log_ref="[m, K] logprob", n="int >= 1", scale="number > 0 as float",
             flag="bool", rho="optional [m] probability")

BAD = {
    "shape mismatch": (dict(log_ref=np.zeros((2, 4))), r"^log_ref must have shape \[m, K\] with K = 3 columns to match features"),
    "wrong rank": (dict(features=np.zeros((2, 3))), r"^features must have shape \[m, K, d\], got shape \[2, 3\]"),
    "empty dimension": (dict(features=np.zeros((2, 3, 0))), r"^features must have m, K, d >= 1"),
    "complex dtype": (dict(features=np.zeros((2, 3, 2), complex)), r"^features must hold real numbers"),
    "string dtype": (dict(features=np.full((2, 3, 2), "a")), r"^features must hold real numbers"),
    "NaN": (dict(features=np.where(F > 0, np.nan, F)), r"^features must be finite"),
    "log_ref +inf": (dict(log_ref=np.full((2, 3), np.inf)), r"^log_ref must be finite log-probabilities or -inf"),
    "empty prompt": (dict(log_ref=np.full((2, 3), -np.inf)), r"^log_ref: prompts \[0, 1\] have no completion"),
    "integer below range": (dict(n=0), r"^n must be an integer >= 1, got 0"),
    "float for integer": (dict(n=2.5), r"^n must be an integer >= 1, got 2.5"),
    "bool for integer": (dict(n=True), r"^n must be an integer >= 1, got True"),
    "number not positive": (dict(scale=0.0), r"^scale must be a finite number > 0, got 0.0"),
    "number nan": (dict(scale=float("nan")), r"^scale must be a finite number > 0"),
    "number as string": (dict(scale="1"), r"^scale must be a finite number > 0, got '1'"),
    "array for scalar": (dict(scale=np.ones(2)), r"^scale must be a scalar, got shape \[2\]"),
    "not a bool": (dict(flag=1), r"^flag must be True or False, got 1"),
    "optional wrong shape": (dict(rho=np.ones(3) / 3), r"^rho must have shape \[m\] with m = 2 entries to match features"),
    "optional not summing to one": (dict(rho=np.array([0.7, 0.7])), r"^rho must sum to 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_argument_is_named_before_the_kernel_runs(case):
    kernel, calls = recorder(**SPECS)
    change, message = BAD[case]
    args = dict(features=F, log_ref=L) | change
    with pytest.raises(ValueError, match=message):
        kernel(**args)
    assert calls == []
    assert kernel(F, L) == "ran" and len(calls) == 1  # the same kernel runs on valid input


def test_valid_arguments_reach_the_kernel_unchanged_except_as_float():
    kernel, calls = recorder(**SPECS)
    rho = np.array([0.5, 0.5])
    kernel(F, L, 3, 2, True, rho)
    features, log_ref, n, scale, flag, got_rho = calls[0]
    assert features is F and log_ref is L and got_rho is rho and flag is True
    assert n == 3 and type(n) is int
    assert scale == 2.0 and type(scale) is float  # "as float" converts ...
    kernel(F, L, np.int64(4), np.float32(0.5))
    assert type(calls[1][2]) is np.int64  # ... and nothing else does


def test_checks_run_in_the_order_given_so_the_later_argument_is_named():
    # a width mismatch names the argument checked second, whichever comes first in the signature
    @checked(theta="[d]", diffs="[E, d]")
    def f(diffs, theta):
        return 0

    with pytest.raises(ValueError, match=r"^diffs must have shape \[E, d\] with d = 2 columns to match theta \(shape \[2\]\)"):
        f(np.zeros((4, 3)), np.zeros(2))

    @checked(a="[d, d]")
    def g(a):
        return 0

    with pytest.raises(ValueError, match=r"^a must have shape \[d, d\] with d = 2 columns to match its axis 0"):
        g(np.zeros((2, 3)))


def test_under_jit_shapes_are_checked_and_values_are_not():
    kernel_calls = []

    @checked(x="[n] probability", s="number > 0")
    def f(x, s):
        kernel_calls.append(1)
        return jnp.sum(x) * s

    jf = jax.jit(f)
    with pytest.raises(ValueError, match=r"^x must have shape \[n\], got shape \[2, 2\]"):
        jf(jnp.ones((2, 2)), 1.0)
    assert float(jf(jnp.ones(2), -1.0)) == -2.0  # values are the caller's responsibility under jit
    with pytest.raises(ValueError, match="x must sum to 1"):
        f(jnp.ones(2), 1.0)


def test_integer_arrays_and_choices():
    @checked(groups="[E] int", criterion="one of L, A, D")
    def f(groups, criterion="L"):
        return criterion

    assert f(np.zeros(3, np.int32)) == "L"
    with pytest.raises(ValueError, match=r"^groups must hold integers \(an integer dtype\), got dtype float64"):
        f(np.zeros(3))
    with pytest.raises(ValueError, match=r"^criterion must be one of \['L', 'A', 'D'\], got 'E'"):
        f(np.zeros(3, int), "E")


INTERVALS = [  # spec, values it accepts, values it refuses
    ("number in (0, 1)", [1e-12, 0.5, 1 - 1e-12, np.float32(0.5), np.array(0.25)], [0, 1, -0.5, 1.5, float("nan"), True, "0.5"]),
    ("number in [0, inf)", [0, 0.0, 3, 1e300], [-1e-300, float("inf"), float("nan"), None]),
    ("number in [-1, 1]", [-1, 1, 0], [-1.0000001, 1.0000001]),
    ("int in [1, 9]", [1, 9, np.int64(5)], [0, 10, 5.0, True]),
    ("optional number in (0.0, 1.0]", [None, 1.0], [0.0]),
]


@pytest.mark.parametrize("spec, good, bad", INTERVALS, ids=[c[0] for c in INTERVALS])
def test_interval_specs_accept_their_interval_and_name_it_as_written(spec, good, bad):
    parsed = parse_spec(spec)
    interval = spec[spec.index(" in ") + 4:]
    what = ("an integer in " if "int" in spec else "in ") + interval
    for v in good:
        assert check_argument("x", v, parsed) is v
    for v in bad:
        prefix = "None or " if parsed.optional else ""
        with pytest.raises(ValueError, match=rf"^x must be {prefix}{re.escape(what)}, got {re.escape(repr(v))}$"):
            check_argument("x", v, parsed)
    # the ends are compared as numbers, both ways round: each end is in or out as its bracket says
    left, right = interval[0], interval[-1]
    lo, hi = (float(t) for t in interval[1:-1].split(","))
    for end, bracket in ((lo, left), (hi, right)):
        if np.isfinite(end):
            closed = bracket in "[]"
            try:
                check_argument("x", int(end) if "int" in spec else end, parsed)
                accepted = True
            except ValueError:
                accepted = False
            assert accepted == closed, (spec, end)


def test_configuration_wording_spells_null_true_and_false():
    with pytest.raises(ValueError, match=r"^budget must be an integer >= 1, got 0$"):
        check_argument("budget", 0, "int >= 1", config=True)
    with pytest.raises(ValueError, match=r"^progress must be true or false, got 'yes'$"):
        check_argument("progress", "yes", "bool", config=True)
    with pytest.raises(ValueError, match=r"^k must be null \(all of them\) or an integer >= 2, got 1$"):
        check_argument("k", 1, "optional int >= 2", config=True, null_means="all of them")
    with pytest.raises(ValueError, match=r"^fit_dtype must be null or one of \['float32', 'float64'\], got 'half'$"):
        check_argument("fit_dtype", "half", "optional one of float32, float64", config=True)
    with pytest.raises(ValueError, match=r"^flag must be None or True or False, got 0$"):
        check_argument("flag", 0, "optional bool")  # the Python wording by default
    assert check_argument("k", None, "optional int >= 2", config=True) is None
    # as a design parameter and a sweep setting say them
    import experiments.sweep as sweep
    from synthetic.designs import PARAM_CHECKS
    from synthetic.designs.checks import interval_check

    with pytest.raises(ValueError, match=r"^design.params.prior_precision must be null or in \[0, inf\), got -1$"):
        PARAM_CHECKS["prior_precision"]("prior_precision", -1)
    with pytest.raises(ValueError, match=r"^estimator.fit_dtype must be null or one of \['float32', 'float64'\], got 'half'$"):
        sweep.validate(sweep.compose_job(["+estimator.fit_dtype=half"]))
    # an end that ':g' would round is compared (and written) exactly
    check = interval_check(0.1234567, 1.0)
    check("x", 0.12345675)
    with pytest.raises(ValueError, match=r"in \(0.1234567, 1\), got 0.1234567$"):
        check("x", 0.1234567)


def test_design_parameters_and_sweep_settings_are_checked_by_the_same_layer(monkeypatch):
    # every design-parameter check but the cap's and every sweep setting goes through
    # check_argument: a stand-in that records its calls sees each of them
    import experiments.sweep as sweep
    import synthetic.designs.checks as checks
    from synthetic.designs import PARAM_CHECKS

    seen = []

    def spy(name, value, spec, dims=None, **kw):
        seen.append(name)
        return check_argument(name, value, spec, dims, **kw)

    import experiments.worlds as worlds
    import synthetic.monte_carlo as monte_carlo

    monkeypatch.setattr(checks, "check_argument", spy)
    valid = {"rounding": "auto", "prior_precision": None, "ridge": 0.0, "tol": 1e-3, "pilot_fraction": 0.2, "pilot_ridge": 1e-3,
             "gamma": 1.0, "with_replacement": True, "num_pairs": None, "reward": "proxy", "correlation": 0.0,
             "num_samples": 2, "fraction": 1.0, "at": "reference"}
    assert set(valid) == set(PARAM_CHECKS) - {"max_labels_per_edge"}
    for name, value in valid.items():
        PARAM_CHECKS[name](name, value)
    assert seen == [f"design.params.{n}" for n in valid]
    seen.clear()
    monkeypatch.setattr(sweep, "check_argument", spy)
    monkeypatch.setattr(worlds, "check_argument", spy)
    monkeypatch.setattr(monte_carlo, "check_argument", spy)  # estimator.name and estimator.params.*
    cfg = sweep.compose_job(["budget=10"])
    sweep.validate(cfg)
    settings = {"world.name", "world.keep_completions", "design.name", "estimator.name", "estimator.fit_dtype", *sweep._SETTINGS}
    assert set(seen) - {f"design.params.{n}" for n in cfg.design.params} == settings


def test_one_of_writes_the_choice_spec_and_refuses_names_a_spec_cannot_hold():
    spec = one_of(["uniform", "a_optimal"])
    assert spec == "one of uniform, a_optimal" and parse_spec(spec).choices == ("uniform", "a_optimal")
    with pytest.raises(ValueError, match=r"^design.name must be one of \['uniform', 'a_optimal'\], got 'x'$"):
        check_argument("design.name", "x", spec, config=True)
    for bad in (["a,b"], [""], [" a"], [1], []):  # a comma would split one name into two choices
        with pytest.raises(TypeError, match="one_of"):
            one_of(bad)


def test_malformed_specs_are_programming_errors_at_decoration():
    for bad in ("[m, K] fnite", "[]", "[1, K]", "number >> 0", "bool > 0", "one of", "number in (1, 0)",
                "number in (a, 1)", "bool in [0, 1]", "number in [0, 1) > 0", "number in (1, 1)", "number in [nan, 1]",
                "number in [1_0, 20]", "int in [1.5, 2]"):
        with pytest.raises(TypeError):
            parse_spec(bad)
    with pytest.raises(TypeError, match="does not take"):
        checked(nope="[d]")(lambda x: x)


VALUE_CASES = [
    ("w", "[E] probability", np.array([1.5, -0.5]), lambda x: V.check_probability_vector(x, 2, "w")),
    ("w", "[E] probability", np.array([0.2, 0.2]), lambda x: V.check_probability_vector(x, 2, "w")),
    ("w", "[E] probability", np.array([np.nan, 1.0]), lambda x: V.check_probability_vector(x, 2, "w")),
    ("w", "[m, K] logprob", np.array([[0.0, np.nan]]), lambda x: V.check_pool(np.zeros((1, 2, 1)), x, name_log_ref="w")),
    ("w", "[m, K] logprob", np.full((3, 2), -np.inf), lambda x: V.check_pool(np.zeros((3, 2, 1)), x, name_log_ref="w")),
    ("w", "[d, d] symmetric", np.array([[1.0, 1.0], [0.0, 1.0]]), lambda x: V.check_curvature(x, 2, "w")),
    ("w", "[d, d] symmetric", np.full((2, 2), np.inf), lambda x: V.check_curvature(x, 2, "w")),
    ("w", "[d] finite", np.array([0.0, np.inf]), lambda x: V.check_theta(x, 2, "w")),
    ("beta", "number > 0", -1.0, lambda x: V.check_beta(x)),
    ("beta", "number > 0", float("nan"), lambda x: V.check_beta(x)),
    ("w", "number >= 0", -1.0, lambda x: V.check_nonnegative(x, "w")),
    ("w", "[E, d] finite", np.zeros((0, 2)), lambda x: V.check_diffs(x, "w")),
]


@pytest.mark.parametrize("i", range(len(VALUE_CASES)))
def test_messages_are_those_of_the_older_helpers(i):
    name, spec, value, old = VALUE_CASES[i]
    with pytest.raises(ValueError) as new_err:
        check_argument(name, value, spec)
    with pytest.raises(ValueError) as old_err:
        old(value)
    assert str(new_err.value) == str(old_err.value)


# ------------------------------------------------------------------ the public API


def _takes_arrays(fn) -> bool:
    hints = typing.get_type_hints(fn)
    return any("ArrayLike" in str(h) or "Array" in str(h) for name, h in hints.items() if name != "return")


PUBLIC_FUNCTIONS = [n for n in theory.__all__ if inspect.isfunction(getattr(theory, n))]
BOUNDS_ENTRY_POINTS = ["pair_diameter", "gap_sup", "instance_constants", "check_boundedness", "asymptotic_prediction",
                       "upper_bound", "upper_bound_high_probability", "upper_bound_valid_from", "lower_bound",
                       "plug_in_factor", "plug_in_factor_radius", "score_radius_bernstein", "upper_bound_bernstein",
                       "upper_bound_bernstein_high_probability", "upper_bound_bernstein_valid_from", "upper_bound_bernstein_tuned",
                       "upper_bound_bernstein_within", "jensen_terms",
                       "lower_bound_jensen", "second_order_column", "separation_floor"]


def test_every_public_function_that_takes_arrays_is_a_checked_wrapper():
    taking_arrays = [n for n in PUBLIC_FUNCTIONS if _takes_arrays(getattr(theory, n))]
    assert len(taking_arrays) >= 13, taking_arrays  # every function of theory.__all__ takes arrays today
    assert [n for n in taking_arrays if not is_checked(getattr(theory, n))] == []
    assert [n for n in BOUNDS_ENTRY_POINTS if not is_checked(getattr(bounds, n))] == []


def test_public_functions_carry_jaxtyping_shapes_that_agree_with_their_specs():
    for module, names in ((theory, PUBLIC_FUNCTIONS), (bounds, BOUNDS_ENTRY_POINTS)):
        for name in names:
            fn = getattr(module, name)
            hints = typing.get_type_hints(fn)
            for arg, text in fn.specs.items():
                spec = parse_spec(text)
                if not spec.is_array:
                    continue
                dims = {a.dim_str for a in typing.get_args(hints[arg]) if hasattr(a, "dim_str")} or {hints[arg].dim_str}
                assert dims == {" ".join(spec.dims)}, (name, arg, dims, spec.dims)
    for name in PUBLIC_FUNCTIONS:
        assert "return" in typing.get_type_hints(getattr(theory, name)), name


def test_private_kernel_names_are_aliases_of_the_public_kernels():
    assert information._information_matrix is information.information_matrix_kernel
    assert information._trace_criterion is information.trace_criterion_kernel
    assert information._sigmoid_prime is information.sigmoid_prime
    assert policy._policy_curvature is policy.policy_curvature_kernel
    assert policy._policy_log_probs is policy.policy_log_probs_kernel
    assert policy._optimality_gap is policy.optimality_gap_kernel
    assert policy._log_partition is policy.log_partition_kernel
    assert bounds._sample_box is bounds.sample_box_kernel
    assert second_order._core_jit is second_order.second_order_kernel
    for module, kernels in ((information, ["information_matrix_kernel", "trace_criterion_kernel", "sigmoid_prime"]),
                            (policy, ["policy_curvature_kernel", "policy_log_probs_kernel", "optimality_gap_kernel",
                                      "log_partition_kernel"]),
                            (second_order, ["derivative_tensors_kernel", "second_order_kernel"]),
                            (bounds, ["sample_box_kernel"])):
        assert set(kernels) <= set(module.__all__)


def test_checked_wrappers_and_kernels_agree_bit_for_bit():
    f, lr, z, w, t = map(jnp.asarray, (F, L, D, W, T))
    rho = jnp.full((2,), 0.5, f.dtype)
    curv = policy.policy_curvature_kernel(t, f, lr, rho)
    sigma = information.information_matrix_kernel(t, z, w, 1.5)
    pairs = [
        (theory.information_matrix(t, z, w, 1.5), sigma),
        (theory.policy_curvature(t, f, lr), curv),
        (theory.log_partition(t, f, lr), policy.log_partition_kernel(t, f, lr)),
        (theory.policy_log_probs(t, f, lr), policy.policy_log_probs_kernel(t, f, lr)),
        (theory.optimality_gap(t, 0 * t, f, lr, 1.5), policy.optimality_gap_kernel(t, 0 * t, f, lr, 1.5, rho)),
        (theory.trace_criterion(curv, sigma, 0.1), information.trace_criterion_kernel(curv, sigma, 0.1)),
        (theory.design_criterion(w, t, z, curv, 1.5), information.trace_criterion_kernel(curv, sigma, 0.0)),
    ]
    for got, want in pairs:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_bounds_budget_and_tail_specs_keep_their_contract():
    assert bounds._check_n(3) == 3.0 and type(bounds._check_n(np.int64(3))) is float
    assert bounds._check_tail(2) == 2.0 and type(bounds._check_tail(2)) is float
    for bad in (0, 0.5, True, float("inf"), "3", None):
        with pytest.raises(ValueError, match="^n must be"):
            bounds._check_n(bad)
    for bad in (0, -1.0, False, float("nan")):
        with pytest.raises(ValueError, match="^tail must be"):
            bounds._check_tail(bad)


def test_integer_inputs_are_read_as_reals_not_as_integer_arithmetic():
    """The float spec accepts integer dtypes, and kernels that take their dtype from an input made
    every pool quantity 0 from int64 features: uniform prompt weights 1/m in int64 are 0, so the
    curvature's trace, the gap, the asymptotic gap, G_sup and the second-order terms were all 0
    (0.534, 0.199, 0.00978, 2.23 with the same features as floats). Integer arrays for real
    arguments now reach the kernels as the default float dtype: every value equals the float call's,
    and the curvature's trace equals a numpy computation."""
    from theory import asymptotic_gap, design_criterion, enumerate_edges, optimality_gap, policy_curvature
    from theory.bounds import gap_sup
    from theory.second_order import second_order_gap

    fi = np.array([[[0, 0], [1, 0], [0, 1]], [[1, 1], [0, 1], [2, 0]]])
    ff = fi.astype(np.float64)
    lr = np.log(np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]))
    th, ts = np.array([0.7, -0.4]), np.array([0.2, 0.5])
    e = enumerate_edges(ff, lr)
    w = np.full(e.num_edges, 1 / e.num_edges)
    zi = np.asarray(e.diffs).astype(np.int64)

    def values(f, z):
        return [float(jnp.trace(policy_curvature(th, f, lr))), float(optimality_gap(th, ts, f, lr, 1.0)),
                float(asymptotic_gap(w, ts, f, lr, z, 1.0, 100)), float(gap_sup(ts, f, lr, 1.0)),
                float(design_criterion(w, ts, z, policy_curvature(ts, f, lr), 1.0)),
                float(second_order_gap(w, ts, f, lr, z, 1.0, 100))]

    want = values(ff, np.asarray(e.diffs))
    got = values(fi, zi)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert min(want) > 0
    p = np.exp(lr + ff @ th)
    p /= p.sum(1, keepdims=True)
    c = ff - np.einsum("mk,mkd->md", p, ff)[:, None]
    assert want[0] == pytest.approx(np.einsum("mk,mkd->", p, c**2) / 2, rel=1e-12)
