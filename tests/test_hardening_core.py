"""Hardening of the core (issue 13): every bad input is a typed ControlError naming the argument,
every overflow a NumericalError naming the step, never a silent NaN or a raw numpy/torch error.

Sections follow the issue's areas: overflow, complex input, bound_coverage arguments, empty
dimensions, dtypes, devices, ``LTVSystem.constant``, the sweep of other public functions, and the
files the core writes (atomic, ``0o666 & ~umask``).  Oracles: closed forms (scaling laws of norms
and remainder ratios), numpy on rescaled input, and the exception contract itself.
"""

from __future__ import annotations

import json
import os
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ltv_control as lc
from ltv_control import bounds
from ltv_control._validation import COMPUTE_DTYPES
from ltv_control.atomic import current_umask
from ltv_control.bound_plots import plot_tracking_bound
from ltv_control.plants import QuadraticResidualPlant, ResidualMLPPlant
from ltv_control.system_io import load_system, save_system

torch = pytest.importorskip("torch")

FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


_ODD_SCALARS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 400, 10 ** 400),
    st.booleans(), st.complex_numbers(allow_nan=False, allow_infinity=False, max_magnitude=1e3),
    st.text(max_size=3), st.none(), st.just([1.0]), st.just(np.float32(2.0)), st.just(np.int8(3)))


def _growing(T=6, n=2, factor=1e80, batch=()):
    """A system whose state grows by ``factor`` per step (overflows float64 after ~4 steps)."""
    return lc.LTVSystem(np.broadcast_to(factor * np.eye(n), batch + (T, n, n)).copy())


def _closed_loop_data(rng, T=4, n=2, R=3, scale=1e-2):
    A = np.stack([0.5 * np.eye(n) + 0.1 * rng.standard_normal((n, n)) for _ in range(T)])
    D = scale * rng.standard_normal((R, T + 1, n))
    return A, D


# =========================================================================== overflow
def test_simulate_overflow_names_step_and_batch_member():
    A = np.stack([np.eye(2)] * 6)
    A = np.stack([A, A])
    A[1] *= 1e80  # member 1 overflows: x_k = 1e80^k, inf at x_4 (step 3)
    sys = lc.LTVSystem(A)
    with pytest.raises(lc.NumericalError, match=r"simulate\(\).*at step 3, batch member 1"):
        sys.simulate(np.ones(2))
    # member 0 alone is fine and exact
    np.testing.assert_array_equal(lc.LTVSystem(A[0]).simulate(np.ones(2)), np.ones((7, 2)))


def test_simulate_overflow_closed_loop_and_torch():
    sys = _growing()
    K = np.broadcast_to(-1e200 * np.eye(2), (6, 2, 2))  # u = 1e200 x: x_1 ≈ 1e200, x_2 = inf
    with pytest.raises(lc.NumericalError, match="at step 1"):
        sys.simulate(np.ones(2), K=K)
    with pytest.raises(lc.NumericalError, match="at step 3"):
        sys.to(device="cpu").simulate(torch.ones(2, dtype=torch.float64))


def test_simulate_overflow_in_float32_and_float16_range():
    sys32 = _growing(factor=1e10).to(dtype="float32")
    with pytest.raises(lc.NumericalError, match=r"at step 3.*float32"):  # 1e40 > 3.4e38
        sys32.simulate(np.ones(2, dtype=np.float32))
    sys16 = _growing(factor=100.0).to(dtype="float16")
    with pytest.raises(lc.NumericalError, match="at step 2"):  # 1e6 > 65504
        sys16.simulate(np.ones(2, dtype=np.float16))


@FAST
@given(log_growth=st.floats(0.0, 120.0), T=st.integers(1, 8))
def test_simulate_is_finite_or_numerical_error(log_growth, T):
    # Oracle: x_k = g^k x_0 exactly for A = g I; overflow iff g^k > max float64.
    g = 10.0 ** log_growth
    sys = lc.LTVSystem(np.broadcast_to(g * np.eye(2), (T, 2, 2)).copy())
    overflow = T * log_growth > 308.2
    if overflow:
        with pytest.raises(lc.NumericalError, match="simulate"):
            sys.simulate(np.ones(2))
    elif T * log_growth < 308.0:
        x = sys.simulate(np.ones(2))
        assert np.all(np.isfinite(x))
        np.testing.assert_allclose(x[:, 0], g ** np.arange(T + 1), rtol=1e-12)


def test_closed_loop_and_project_overflow():
    sys = lc.LTVSystem(np.stack([np.eye(2)] * 3), np.ones((3, 2, 2)))
    K = np.zeros((3, 2, 2))
    K[2] = 1.7e308  # (B K)_ij = 2 · 1.7e308 = inf at step 2 only
    with pytest.raises(lc.NumericalError, match=r"closed_loop\(\).*at step 2"):
        sys.closed_loop(K)
    np.testing.assert_array_equal(sys.closed_loop(np.zeros((3, 2, 2))), sys.A)
    big = lc.LTVSystem(np.full((3, 2, 2), 1.5e308))
    U = np.broadcast_to(np.eye(2) / np.sqrt(1.0), (4, 2, 2)) @ np.array([[1, 1], [1, -1]]) / np.sqrt(2)
    with pytest.raises(lc.NumericalError, match=r"project\(\).*A_r.*at step 0"):
        big.project(U)


def test_lqr_cost_overflow_names_batch_member():
    sys = lc.LTVSystem(np.stack([np.eye(2)] * 3))
    x = np.stack([np.ones((4, 2)), np.full((4, 2), 1e160)])
    with pytest.raises(lc.NumericalError, match=r"lqr_cost\(\).*batch member 1"):
        lc.lqr_cost(sys, 1.0, 1.0, x, np.zeros((3, 2)))
    assert lc.lqr_cost(sys, 1.0, 1.0, np.ones((4, 2)), np.zeros((3, 2))) == 8.0  # 4 x_kᵀx_k


def test_quadratic_plant_overflow_names_step():
    plant = QuadraticResidualPlant.random(2, 6, seed=0, quadratic_scale=10.0)
    with pytest.raises(lc.NumericalError, match=r"rollout\(\).*at step \d.*batch member 1"):
        plant.rollout(np.stack([np.zeros(2), np.full(2, 1e40)]))
    with pytest.raises(lc.NumericalError, match=r"step\(2\)"):
        plant.step(2, np.full(2, 1e160))
    with pytest.raises(lc.NumericalError, match=r"jacobian\(1\)"):
        plant.jacobian(1, np.full(2, 1.5e308))
    traj = np.zeros((7, 2))
    traj[3] = 1e160
    with pytest.raises(lc.NumericalError, match=r"linearize\(\).*at step 3"):
        plant.linearize(traj)
    # finite data stays exact: the step equals A x + ½ H[x, x] (oracle: einsum)
    x = np.array([0.3, -0.2])
    np.testing.assert_allclose(plant.step(0, x),
                               plant.A[0] @ x + 0.5 * np.einsum("jab,a,b->j", plant.H[0], x, x))


def test_mlp_plant_overflow_names_step():
    # W1 = 0, b1 = 10: tanh(s) ≈ 1, so x_{k+1} = x_k + Σ_d W2[k, :, d] = x_k + 4·W2 entries
    W2 = np.zeros((3, 2, 4))
    W2[1] = 1e308  # 4e308 = inf at step 1
    plant = ResidualMLPPlant(np.zeros((3, 4, 2)), W2, np.full((3, 4), 10.0))
    with pytest.raises(lc.NumericalError, match=r"rollout\(\).*at step 1"):
        plant.rollout(np.ones(2))
    with pytest.raises(lc.PropertyError, match="gain"):
        ResidualMLPPlant.random(2, 3, gain=1e308, hidden=64, seed=0)  # the weights overflow


def test_bounds_overflow_names_step(rng):
    with pytest.raises(lc.NumericalError, match="lyapunov_weights overflowed at step"):
        bounds.lyapunov_weights(np.broadcast_to(1e100 * np.eye(2), (6, 2, 2)))
    A = np.broadcast_to(1e80 * np.eye(2), (6, 2, 2))
    with pytest.raises(lc.NumericalError, match=r"transition_norms: Φ\(\d,\d\) overflowed"):
        bounds.transition_norms(A, np.broadcast_to(np.eye(2), (7, 2, 2)))
    with pytest.raises(lc.NumericalError, match=r"Φ\(6,0\) overflowed"):
        bounds.worst_case_initial_deviation(A, 6, P=np.broadcast_to(np.eye(2), (7, 2, 2)))


def test_huge_values_give_correct_norms_not_overflow(rng):
    # Oracles: σ(sM) = s σ(M); ‖s δz‖_P = s ‖δz‖_P; L_hat(s δz) = L_hat(δz)/s (r is linear in δz).
    A, D = _closed_loop_data(rng)
    P = bounds.lyapunov_weights(A)
    M = rng.standard_normal((2, 2))
    s = 1e200
    np.testing.assert_allclose(bounds.induced_norm(s * M, P[0], P[1]),
                               s * bounds.induced_norm(M, P[0], P[1]), rtol=1e-12)
    np.testing.assert_allclose(bounds.weighted_norms(s * D, P), s * bounds.weighted_norms(D, P),
                               rtol=1e-12)
    np.testing.assert_allclose(bounds.remainder_constants(A, P, s * D),
                               bounds.remainder_constants(A, P, D) / s, rtol=1e-12)
    np.testing.assert_allclose(bounds.remainder_constants(A, P, D / s),
                               bounds.remainder_constants(A, P, D) * s, rtol=1e-12)


# =========================================================================== complex input
def _bounds_calls(rng):
    A, D = _closed_loop_data(rng)
    P = bounds.lyapunov_weights(A)
    G = bounds.transition_norms(A, P)
    L = np.ones(4)
    return {
        "lyapunov_weights": (lambda A_cl=A, W=np.eye(2), P_terminal=np.eye(2):
                             bounds.lyapunov_weights(A_cl, W=W, P_terminal=P_terminal)),
        "induced_norm": (lambda M=A[0], P_from=P[0], P_to=P[1]: bounds.induced_norm(M, P_from, P_to)),
        "transition_norms": (lambda A_cl=A, P=P: bounds.transition_norms(A_cl, P)),
        "remainder_constants": (lambda A_cl=A, P=P, deviations=D:
                                bounds.remainder_constants(A_cl, P, deviations)),
        "weighted_norms": (lambda deviations=D, P=P: bounds.weighted_norms(deviations, P)),
        "tracking_error_bound": (lambda A_cl=A, L=L, delta0=D[:, 0], P=P, deviations=D, G=G:
                                 bounds.tracking_error_bound(A_cl, L, delta0, P=P,
                                                             deviations=deviations, G=G)),
        "worst_case_initial_deviation": (lambda A_cl=A, P=P:
                                         bounds.worst_case_initial_deviation(A_cl, 2, P=P)),
        "bound_coverage": (lambda A_cl=A, deviations_calib=D, deviations_heldout=D, P=P, G=G:
                           bounds.bound_coverage(A_cl, deviations_calib, deviations_heldout, P=P, G=G)),
    }


BOUNDS_CASES = [(f, a) for f, args in {
    "lyapunov_weights": ["A_cl", "W", "P_terminal"],
    "induced_norm": ["M", "P_from", "P_to"],
    "transition_norms": ["A_cl", "P"],
    "remainder_constants": ["A_cl", "P", "deviations"],
    "weighted_norms": ["deviations", "P"],
    "tracking_error_bound": ["A_cl", "L", "delta0", "P", "deviations", "G"],
    "worst_case_initial_deviation": ["A_cl", "P"],
    "bound_coverage": ["A_cl", "deviations_calib", "deviations_heldout", "P", "G"],
}.items() for a in args]


@pytest.mark.parametrize("func,arg", BOUNDS_CASES)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_bounds_refuse_complex_input(rng, func, arg, kind):
    call = _bounds_calls(rng)[func]
    import inspect

    default = inspect.signature(call).parameters[arg].default
    bad = np.asarray(default) + 1e-3j
    if kind == "torch":
        bad = torch.as_tensor(bad)
    call()  # the valid call works
    with pytest.raises(lc.ArgumentError, match=rf"{arg}\b.*complex"):
        call(**{arg: bad})


def _plant_calls():
    q = QuadraticResidualPlant.random(2, 3, seed=0)
    m = ResidualMLPPlant.random(2, 3, seed=0, m=1)
    K = np.zeros((3, 2, 2))
    return [
        ("QuadraticResidualPlant", "A", lambda A=q.A, H=q.H, B=None: QuadraticResidualPlant(A, H, B)),
        ("QuadraticResidualPlant", "H", lambda A=q.A, H=q.H, B=None: QuadraticResidualPlant(A, H, B)),
        ("QuadraticResidualPlant", "B", lambda A=q.A, H=q.H, B=np.ones((3, 2, 1)):
         QuadraticResidualPlant(A, H, B)),
        ("ResidualMLPPlant", "W1", lambda W1=m.W1, W2=m.W2, b1=m.b1: ResidualMLPPlant(W1, W2, b1)),
        ("ResidualMLPPlant", "W2", lambda W1=m.W1, W2=m.W2, b1=m.b1: ResidualMLPPlant(W1, W2, b1)),
        ("ResidualMLPPlant", "b1", lambda W1=m.W1, W2=m.W2, b1=m.b1: ResidualMLPPlant(W1, W2, b1)),
        ("step", "x", lambda x=np.ones(2), u=np.ones(2): q.step(0, x, u)),
        ("step", "u", lambda x=np.ones(2), u=np.ones(2): q.step(0, x, u)),
        ("jacobian", "x", lambda x=np.ones(2): q.jacobian(0, x)),
        ("rollout", "x0", lambda x0=np.ones(2), u=np.zeros((3, 2)), K=K, x_ref=np.zeros((4, 2)),
         u_ref=np.zeros((3, 2)): q.rollout(x0, u, K=K, x_ref=x_ref, u_ref=u_ref)),
        ("rollout", "u", lambda x0=np.ones(2), u=np.zeros((3, 2)): q.rollout(x0, u)),
        ("rollout", "K", lambda x0=np.ones(2), K=K: q.rollout(x0, K=K)),
        ("rollout", "x_ref", lambda x0=np.ones(2), K=K, x_ref=np.zeros((4, 2)):
         q.rollout(x0, K=K, x_ref=x_ref)),
        ("rollout", "u_ref", lambda x0=np.ones(2), u_ref=np.zeros((3, 2)): q.rollout(x0, u_ref=u_ref)),
        ("linearize", "nominal_trajectory", lambda nominal_trajectory=np.zeros((4, 2)):
         q.linearize(nominal_trajectory)),
        ("remainder_constants", "P", lambda P=np.broadcast_to(np.eye(2), (4, 2, 2)):
         m.remainder_constants(P)),
    ]


@pytest.mark.parametrize("case", _plant_calls(), ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_plants_refuse_complex_input(case, kind):
    import inspect

    _, arg, call = case
    call()
    bad = np.asarray(inspect.signature(call).parameters[arg].default) + 1e-3j
    if kind == "torch":
        bad = torch.as_tensor(bad)
    with pytest.raises(lc.ArgumentError, match=rf"{arg}\b.*complex"):
        call(**{arg: bad})


def test_plot_refuses_complex(tmp_path, rng):
    A, D = _closed_loop_data(rng)
    tb = bounds.tracking_error_bound(A, 1.0, None, deviations=D)
    for kwargs in ({"deviations": D + 1j}, {"bound": tb.bound + 1j}):
        args = {"deviations": D, "bound": tb.bound, **kwargs}
        with pytest.raises(lc.ArgumentError, match="complex"):
            plot_tracking_bound(tmp_path / "x.png", args["deviations"], args["bound"])
    assert not list(tmp_path.iterdir())


# =========================================================================== bound_coverage
BAD_COVERAGE = [
    ("rtol", float("nan"), lc.PropertyError), ("rtol", -1e-9, lc.PropertyError),
    ("rtol", float("inf"), lc.PropertyError), ("rtol", "1e-9", lc.ArgumentError),
    ("rtol", True, lc.ArgumentError), ("rtol", 1j, lc.ArgumentError),
    ("safety", "x", lc.ArgumentError), ("safety", None, lc.ArgumentError),
    ("safety", True, lc.ArgumentError), ("safety", float("nan"), lc.PropertyError),
    ("safety", 0.0, lc.PropertyError), ("safety", -2.0, lc.PropertyError),
    ("safety", float("inf"), lc.PropertyError), ("safety", [1.0], lc.ArgumentError),
    ("quantile", "x", lc.ArgumentError), ("quantile", True, lc.ArgumentError),
    ("quantile", float("nan"), lc.PropertyError), ("quantile", 0.0, lc.PropertyError),
    ("quantile", 1.5, lc.PropertyError), ("quantile", np.array([0.5]), lc.ArgumentError),
    ("min_norm", "0", lc.ArgumentError), ("min_norm", -1.0, lc.PropertyError),
    ("min_norm", float("nan"), lc.PropertyError), ("min_norm", False, lc.ArgumentError),
    ("mode", ["a_priori"], lc.ArgumentError), ("mode", np.array(["a", "b"]), lc.ArgumentError),
]


@pytest.mark.parametrize("arg,value,error", BAD_COVERAGE, ids=lambda v: repr(v)[:20])
def test_bound_coverage_refuses_bad_scalars(rng, arg, value, error):
    A, D = _closed_loop_data(rng)
    with pytest.raises(error, match=arg):
        bounds.bound_coverage(A, D, D, **{arg: value})


@FAST
@given(arg=st.sampled_from(["safety", "quantile", "min_norm", "rtol"]), value=_ODD_SCALARS)
def test_bound_coverage_scalars_of_any_type(arg, value):
    rng = np.random.default_rng(1)
    A, D = _closed_loop_data(rng)
    valid = {"safety": lambda v: 0 < v < np.inf, "quantile": lambda v: 0 < v <= 1,
             "min_norm": lambda v: 0 <= v < np.inf, "rtol": lambda v: 0 <= v < np.inf}[arg]
    real = (isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool))
    try:
        as_float = float(value) if real else None
    except OverflowError:  # an int beyond the float range
        as_float = np.inf
    try:
        res = bounds.bound_coverage(A, D, D, **{arg: value})
    except lc.ControlError as exc:
        assert arg in str(exc) or arg == "min_norm"  # min_norm may leave no calibration step
        assert not (real and valid(as_float)) or arg == "min_norm"
        return
    assert real and valid(as_float)
    assert 0.0 <= res.coverage <= 1.0 and np.all(np.isfinite(res.per_step_coverage))


def test_bound_coverage_refuses_empty_sets_and_accepts_numpy_scalars(rng):
    A, D = _closed_loop_data(rng)
    with pytest.raises(lc.DimensionError, match="deviations_heldout.*at least one rollout"):
        bounds.bound_coverage(A, D, D[:0])
    with pytest.raises(lc.DimensionError, match="deviations_calib.*at least one rollout"):
        bounds.bound_coverage(A, D[:0], D)
    ref = bounds.bound_coverage(A, D, D, safety=2.0, quantile=1.0, rtol=1e-9)
    res = bounds.bound_coverage(A, D, D, safety=np.float32(2.0), quantile=np.int64(1),
                                rtol=np.float64(1e-9))
    np.testing.assert_array_equal(res.L, ref.L)
    # Oracle: calibrating on the held-out set itself with the max ratio covers every step.
    assert ref.coverage == 1.0 and ref.n_steps == 3 * 4 and ref.violations == 0
    single = bounds.bound_coverage(A, D, D[0])  # one rollout (T+1, n) is a set of one
    assert single.n_steps == 4 and single.per_step_coverage.shape == (4,)


# =========================================================================== empty dimensions
EMPTY = [
    ("induced_norm M (0,0)", lambda: bounds.induced_norm(np.zeros((0, 0)), np.zeros((0, 0)),
                                                          np.zeros((0, 0))), "M"),
    ("induced_norm M (2,0)", lambda: bounds.induced_norm(np.zeros((2, 0)), np.zeros((0, 0)),
                                                          np.eye(2)), "M"),
    ("induced_norm M (0,2)", lambda: bounds.induced_norm(np.zeros((0, 2)), np.eye(2),
                                                          np.zeros((0, 0))), "M"),
    ("transition_norms n=0", lambda: bounds.transition_norms(np.zeros((3, 0, 0)),
                                                              np.zeros((4, 0, 0))), "A_cl"),
    ("transition_norms T=0", lambda: bounds.transition_norms(np.zeros((0, 2, 2)),
                                                              np.eye(2)[None]), "A_cl"),
    ("lyapunov_weights n=0", lambda: bounds.lyapunov_weights(np.zeros((3, 0, 0))), "A_cl"),
    ("weighted_norms n=0", lambda: bounds.weighted_norms(np.zeros((2, 0)), np.zeros((2, 0, 0))), "P"),
    ("weighted_norms T+1=0", lambda: bounds.weighted_norms(np.zeros((0, 2)), np.zeros((0, 2, 2))), "P"),
    ("QuadraticResidualPlant n=0", lambda: QuadraticResidualPlant(np.zeros((2, 0, 0)),
                                                                  np.zeros((2, 0, 0, 0))), "A"),
    ("ResidualMLPPlant d=0", lambda: ResidualMLPPlant(np.zeros((2, 0, 3)), np.zeros((2, 3, 0))), "W1"),
    ("plant B m=0", lambda: QuadraticResidualPlant(np.zeros((2, 1, 1)), np.zeros((2, 1, 1, 1)),
                                                   np.zeros((2, 1, 0))), "B"),
    ("random n=0", lambda: QuadraticResidualPlant.random(0, 3), "n"),
    ("random T=0", lambda: ResidualMLPPlant.random(2, 0), "T"),
    ("random hidden=0", lambda: ResidualMLPPlant.random(2, 2, hidden=0), "hidden"),
    ("random m=0", lambda: QuadraticResidualPlant.random(2, 2, m=0), "m"),
]


@pytest.mark.parametrize("case", EMPTY, ids=lambda c: c[0])
def test_empty_dimensions_are_dimension_errors(case):
    _, call, name = case
    with pytest.raises(lc.DimensionError, match=rf"\b{name}\b"):
        call()


def test_empty_rollout_sets_are_correct_empty_results(rng):
    # Documented: functions that return one value per rollout return an empty stack for none.
    A, D = _closed_loop_data(rng)
    P = bounds.lyapunov_weights(A)
    assert bounds.remainder_constants(A, P, D[:0]).shape == (0, 4)
    assert bounds.weighted_norms(D[:0], P).shape == (0, 5)


# =========================================================================== dtypes
STORAGE_OK = ["float16", "float32", "float64", np.float32, torch.float32]
STORAGE_BAD = ["int32", np.int64, "bool", np.complex128, "complex64", "banana", True, 3, torch.int32,
               torch.complex64]


@pytest.mark.parametrize("dtype", STORAGE_BAD, ids=repr)
def test_to_refuses_non_floating_dtypes(dtype):
    sys = lc.LTVSystem(np.stack([1e5 * np.eye(2)] * 3))
    with pytest.raises(lc.ArgumentError, match="dtype.*floating"):
        sys.to(dtype=dtype)
    with pytest.raises(lc.ArgumentError, match="dtype.*floating"):
        sys.to(device="cpu").to(dtype=dtype)


@pytest.mark.parametrize("dtype", STORAGE_OK, ids=repr)
def test_to_accepts_floating_dtypes_exactly(dtype):
    A = np.stack([np.diag([0.5, 0.25])] * 3)  # exactly representable in every float
    out = lc.LTVSystem(A).to(dtype=dtype)
    np.testing.assert_array_equal(np.asarray(out.numpy().A, dtype=np.float64), A)


def test_to_refuses_values_overflowing_the_target_dtype():
    sys = lc.LTVSystem(np.stack([1e5 * np.eye(2)] * 3))
    with pytest.raises(lc.PropertyError, match="A: values overflow the target dtype"):
        sys.to(dtype="float16")
    with pytest.raises(lc.PropertyError, match="overflow"):
        lc.LTVSystem(np.stack([1e300 * np.eye(2)] * 3)).to(dtype=np.float32)
    assert sys.to(device="cpu").to(dtype=torch.bfloat16).A.dtype == torch.bfloat16  # 1e5 fits


COMPUTE_CANDIDATES = ["float16", "float32", "float64", "longdouble", "int32", "bool", "complex128",
                      np.float16, torch.float16, torch.bfloat16, torch.float32, torch.float64,
                      torch.int64, "bfloat16", "banana"]


@FAST
@given(dtype=st.sampled_from(COMPUTE_CANDIDATES), backend=st.sampled_from(["numpy", "torch"]),
       which=st.sampled_from(["lqr", "tracking", "cost_free"]))
def test_compute_dtype_is_float32_or_float64_only(dtype, backend, which):
    sys = lc.LTVSystem(np.stack([0.5 * np.eye(2)] * 3), np.ones((3, 2, 1)))
    if backend == "torch":
        sys = sys.to(device="cpu")
    name = str(dtype).replace("torch.", "")
    try:
        name = np.dtype(dtype).name
    except TypeError:
        pass
    call = {"lqr": lambda: lc.finite_horizon_lqr(sys, 1.0, 1.0, dtype=dtype),
            "tracking": lambda: lc.tracking_lqr(sys, 1.0, 1.0, np.zeros(2), dtype=dtype),
            "cost_free": lambda: lc.finite_horizon_lqr(sys, 2.0, 0.5, Qf=1.0, dtype=dtype)}[which]
    if name in COMPUTE_DTYPES:
        out = call()
        assert str(out.K.dtype).replace("torch.", "") == name
        ref = lc.finite_horizon_lqr(sys.numpy(), 1.0, 1.0) if which == "lqr" else None
        if ref is not None:  # against the float64 numpy result
            np.testing.assert_allclose(np.asarray(out.K.tolist()), ref.K, rtol=1e-5)
    else:
        with pytest.raises(lc.ArgumentError, match=r"dtype.*float32 or float64"):
            call()


def test_half_precision_system_computes_in_float64_by_default():
    sys16 = lc.LTVSystem(np.stack([0.5 * np.eye(2)] * 3)).to(device="cpu").to(dtype=torch.float16)
    K, S = lc.finite_horizon_lqr(sys16, 1.0, 1.0)
    assert K.dtype == torch.float64
    ref = lc.finite_horizon_lqr(lc.LTVSystem(np.stack([0.5 * np.eye(2)] * 3)), 1.0, 1.0)
    np.testing.assert_allclose(K.numpy(), ref.K, rtol=1e-12)
    with pytest.raises(lc.ArgumentError, match=r"float16.*float32 or float64|float32 or float64"):
        lc.finite_horizon_lqr(sys16, 1.0, 1.0, dtype=torch.float16)


def test_scalar_weight_overflowing_the_compute_dtype():
    sys = lc.LTVSystem(np.stack([0.5 * np.eye(2)] * 3))
    with pytest.raises(lc.PropertyError, match=r"Q: scalar 1e\+300 overflows the compute dtype float32"):
        lc.finite_horizon_lqr(sys, 1e300, 1.0, dtype="float32")
    with pytest.raises(lc.PropertyError, match="R: contains NaN or inf"):
        lc.finite_horizon_lqr(sys, 1.0, 10 ** 400)


# =========================================================================== devices
def _missing_devices():
    out = ["bogus", "cuda:99", "meta"]
    if not torch.cuda.is_available():
        out.append("cuda")
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        out.append("mps")
    return out


@pytest.mark.parametrize("device", _missing_devices())
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_to_missing_device_is_argument_error(device, backend):
    sys = lc.LTVSystem(np.stack([np.eye(2)] * 3))
    if backend == "torch":
        sys = sys.to(device="cpu")
    with pytest.raises(lc.ArgumentError, match=rf"device: '{device}'"):
        sys.to(device=device)


@pytest.mark.parametrize("device", [True, 2.5, ["cpu"]], ids=repr)
def test_to_device_of_wrong_type(device):
    with pytest.raises(lc.ArgumentError, match="device: expected a device name"):
        lc.LTVSystem(np.stack([np.eye(2)] * 3)).to(device=device)


def test_meta_tensors_are_refused_as_input():
    with pytest.raises(lc.ArgumentError, match="A: a tensor on the 'meta' device"):
        lc.LTVSystem(torch.zeros(3, 2, 2, device="meta"))
    # a meta B would pull a numpy A onto the meta device: refused, naming A (converted there)
    with pytest.raises(lc.ArgumentError, match="'meta' device"):
        lc.LTVSystem(np.zeros((3, 2, 2)), torch.zeros(3, 2, 1, device="meta"))
    with pytest.raises(lc.ArgumentError, match="'meta' device"):
        lc.LTVSystem.constant(np.eye(2), None, 3, c=torch.zeros(2, device="meta"))
    with pytest.raises(lc.ArgumentError, match="M: a tensor on the 'meta' device"):
        bounds.induced_norm(torch.zeros(2, 2, device="meta"), np.eye(2), np.eye(2))


# =========================================================================== LTVSystem.constant
def test_constant_with_huge_horizon_allocates_nothing():
    tracemalloc.start()
    try:
        sys = lc.LTVSystem.constant(np.eye(2), np.ones((2, 1)), 10 ** 12, c=np.ones(2))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak  # bytes: views only
    assert sys.horizon == 10 ** 12 and sys.A.strides[0] == 0
    np.testing.assert_array_equal(sys.A[123_456_789], np.eye(2))


def test_constant_stays_a_view_through_to_and_numpy():
    sys = lc.LTVSystem.constant(np.eye(2), np.ones((2, 1)), 10 ** 12, c=np.ones(2))
    tracemalloc.start()
    try:
        s32 = sys.to(dtype="float32")
        st = sys.to(device="cpu", dtype=torch.float32)
        back = st.numpy()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak
    assert s32.A.strides[0] == 0 and st.A.stride(0) == 0 and back.A.strides[0] == 0
    assert s32.dtype == np.float32 and st.dtype == torch.float32 and back.dtype == np.float32
    np.testing.assert_array_equal(back.B[10 ** 11], np.ones((2, 1)))
    with pytest.raises(lc.PropertyError, match="c: values overflow the target dtype"):
        lc.LTVSystem.constant(np.eye(2), None, 10 ** 12, c=np.full(2, 1e6)).to(dtype="float16")


def test_constant_checks_finiteness_before_broadcast():
    tracemalloc.start()
    try:
        with pytest.raises(lc.PropertyError, match="A: contains NaN or inf"):
            lc.LTVSystem.constant(np.array([[1.0, np.nan], [0.0, 1.0]]), None, 10 ** 12)
        with pytest.raises(lc.PropertyError, match="c: contains NaN or inf"):
            lc.LTVSystem.constant(np.eye(2), None, 10 ** 12, c=np.array([np.inf, 0.0]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak


@pytest.mark.parametrize("horizon,error", [(2 ** 62, lc.DimensionError), (10 ** 30, lc.DimensionError),
                                           (True, lc.ArgumentError), (np.float64(3), lc.ArgumentError),
                                           (-5, lc.DimensionError)], ids=repr)
def test_constant_refuses_absurd_horizons(horizon, error):
    with pytest.raises(error, match="horizon"):
        lc.LTVSystem.constant(np.eye(2), None, horizon)


def test_constant_torch_view_and_numpy_int_horizon():
    sys = lc.LTVSystem.constant(torch.eye(2, dtype=torch.float64), None, np.int64(10 ** 9))
    assert sys.horizon == 10 ** 9 and sys.A.stride(0) == 0


# =========================================================================== sweep
SWEEP = [
    ("Q=np.True_", lambda s: lc.finite_horizon_lqr(s, np.True_, 1.0), lc.ArgumentError, "Q"),
    ("R=0-d bool", lambda s: lc.finite_horizon_lqr(s, 1.0, np.array(True)), lc.ArgumentError, "R"),
    ("Q=0-d complex", lambda s: lc.finite_horizon_lqr(s, np.array(1 + 0j), 1.0), lc.ArgumentError, "Q"),
    ("Q=10**400", lambda s: lc.finite_horizon_lqr(s, 10 ** 400, 1.0), lc.PropertyError, "Q"),
    ("simulate batch clash", lambda s: s.simulate(np.zeros((3, 2)), np.zeros((4, 3, 1))),
     lc.DimensionError, "u"),
    ("project batch clash", lambda s: lc.LTVSystem(np.zeros((2, 3, 2, 2))).project(
        np.broadcast_to(np.eye(2), (3, 4, 2, 2))), lc.DimensionError, "bases"),
    ("closed_loop K batch clash", lambda s: lc.LTVSystem(np.zeros((2, 3, 2, 2))).closed_loop(
        np.zeros((3, 3, 2, 2))), lc.DimensionError, "K"),
    ("x0 bool scalar", lambda s: s.simulate(True), lc.ArgumentError, "x0"),
    ("u complex", lambda s: s.simulate(np.zeros(2), np.zeros((3, 1)) + 1j), lc.ArgumentError, "u"),
    ("K complex", lambda s: s.closed_loop(np.zeros((3, 1, 2), dtype=complex)), lc.ArgumentError, "K"),
    ("bases complex", lambda s: s.project(np.broadcast_to(np.eye(2), (4, 2, 2)) * (1 + 0j)),
     lc.ArgumentError, "bases"),
    ("constant A complex", lambda s: lc.LTVSystem.constant(np.eye(2) * 1j, None, 3), lc.ArgumentError, "A"),
    ("constant c torch complex", lambda s: lc.LTVSystem.constant(torch.eye(2), None, 3,
                                                                 c=torch.zeros(2, dtype=torch.complex64)),
     lc.ArgumentError, "c"),
    ("x0 str array", lambda s: s.simulate(np.array(["1", "2"])), lc.ArgumentError, "x0"),
]


def test_from_statespace_names_the_model_with_bad_values():
    control = pytest.importorskip("control")
    good = control.ss(np.eye(2), np.ones((2, 1)), np.eye(2), 0, dt=True)
    bad = control.ss(np.array([[np.nan, 0.0], [0.0, 1.0]]), np.ones((2, 1)), np.eye(2), 0, dt=True)
    with pytest.raises(lc.PropertyError, match=r"systems\[1\]\.A: contains NaN"):
        lc.LTVSystem.from_statespace([good, bad])


@pytest.mark.parametrize("case", SWEEP, ids=lambda c: c[0])
def test_core_sweep(case):
    _, call, error, name = case
    sys = lc.LTVSystem(np.stack([0.5 * np.eye(2)] * 3), np.ones((3, 2, 1)))
    with pytest.raises(error, match=rf"\b{name}\b"):
        call(sys)


PLANT_SWEEP = [
    ("n=True", lambda: QuadraticResidualPlant.random(True, 3), lc.ArgumentError, "n"),
    ("n=2.5", lambda: QuadraticResidualPlant.random(2.5, 3), lc.ArgumentError, "n"),
    ("T=-1", lambda: QuadraticResidualPlant.random(2, -1), lc.DimensionError, "T"),
    ("seed=-1", lambda: QuadraticResidualPlant.random(2, 2, seed=-1), lc.PropertyError, "seed"),
    ("seed='a'", lambda: ResidualMLPPlant.random(2, 2, seed="a"), lc.ArgumentError, "seed"),
    ("hidden=2.5", lambda: ResidualMLPPlant.random(2, 2, hidden=2.5), lc.ArgumentError, "hidden"),
    ("spectral_radius=nan", lambda: QuadraticResidualPlant.random(2, 2, spectral_radius=float("nan")),
     lc.PropertyError, "spectral_radius"),
    ("quadratic_scale=-1", lambda: QuadraticResidualPlant.random(2, 2, quadratic_scale=-1.0),
     lc.PropertyError, "quadratic_scale"),
    ("gain='x'", lambda: ResidualMLPPlant.random(2, 2, gain="x"), lc.ArgumentError, "gain"),
    ("input_scale=inf", lambda: ResidualMLPPlant.random(2, 2, input_scale=float("inf")),
     lc.PropertyError, "input_scale"),
    ("m=True", lambda: ResidualMLPPlant.random(2, 2, m=True), lc.ArgumentError, "m"),
    ("gain=1j", lambda: ResidualMLPPlant.random(2, 2, gain=1j), lc.ArgumentError, "gain"),
    ("spectral_radius=torch complex", lambda: QuadraticResidualPlant.random(
        2, 2, spectral_radius=torch.tensor(1 + 1j)), lc.ArgumentError, "spectral_radius"),
    ("n=10**29", lambda: QuadraticResidualPlant.random(10 ** 29, 2), lc.DimensionError, "n"),
    ("n=1000 (n³ H draw)", lambda: QuadraticResidualPlant.random(1000, 2), lc.DimensionError, "n"),
    ("hidden=10**29", lambda: ResidualMLPPlant.random(2, 2, hidden=10 ** 29), lc.DimensionError,
     "hidden"),
    ("rollout batch clash", lambda: QuadraticResidualPlant.random(2, 3, seed=0).rollout(
        np.zeros((2, 2)), np.zeros((3, 3, 2))), lc.DimensionError, "u"),
    ("step batch clash", lambda: QuadraticResidualPlant.random(2, 3, seed=0).step(
        0, np.zeros((2, 2)), np.zeros((3, 2))), lc.DimensionError, "u"),
    ("linearize affine='no'", lambda: QuadraticResidualPlant.random(2, 3, seed=0).linearize(
        np.zeros((4, 2)), affine="no"), lc.ArgumentError, "affine"),
    ("x as strings", lambda: QuadraticResidualPlant.random(2, 3, seed=0).step(0, ["1", "2"]),
     lc.ArgumentError, "x"),
    ("x=None", lambda: QuadraticResidualPlant.random(2, 3, seed=0).jacobian(0, None),
     lc.ArgumentError, "x"),
]


@pytest.mark.parametrize("case", PLANT_SWEEP, ids=lambda c: c[0])
def test_plant_sweep(case):
    _, call, error, name = case
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()


def test_plant_rollout_broadcasts_inputs_over_batch():
    # u with a batch of 3 and one x0: three rollouts, each equal to its own unbatched rollout.
    plant = QuadraticResidualPlant.random(2, 3, seed=0)
    u = np.random.default_rng(0).standard_normal((3, 3, 2)) * 0.1
    out = plant.rollout(np.ones(2) * 0.1, u)
    assert out.shape == (3, 4, 2)
    for r in range(3):
        np.testing.assert_allclose(out[r], plant.rollout(np.ones(2) * 0.1, u[r]), rtol=1e-14, atol=1e-16)


BOUNDS_SWEEP = [
    ("L=True", lambda A, D, P: bounds.tracking_error_bound(A, True, D[0, 0]), lc.ArgumentError, "L"),
    ("L='1'", lambda A, D, P: bounds.tracking_error_bound(A, "1", D[0, 0]), lc.ArgumentError, "L"),
    ("L strings", lambda A, D, P: bounds.tracking_error_bound(A, ["1"] * 4, D[0, 0]),
     lc.ArgumentError, "L"),
    ("W=True", lambda A, D, P: bounds.lyapunov_weights(A, W=True), lc.ArgumentError, "W"),
    ("W=-1", lambda A, D, P: bounds.lyapunov_weights(A, W=-1.0), lc.PropertyError, "W"),
    ("P_terminal='I'", lambda A, D, P: bounds.lyapunov_weights(A, P_terminal="I"),
     lc.ArgumentError, "P_terminal"),
    ("A_cl strings", lambda A, D, P: bounds.lyapunov_weights(A.astype(str)), lc.ArgumentError, "A_cl"),
    ("A_cl None", lambda A, D, P: bounds.transition_norms(None, P), lc.ArgumentError, "A_cl"),
    ("delta0 ragged", lambda A, D, P: bounds.tracking_error_bound(A, 1.0, [[1.0], [1.0, 2.0]]),
     lc.ArgumentError, "delta0"),
    ("G NaN", lambda A, D, P: bounds.tracking_error_bound(A, 1.0, D[0, 0], G=np.full((5, 5), np.nan)),
     lc.PropertyError, "G"),
]


@pytest.mark.parametrize("case", BOUNDS_SWEEP, ids=lambda c: c[0])
def test_bounds_sweep(rng, case):
    _, call, error, name = case
    A, D = _closed_loop_data(rng)
    P = bounds.lyapunov_weights(A)
    with pytest.raises(error, match=rf"\b{name}\b"):
        call(A, D, P)


PLOT_SWEEP = [
    ("dpi=0", {"dpi": 0}, lc.PropertyError, "dpi"),
    ("dpi=True", {"dpi": True}, lc.ArgumentError, "dpi"),
    ("dpi=2.5", {"dpi": 2.5}, lc.ArgumentError, "dpi"),
    ("title=3", {"title": 3}, lc.ArgumentError, "title"),
    ("annotation=b''", {"annotation": b"x"}, lc.ArgumentError, "annotation"),
    ("norm=None", {"norm": None}, lc.ArgumentError, "norm"),
]


@pytest.mark.parametrize("case", PLOT_SWEEP, ids=lambda c: c[0])
def test_plot_sweep(tmp_path, rng, case):
    _, kwargs, error, name = case
    A, D = _closed_loop_data(rng)
    tb = bounds.tracking_error_bound(A, 1.0, None, deviations=D)
    with pytest.raises(error, match=name):
        plot_tracking_bound(tmp_path / "x.png", D, tb, **kwargs)
    assert not list(tmp_path.iterdir())


def test_plot_refuses_nan_and_bad_paths(tmp_path, rng):
    A, D = _closed_loop_data(rng)
    tb = bounds.tracking_error_bound(A, 1.0, None, deviations=D)
    bad = D.copy()
    bad[0, 1, 0] = np.nan
    with pytest.raises(lc.PropertyError, match="deviations"):
        plot_tracking_bound(tmp_path / "x.png", bad, tb)
    with pytest.raises(lc.PropertyError, match="bound"):
        plot_tracking_bound(tmp_path / "x.png", D, np.full(5, np.nan))
    with pytest.raises(lc.ArgumentError, match="path"):
        plot_tracking_bound(3, D, tb)
    with pytest.raises(lc.DimensionError, match="bound"):
        plot_tracking_bound(tmp_path / "x.png", D, np.float64(1.0))
    assert not list(tmp_path.iterdir())
    # an infinite (vacuous) bound still plots
    out = plot_tracking_bound(tmp_path / "inf.png", D, np.full(5, np.inf))
    assert out.read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- hypothesis sweeps


@FAST
@given(q=_ODD_SCALARS, r=_ODD_SCALARS)
def test_weights_of_any_type_give_a_result_or_a_control_error(q, r):
    sys = lc.LTVSystem(np.stack([0.9 * np.eye(2)] * 3), np.ones((3, 2, 1)))
    try:
        K, S = lc.finite_horizon_lqr(sys, q, r)
    except lc.ControlError as exc:
        assert any(name in str(exc) for name in ("Q", "R")), exc
        return
    # accepted: then both were real numbers with q >= 0, r > 0, and the result is finite
    assert np.isfinite(float(q)) and float(q) >= 0 and float(r) > 0
    assert np.all(np.isfinite(K)) and np.all(np.isfinite(S))


_SHAPES = st.lists(st.integers(0, 3), min_size=0, max_size=5).map(tuple)


@FAST
@given(shape=_SHAPES, dtype=st.sampled_from(["float64", "float32", "int64", "bool", "complex128"]))
def test_system_shapes_and_dtypes_give_a_system_or_a_control_error(shape, dtype):
    A = np.ones(shape, dtype=dtype)
    try:
        sys = lc.LTVSystem(A)
    except lc.ControlError as exc:
        assert "A" in str(exc)
        return
    assert len(shape) >= 3 and shape[-1] == shape[-2] >= 1 and shape[-3] >= 1
    assert dtype in ("float64", "float32", "int64", "bool")
    np.testing.assert_array_equal(sys.A, A.astype(np.float64 if dtype != "float32" else np.float32))


@FAST
@given(values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                                 st.complex_numbers(max_magnitude=10, allow_nan=False)),
                       min_size=4, max_size=4),
       shape=st.sampled_from([(2, 2), (4,), (1, 2, 2), (4, 1)]))
def test_induced_norm_any_input_is_correct_or_a_control_error(values, shape):
    M = np.array(values).reshape(shape)
    n_to, n_from = shape if len(shape) == 2 else (2, 2)
    try:
        out = bounds.induced_norm(M, np.eye(n_from), np.eye(n_to))
    except lc.ControlError as exc:
        assert "M" in str(exc)
        return
    assert np.isrealobj(M) and M.ndim == 2 and np.all(np.isfinite(M))
    np.testing.assert_allclose(out, np.linalg.norm(M, 2), rtol=1e-12, atol=1e-300)


# =========================================================================== files
def _system(rng, T=3, n=2, m=1):
    return lc.LTVSystem(rng.standard_normal((T, n, n)), rng.standard_normal((T, n, m)),
                        rng.standard_normal((T, n)))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_have_usual_permissions(tmp_path, rng, umask):
    old = os.umask(umask)
    try:
        path = save_system(tmp_path / "sys.safetensors", _system(rng), metadata={"a": 1})
        A, D = _closed_loop_data(rng)
        png = plot_tracking_bound(tmp_path / "b.png", D, bounds.tracking_error_bound(
            A, 1.0, None, deviations=D))
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for p in (path, path.with_suffix(".json"), png):
        assert (p.stat().st_mode & 0o777) == expected, (p, oct(p.stat().st_mode))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "sys.json", "sys.safetensors"]
    assert current_umask() == old


def test_system_file_roundtrip_and_metadata(tmp_path, rng):
    sys = _system(rng)
    path = save_system(tmp_path / "s.safetensors", sys, metadata={"model": "m", "prompts": ["a"]})
    back = load_system(path)
    for a, b in ((back.A, sys.A), (back.B, sys.B), (back.c, sys.c)):
        np.testing.assert_array_equal(a, b)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["metadata"] == {"model": "m", "prompts": ["a"]} and meta["horizon"] == 3
    tsys = lc.LTVSystem(torch.ones(2, 3, 3, dtype=torch.bfloat16))
    np.testing.assert_array_equal(load_system(save_system(tmp_path / "t.safetensors", tsys)).A,
                                  np.ones((2, 3, 3), dtype=np.float32))


def test_save_system_refuses_bad_arguments(tmp_path, rng):
    sys = _system(rng)
    with pytest.raises(lc.ArgumentError, match="system"):
        save_system(tmp_path / "x.safetensors", np.zeros((3, 2, 2)))
    with pytest.raises(lc.ArgumentError, match="metadata"):
        save_system(tmp_path / "x.safetensors", sys, metadata=["a"])
    with pytest.raises(lc.ArgumentError, match="metadata"):
        save_system(tmp_path / "x.safetensors", sys, metadata={"x": float("nan")})
    with pytest.raises(lc.ArgumentError, match="metadata"):
        save_system(tmp_path / "x.safetensors", sys, metadata={"x": object()})
    with pytest.raises(FileNotFoundError):
        save_system(tmp_path / "missing" / "x.safetensors", sys)
    with pytest.raises(lc.ArgumentError, match="path"):
        save_system(3, sys)
    assert not list(tmp_path.iterdir())


def _rewrite_header(path, edit):
    """Rewrite the JSON header of a safetensors file with ``edit(header) -> header``."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = edit(json.loads(data[8:8 + n]))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _edit_meta(**changes):
    def edit(header):
        meta = json.loads(header["__metadata__"]["ltv-control"])
        meta.update(changes)
        header["__metadata__"]["ltv-control"] = json.dumps(meta)
        return header
    return edit


def test_load_system_refuses_bad_files(tmp_path, rng):
    good = save_system(tmp_path / "good.safetensors", _system(rng))
    cases = {}
    cases["truncated"] = tmp_path / "trunc.safetensors"
    cases["truncated"].write_bytes(good.read_bytes()[:-7])
    cases["folder"] = tmp_path / "folder.safetensors"
    cases["folder"].mkdir()
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    cases["fifo"] = fifo
    cases["dev_zero"] = tmp_path / "zero.safetensors"
    cases["dev_zero"].symlink_to("/dev/zero")
    for name, edit in {"horizon": _edit_meta(horizon=7), "has_c": _edit_meta(has_c=False),
                       "format": _edit_meta(format="other"), "n_states": _edit_meta(n_states=True)}.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(good.read_bytes())
        _rewrite_header(p, edit)
        cases[name] = p
    deep = tmp_path / "deep.safetensors"
    deep.write_bytes(good.read_bytes())
    _rewrite_header(deep, lambda h: {**h, "__metadata__": {"ltv-control": "[" * 100_000 + "]" * 100_000}})
    cases["deep_json"] = deep
    listed = tmp_path / "list.safetensors"
    listed.write_bytes(good.read_bytes())
    _rewrite_header(listed, lambda h: {**h, "__metadata__": {"ltv-control": "[1, 2]"}})
    cases["json_list"] = listed
    from safetensors.numpy import save_file

    for name, tensors in {"nan": {"A": np.full((3, 2, 2), np.nan)},
                          "int": {"A": np.ones((3, 2, 2), dtype=np.int32)},
                          "extra": {"A": np.ones((3, 2, 2)), "Z": np.ones(2)},
                          "bad_shape": {"A": np.ones((3, 2, 3))}}.items():
        p = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(p), metadata={"ltv-control": json.dumps({"format": "ltv-control/ltv-system"})})
        cases[name] = p
    foreign = tmp_path / "foreign.safetensors"
    save_file({"A": np.ones((3, 2, 2))}, str(foreign))
    cases["foreign"] = foreign
    for name, path in cases.items():
        with pytest.raises(lc.ControllerFileError, match=str(path.name).replace(".", r"\.")):
            load_system(path)
    with pytest.raises(FileNotFoundError):
        load_system(tmp_path / "nope.safetensors")
    assert load_system(good).horizon == 3
