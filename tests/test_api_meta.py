"""Meta-tests of the core API: every parameter is documented, unknown keywords are refused."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import ltv_control as lc
from ltv_control.riccati import riccati_step

_SYSTEM = lc.LTVSystem(np.stack([np.eye(2)] * 3), np.ones((3, 2, 1)))

# (callable, its documentation owner, a valid call with an extra bogus keyword)
PUBLIC = {
    "finite_horizon_lqr": (lc.finite_horizon_lqr, lc.finite_horizon_lqr,
                           lambda **kw: lc.finite_horizon_lqr(_SYSTEM, 1.0, 1.0, **kw)),
    "tracking_lqr": (lc.tracking_lqr, lc.tracking_lqr,
                     lambda **kw: lc.tracking_lqr(_SYSTEM, 1.0, 1.0, np.zeros(2), **kw)),
    "lqr_cost": (lc.lqr_cost, lc.lqr_cost,
                 lambda **kw: lc.lqr_cost(_SYSTEM, 1.0, 1.0, np.zeros((4, 2)), np.zeros((3, 1)), **kw)),
    "riccati_step": (riccati_step, riccati_step,
                     lambda **kw: riccati_step(np.eye(2), np.eye(2), None, np.eye(2), np.eye(2), **kw)),
    "LTVSystem": (lc.LTVSystem.__init__, lc.LTVSystem,
                  lambda **kw: lc.LTVSystem(np.zeros((3, 2, 2)), **kw)),
    "LTVSystem.simulate": (lc.LTVSystem.simulate, lc.LTVSystem.simulate,
                           lambda **kw: _SYSTEM.simulate(np.zeros(2), **kw)),
    "LTVSystem.closed_loop": (lc.LTVSystem.closed_loop, lc.LTVSystem.closed_loop,
                              lambda **kw: _SYSTEM.closed_loop(np.zeros((3, 1, 2)), **kw)),
    "LTVSystem.project": (lc.LTVSystem.project, lc.LTVSystem.project,
                          lambda **kw: _SYSTEM.project(np.stack([np.eye(2)] * 4), **kw)),
    "LTVSystem.to": (lc.LTVSystem.to, lc.LTVSystem.to, lambda **kw: _SYSTEM.to(**kw)),
    "LTVSystem.constant": (lc.LTVSystem.constant, lc.LTVSystem.constant,
                           lambda **kw: lc.LTVSystem.constant(np.eye(2), None, 3, **kw)),
    "LTVSystem.from_statespace": (lc.LTVSystem.from_statespace, lc.LTVSystem.from_statespace,
                                  lambda **kw: lc.LTVSystem.from_statespace([_SYSTEM[0]], **kw)),
}


def _documented_parameters(doc: str) -> set[str]:
    section = re.split(r"\n\s*Parameters\n\s*-+\n", doc, maxsplit=1)
    assert len(section) == 2, "no numpydoc 'Parameters' section"
    body = re.split(r"\n\s*(Returns|Raises|Notes|Examples|Yields)\n\s*-+\n", section[1])[0]
    names = set()
    for match in re.finditer(r"^\s*([\w*, ]+?) :", body, re.M):
        names.update(n.strip().lstrip("*") for n in match.group(1).split(","))
    return names


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_parameter_is_documented(name):
    func, owner, _ = PUBLIC[name]
    params = [p for p in inspect.signature(func).parameters if p not in ("self", "cls")]
    documented = _documented_parameters(inspect.getdoc(owner) or "")
    missing = [p for p in params if p not in documented]
    assert not missing, f"{name}: parameters {missing} are not in the docstring"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_unknown_keyword_raises_argument_error(name):
    _, _, call = PUBLIC[name]
    call()  # the valid call works
    with pytest.raises(lc.ArgumentError, match="not_a_parameter"):
        call(not_a_parameter=1)


def test_results_are_named_tuples():
    K, S = lc.finite_horizon_lqr(_SYSTEM, 1.0, 1.0)
    res = lc.finite_horizon_lqr(_SYSTEM, 1.0, 1.0)
    assert res._fields == ("K", "S") and res.K is not None
    assert lc.TrackingLQRResult._fields == ("K", "k", "S", "s", "s0")
    assert isinstance(lc.NumericalError("x"), np.linalg.LinAlgError)
