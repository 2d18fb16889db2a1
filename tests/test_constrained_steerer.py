"""ConstrainedSteerer on a tiny random Llama: projection, budgets, plans vs the cvxpy
reference, terminal constraint, save/load round trip, errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("cvxpy")

from _tiny_lm import tiny_llama  # noqa: E402

import ltv_control as lc  # noqa: E402
from ltv_control.adapters import ConstrainedSteerer, LLMPlant  # noqa: E402
from ltv_control.adapters.constrained_plan import ConstrainedLaw  # noqa: E402

DESIRED = ["i love this great movie .", "what a wonderful happy day .", "the food was good and nice ."]
UNDESIRED = ["i hate this awful movie .", "what a terrible sad day .", "the food was bad and cold ."]
PROMPTS = ["i love this", "the movie was", "what a day"]


@pytest.fixture(scope="module")
def llama():
    model, tok = tiny_llama(0, layers=4, hidden=32)
    return model, tok, LLMPlant(model, tok)


@pytest.fixture(scope="module")
def steerer(llama):
    _, _, plant = llama
    return ConstrainedSteerer.fit(plant, DESIRED, UNDESIRED, rank=8, budget=0.2, q=10.0, qf=10.0,
                                  progress=False)


def _record_inputs(steerer):
    """Wrap the laws to record every input they return: {layer: [u (N, n)]}."""
    record: dict = {}
    layer_laws = steerer.layer_laws

    class Recording(ConstrainedLaw):
        def to(self, device):
            return Recording(self.planner, self.k, self.w.to(device), self.v.to(device), self.rho.to(device))

        def __call__(self, z, state):
            u = super().__call__(z, state)
            if u is not None:
                record.setdefault(self.k, []).append(u.detach().reshape(-1, u.shape[-1]).clone())
            return u

    def recording(**options):
        return {k: Recording(law.planner, k, law.w, law.v, law.rho) for k, law in layer_laws(**options).items()}

    steerer.layer_laws = recording
    return record, lambda: steerer.__dict__.pop("layer_laws", None)


def test_bases_projection_and_setpoint_are_consistent(llama, steerer):
    _, _, plant = llama
    T, n, r = plant.horizon, plant.state_dim, 8
    U = steerer.bases.double().numpy()
    assert U.shape == (T + 1, n, r)
    np.testing.assert_allclose(np.einsum("kni,knj->kij", U, U), np.broadcast_to(np.eye(r), (T + 1, r, r)),
                               atol=1e-6)
    # v_k lies in span(U_k): the feature is represented exactly after projection
    v = steerer.v_all.double().numpy()
    residual = v - np.einsum("kni,kmi,km->kn", U, U, v)
    assert np.abs(residual).max() < 1e-5
    # A_r is LTVSystem.project of an independently linearised plant
    A = plant.linearize(DESIRED, progress=False).A.numpy()
    A_r = np.einsum("kni,knm,kmj->kij", U[1:], A, U[:-1])
    np.testing.assert_allclose(steerer.A_r.double().numpy(), A_r, atol=1e-5 * np.abs(A_r).max())
    # setpoint includes the last block's output (T+1 steps), same sign as desired - undesired
    zd = plant.last_token_states(DESIRED).double().numpy().mean(0)
    zu = plant.last_token_states(UNDESIRED).double().numpy().mean(0)
    e = zd - zu
    np.testing.assert_allclose(steerer.e_norm_all.double().numpy(), np.linalg.norm(e, axis=1), rtol=1e-5)


@pytest.mark.parametrize("feedback", [False, True])
def test_applied_inputs_respect_every_budget(llama, steerer, feedback):
    model, tok, _ = llama
    record, restore = _record_inputs(steerer)
    try:
        enc = tok(PROMPTS, return_tensors="pt", padding=True)
        with steerer.attach(model, feedback=feedback, lam=3.0) as handle:
            model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        assert not handle.active and handle.planner.stats["plans"] >= 3 * len(PROMPTS)
    finally:
        restore()
    rho = steerer.budgets()
    assert set(record) == set(range(steerer.num_layers))
    hit = 0
    for k, us in record.items():
        norms = torch.cat(us).norm(dim=-1).double().numpy()
        assert norms.max() <= rho[k] * (1 + 1e-5) + 1e-7, (k, norms.max(), rho[k])
        hit += int(np.any(norms >= rho[k] * (1 - 1e-3)))
    assert hit >= 1  # lam = 3 pushes hard enough for some budget to bind


def test_plan_matches_the_cvxpy_reference_and_lives_in_the_bases(llama, steerer):
    _, _, plant = llama
    z = plant.last_token_states(PROMPTS)[:, 0]
    fast = steerer.planner(method="admm", lam=2.0)
    u_admm, _ = fast.plan(z)
    u_ref, _ = steerer.planner(method="cvxpy", lam=2.0).plan(z)
    # The plan is small (~1e-2): Clarabel's absolute gap tolerance (1e-9) on a cost of ~1e-4
    # limits the reference to ~1e-4 relative, hence 1e-3 here; ADMM itself is checked
    # against a 1e-13-tolerance ADMM solve to 1e-5.
    assert np.abs(u_admm - u_ref).max() <= 1e-3 * np.abs(u_ref).max()
    settings = fast.qp.admm_settings
    settings.eps_abs, settings.eps_rel, settings.max_iter = 1e-15, 1e-13, 100_000
    fast.qp._admm.reset()
    u_tight, _ = fast.plan(z)
    assert np.abs(u_admm - u_tight).max() <= 1e-5 * np.abs(u_tight).max()
    rho = steerer.budgets()
    assert np.all(np.linalg.norm(u_ref, axis=2) <= rho * (1 + 1e-6) + 1e-9)
    # the inputs live in span(U_{k+1})
    U = steerer.bases.double().numpy()
    proj = np.einsum("kni,kmi,bkm->bkn", U[1:], U[1:], u_ref)
    np.testing.assert_allclose(proj, u_ref, atol=1e-6 * np.abs(u_ref).max())


def test_steering_moves_the_terminal_feature_towards_the_setpoint(llama):
    model, tok, plant = llama
    st = ConstrainedSteerer.fit(plant, DESIRED, UNDESIRED, rank=8, budget=0.05, q=0.0, qf=1.0,
                                progress=False)
    T = st.num_layers
    v_T = st.v_all[T].double()
    beta_T = 2.0 * float(st.e_norm_all[T])
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    out = {}
    hook = plant.layers[-1].register_forward_hook(lambda m, a, o: out.__setitem__("z", (o[0] if isinstance(o, tuple) else o)[:, -1].detach()))
    try:
        with torch.no_grad():
            model(**enc)
            free = out["z"].double() @ v_T
            with st.attach(model, lam=2.0):
                model(**enc)
            steered = out["z"].double() @ v_T
    finally:
        hook.remove()
    assert torch.all((beta_T - steered).abs() < (beta_T - free).abs())


def test_terminal_constraint_raise_and_relax(llama):
    model, tok, plant = llama
    st = ConstrainedSteerer.fit(plant, DESIRED, UNDESIRED, rank=6, budget=1e-4, terminal_feature=True,
                                on_infeasible="raise", progress=False)
    enc = tok(PROMPTS[:1], return_tensors="pt")
    with pytest.raises(lc.InfeasibleError, match="terminal feature"):
        with st.attach(model, lam=50.0):
            model(**enc)
    with st.attach(model, lam=50.0, on_infeasible="relax") as handle:
        model(**enc)
    assert handle.planner.stats["relaxed"] == 1
    # reachable target: the plan meets the terminal constraint in the projected model
    z = plant.last_token_states(PROMPTS[:1])[:, 0]
    planner = st.planner(budget=1.0, lam=0.5)
    planner.plan(z)
    assert planner.stats["relaxed"] == 0
    g, b = planner.terminal
    x0 = (z[0].double().numpy() - st.z_mean[0].double().numpy()) @ st.bases[0].double().numpy()
    plan = planner.qp.solve(x0, planner.x_ref)
    vt_T = st.bases[-1].double().numpy().T @ st.v_all[-1].double().numpy()
    assert vt_T @ plan.x[-1] >= b - 1e-6 * max(1.0, abs(b))


def test_save_load_round_trip(llama, steerer, tmp_path):
    model, tok, _ = llama
    path = steerer.save(tmp_path / "c.safetensors")
    loaded = ConstrainedSteerer.load(path, model=model)
    assert isinstance(loaded, ConstrainedSteerer)
    assert loaded.hyperparameters == steerer.hyperparameters
    for name in ("w", "bases", "A_r", "z_mean", "v_all", "e_norm_all", "act_norm"):
        assert torch.equal(getattr(loaded, name), getattr(steerer, name)), name
    from ltv_control.adapters import Steerer

    assert isinstance(Steerer.load(path), ConstrainedSteerer)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with steerer.attach(model):
        a = model(**enc).logits
    with loaded.attach(model):
        b = model(**enc).logits
    torch.testing.assert_close(a, b)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(lc.ControllerFileError):
        ConstrainedSteerer.load(tmp_path / "cut.safetensors")
    other, _ = tiny_llama(1, layers=3, hidden=32)
    with pytest.raises(lc.DimensionError, match="layers"):
        ConstrainedSteerer.load(path, model=other)


def test_zero_budget_and_restricted_layers(llama, steerer):
    model, tok, _ = llama
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        free = model(**enc).logits
        with steerer.attach(model, budget=0.0):
            same = model(**enc).logits
        torch.testing.assert_close(free, same, rtol=0, atol=0)
        record, restore = _record_inputs(steerer)
        try:
            with steerer.attach(model, layers=[2, 3]):
                model(**enc)
        finally:
            restore()
    assert set(record) == {2, 3}
    assert np.all(steerer.budgets(layers=[2, 3])[:2] == 0)


def test_hooks_removed_when_forward_raises(llama, steerer):
    model, tok, _ = llama
    with pytest.raises(RuntimeError, match="boom"):
        with steerer.attach(model) as handle:
            raise RuntimeError("boom")
    assert not handle.active
    assert steerer._planners == {}
    assert all(not layer._forward_hooks for layer in LLMPlant(model, tok).layers)


def test_bad_arguments(llama, steerer):
    model, _, plant = llama
    with pytest.raises(lc.ArgumentError, match="unknown"):
        ConstrainedSteerer.fit(plant, DESIRED, UNDESIRED, rnak=4, progress=False)
    with pytest.raises(lc.PropertyError, match="rank"):
        ConstrainedSteerer.fit(plant, DESIRED, UNDESIRED, rank=65, progress=False)
    with pytest.raises(lc.PropertyError, match="budget"):
        ConstrainedSteerer.fit(plant, DESIRED, UNDESIRED, budget=-1.0, progress=False)
    with pytest.raises(lc.ArgumentError, match="method"):
        steerer.attach(model, method="newton")
    with pytest.raises(lc.ArgumentError, match="unknown"):
        steerer.attach(model, coeff=1.0)
    other, _ = tiny_llama(1, layers=4, hidden=16)
    with pytest.raises(lc.DimensionError, match="hidden size"):
        steerer.attach(other)
