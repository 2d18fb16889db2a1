"""Linearity diagnostics: the similarity formula against closed forms, prediction errors, plots."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from _tiny_families import tiny_model  # noqa: E402
from ltv_control.adapters import LLMPlant  # noqa: E402
from ltv_control.adapters.diagnostics import (  # noqa: E402
    LinearityDiagnostics,
    default_rank,
    linearity_diagnostics,
    plot_linearity,
    similarity_matrix,
    subspace_similarity,
)

from ltv_control import ArgumentError, DimensionError  # noqa: E402


def _with_spectrum(U, s, V):
    return (U * s) @ V.T


def test_similarity_closed_forms(rng):
    n, m = 40, 2
    assert default_rank(n) == m and default_rank(7) == 1
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.r_[5.0, 3.0, np.full(n - 2, 1e-3)]
    J = _with_spectrum(Q, s, V)
    assert subspace_similarity(J, J, m=m) == pytest.approx(1.0, abs=1e-12)
    # same left subspace and singular values, other right vectors: 1 on the left side
    V2, _ = np.linalg.qr(rng.standard_normal((n, n)))
    assert subspace_similarity(J, _with_spectrum(Q, s, V2), m=m) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(J, _with_spectrum(Q, s, V2), m=m, side="right") < 0.9
    # orthogonal top subspaces: 0
    Q_perm = Q[:, [2, 3, 0, 1] + list(range(4, n))]
    assert subspace_similarity(J, _with_spectrum(Q_perm, s, V), m=m) == pytest.approx(0.0, abs=1e-9)
    # closed form: same basis, different weights -> (s·t) / (|s| |t|) (Cauchy-Schwarz)
    t = np.r_[1.0, 4.0, np.full(n - 2, 1e-3)]
    # top-2 of t are (4, 1) on columns (1, 0): W_b = Q[:, [1, 0]] diag(4, 1)
    expected = (5 * 1 + 3 * 4) / (np.hypot(5, 3) * np.hypot(4, 1))
    assert subspace_similarity(J, _with_spectrum(Q, t, V), m=m) == pytest.approx(expected, rel=1e-10)
    # scale invariance and range
    A, B = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    value = subspace_similarity(A, B)
    assert 0.0 <= value <= 1.0
    assert subspace_similarity(3 * A, 0.5 * B) == pytest.approx(value, rel=1e-12)
    assert subspace_similarity(torch.tensor(A), torch.tensor(B)) == pytest.approx(value, rel=1e-12)


def test_similarity_matrix_and_errors(rng):
    stack = rng.standard_normal((4, 20, 20))
    S = similarity_matrix(stack, m=3)
    assert S.shape == (4, 4) and np.allclose(S, S.T) and np.allclose(np.diag(S), 1.0)
    assert S[0, 2] == pytest.approx(subspace_similarity(stack[0], stack[2], m=3), rel=1e-12)
    with pytest.raises(DimensionError, match="J_b"):
        subspace_similarity(stack[0], stack[0][:5])
    with pytest.raises(ArgumentError, match="side"):
        subspace_similarity(stack[0], stack[1], side="up")
    with pytest.raises(ArgumentError, match="m"):
        subspace_similarity(stack[0], stack[1], m=0)
    with pytest.raises(DimensionError, match="jacobians"):
        similarity_matrix(stack[0])


def test_prediction_error_is_first_order_and_plot(tmp_path):
    model, tok = tiny_model("gpt_neox", dtype=torch.float64)
    plant = LLMPlant(model, tok)
    prompts = ["Hello there", "abc", "The cat sat on"]
    diag = linearity_diagnostics(plant, prompts, scales=[1e-4, 1e-3, 1e-2], n_directions=2,
                                 progress=False, layers=[0, 2])
    assert isinstance(diag, LinearityDiagnostics)
    assert diag.prediction_error.shape == (2, 3) and diag.prediction_error_all.shape == (2, 3, 3, 2)
    assert diag.similarity_matrices.shape == (2, 3, 3) and diag.rank == 1
    err = diag.prediction_error
    # a smooth block: the remainder is O(ε²), so the relative error grows ~10x per decade
    ratio = err[:, 2] / err[:, 1]
    assert np.all(ratio > 3) and np.all(ratio < 30)
    assert np.all(err[:, 0] < 1e-2)
    assert np.all((diag.similarity > 0) & (diag.similarity <= 1))
    # the similarity agrees with the per-prompt Jacobians of the plant
    per_prompt = dict(plant.iter_jacobians(prompts, layers=[2], reduce="none", progress=False))
    assert diag.similarity_matrices[1, 0, 2] == pytest.approx(
        subspace_similarity(per_prompt[2][0], per_prompt[2][2], m=1), rel=1e-9)
    out = plot_linearity(diag, tmp_path / "figs" / "linearity.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["linearity.png"]  # no temp file left
    with pytest.raises(ArgumentError, match="scales"):
        linearity_diagnostics(plant, prompts, scales=[0.0], progress=False)
