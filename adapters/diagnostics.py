"""Local-linearity diagnostics of a language-model plant (the paper's Section 5).

Two questions decide whether an LTV model of the layers is worth controlling:

1. **Is each block locally linear?** For block ``k``, prompt ``p``, state
   ``z = z_k^{(p)}`` and a perturbation ``δ = ε ‖z‖ u`` (``u`` a random unit vector),
   the relative first-order prediction error is

       e_k(ε) = ‖φ_k(z + δ) − φ_k(z) − J_k δ‖ / ‖φ_k(z + δ) − φ_k(z)‖,

   with ``J_k = ∂φ_k/∂z`` at ``z`` (the same Jacobian the plant averages). It grows
   like ``O(ε)`` for a smooth block; small values over a range of ``ε`` mean the
   linear model predicts the block's response.

2. **Do different prompts share one linearisation?** For two prompts' Jacobians
   ``J_a, J_b`` with singular value decompositions ``J = U Σ Vᵀ``, keep the top-``m``
   singular triplets (``m = ⌊n/20⌋``, at least 1) and form the weighted bases
   ``W_a = U_a[:, :m] Σ_a[:m]`` and ``W_b`` alike (``side="left"``: output directions;
   ``side="right"`` uses ``V``). The similarity is

       s(J_a, J_b) = ‖W_aᵀ W_b‖_* / (‖W_a‖_F ‖W_b‖_F),

   the nuclear norm of the weighted cross-Gram over the Frobenius norms. It lies in
   ``[0, 1]`` (``‖AᵀB‖_* ≤ ‖A‖_F ‖B‖_F``), equals 1 exactly when ``W_b = W_a Q`` for
   an orthogonal ``Q`` (same dominant subspace with the same singular values) and 0
   when the two subspaces are orthogonal. A mean pairwise similarity near 1 supports
   averaging the Jacobians over prompts.

3. **Does a controller's input stay in that range?** For a law ``u = g_k(z)`` (the steerer's
   input at layer ``k``) the second central difference relative to the first,

       η_k = ‖φ_k(z + u) − 2 φ_k(z) + φ_k(z − u)‖ / ‖φ_k(z + u) − φ_k(z − u)‖,

   is the relative first-order error of question 1 at ``δ = u`` to leading order
   (``φ(z ± u) = φ(z) ± J u + ½ h(u) + O(‖u‖³)`` gives ``η = ‖h‖ / (2‖J u‖) + O(‖u‖²)``)
   and needs three block evaluations instead of a Jacobian (:func:`input_nonlinearity`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError
from ltv_control._validation import public_api
from ltv_control.adapters._checks import to_numpy64
from ltv_control.adapters.tokens import token_ids
from ltv_control.atomic import atomic_save_figure

__all__ = [
    "LinearityDiagnostics",
    "subspace_similarity",
    "similarity_matrix",
    "default_rank",
    "linearity_diagnostics",
    "input_nonlinearity",
    "plot_linearity",
]

DEFAULT_SCALES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


class LinearityDiagnostics(NamedTuple):
    """Result of :func:`linearity_diagnostics`.

    Attributes
    ----------
    layers : numpy.ndarray, shape (L,)
        Block indices examined.
    scales : numpy.ndarray, shape (S,)
        Relative perturbation sizes ``ε``.
    prediction_error : numpy.ndarray, shape (L, S)
        Mean over prompts and directions of ``e_k(ε)``.
    prediction_error_all : numpy.ndarray, shape (L, S, P, D)
        Every measured error (prompts × directions).
    similarity : numpy.ndarray, shape (L,)
        Mean over prompt pairs ``a < b`` of ``s(J_a, J_b)`` (NaN with one prompt).
    similarity_matrices : numpy.ndarray, shape (L, P, P)
        All pairwise similarities (diagonal 1).
    rank : int
        ``m``, the subspace dimension used.
    """

    layers: np.ndarray
    scales: np.ndarray
    prediction_error: np.ndarray
    prediction_error_all: np.ndarray
    similarity: np.ndarray
    similarity_matrices: np.ndarray
    rank: int


def default_rank(n: int) -> int:
    """``m = max(1, ⌊n/20⌋)``."""
    return max(1, n // 20)


def _as_numpy64(J: Any, name: str) -> np.ndarray:
    """``J`` as a float64 numpy matrix (:func:`to_numpy64` plus a shape check)."""
    J = to_numpy64(J, name)
    if J.ndim != 2:
        raise DimensionError(f"{name}: expected a matrix (n_out, n_in), found shape {J.shape}")
    return J


def _weighted_basis(J: np.ndarray, m: int, side: str) -> np.ndarray:
    U, s, Vt = np.linalg.svd(J, full_matrices=False)
    basis = U[:, :m] if side == "left" else Vt[:m].T
    return basis * s[:m]


def _check_side_rank(side: str, m: int | None, n: int) -> int:
    if side not in ("left", "right"):
        raise ArgumentError(f"side: expected 'left' or 'right', found {side!r}")
    if m is None:
        return default_rank(n)
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise ArgumentError(f"m: expected an int in [1, {n}], found {m!r}")
    return m


@public_api
def subspace_similarity(J_a: Any, J_b: Any, *, m: int | None = None, side: str = "left") -> float:
    """Top-``m`` weighted singular-subspace similarity ``‖W_aᵀW_b‖_* / (‖W_a‖_F ‖W_b‖_F)``.

    Parameters
    ----------
    J_a, J_b : array_like or torch.Tensor, shape (n_out, n_in)
    m : int or None, default None
        Subspace dimension; ``None`` means ``⌊n/20⌋`` (at least 1), ``n = min(shape)``.
    side : {"left", "right"}, default "left"
        Left (output) or right (input) singular vectors.

    Returns
    -------
    float in [0, 1]
    """
    A, B = _as_numpy64(J_a, "J_a"), _as_numpy64(J_b, "J_b")
    if A.shape != B.shape:
        raise DimensionError(f"J_b: expected shape {A.shape} (that of J_a), found {B.shape}")
    m = _check_side_rank(side, m, min(A.shape))
    Wa, Wb = _weighted_basis(A, m, side), _weighted_basis(B, m, side)
    denom = np.linalg.norm(Wa) * np.linalg.norm(Wb)
    if denom == 0.0:
        return float("nan")
    return float(np.linalg.svd(Wa.T @ Wb, compute_uv=False).sum() / denom)


@public_api
def similarity_matrix(jacobians: Any, *, m: int | None = None, side: str = "left") -> np.ndarray:
    """All pairwise :func:`subspace_similarity` values of a stack of Jacobians.

    Parameters
    ----------
    jacobians : array_like or torch.Tensor, shape (P, n_out, n_in)
    m : int or None, default None
        Subspace dimension (``⌊n/20⌋``, at least 1).
    side : {"left", "right"}, default "left"

    Returns
    -------
    numpy.ndarray, shape (P, P)
        Symmetric, ones on the diagonal.
    """
    if hasattr(jacobians, "detach"):
        jacobians = jacobians.detach().to("cpu").double().numpy()
    stack = np.asarray(jacobians, dtype=np.float64)
    if stack.ndim != 3:
        raise DimensionError(f"jacobians: expected shape (P, n_out, n_in), found {stack.shape}")
    m = _check_side_rank(side, m, min(stack.shape[1:]))
    bases = [_weighted_basis(J, m, side) for J in stack]
    norms = [np.linalg.norm(W) for W in bases]
    P = len(bases)
    out = np.eye(P)
    for a in range(P):
        for b in range(a + 1, P):
            value = np.linalg.svd(bases[a].T @ bases[b], compute_uv=False).sum() / (norms[a] * norms[b])
            out[a, b] = out[b, a] = value
    return out


@public_api
def _prediction_errors(local: Any, directions: Any, scales: np.ndarray) -> np.ndarray:
    """``‖φ(z+δ) − φ(z) − Jδ‖ / ‖φ(z+δ) − φ(z)‖`` for ``δ = ε‖z‖u``: array (S, B, D)."""
    import torch

    z, J = local.inputs, local.jacobians.double()
    out = np.empty((scales.size, z.shape[0], directions.shape[1]))
    with torch.no_grad():
        base = local.evaluate(z)
        for d in range(directions.shape[1]):
            u = directions[:, d].to(z.device)
            for s_i, eps in enumerate(scales):
                delta = (eps * z.double().norm(dim=-1, keepdim=True) * u).to(z.dtype)
                actual = (local.evaluate(z + delta) - base).double()
                predicted = torch.einsum("bij,bj->bi", J, delta.double())
                out[s_i, :, d] = ((actual - predicted).norm(dim=-1) / actual.norm(dim=-1)).cpu().numpy()
    return out


def linearity_diagnostics(
    plant: Any,
    prompts: list[str],
    *,
    layers: Any = None,
    scales: Any = DEFAULT_SCALES,
    n_directions: int = 4,
    m: int | None = None,
    side: str = "left",
    max_tokens: int = 24,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> LinearityDiagnostics:
    """Measure first-order prediction errors and cross-prompt subspace similarity per layer.

    Parameters
    ----------
    plant : ltv_control.adapters.LLMPlant
    prompts : list of str
    layers : iterable of int or None, default None
        Blocks to examine (``None``: all).
    scales : sequence of float, default (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
        Relative perturbation sizes ``ε`` (``‖δ‖ = ε ‖z‖``).
    n_directions : int, default 4
        Random unit directions ``u`` per prompt (the same for every scale and layer).
    m : int or None, default None
        Subspace dimension (``⌊n/20⌋``).
    side : {"left", "right"}, default "left"
    max_tokens : int, default 24
        Prompts keep their first ``max_tokens`` tokens.
    batch_size : int, default 8
        Prompts per replay batch.
    progress : bool, default True
        Show a tqdm progress bar.
    seed : int, default 0
        Seed of the random directions.

    Returns
    -------
    LinearityDiagnostics
    """
    import torch

    scales_arr = np.asarray(scales, dtype=np.float64).reshape(-1)
    if scales_arr.size == 0 or not np.all(np.isfinite(scales_arr)) or np.any(scales_arr <= 0):
        raise ArgumentError(f"scales: expected positive finite sizes, found {scales!r}")
    if isinstance(n_directions, bool) or not isinstance(n_directions, int) or n_directions < 1:
        raise ArgumentError(f"n_directions: expected a positive int, found {n_directions!r}")
    m = _check_side_rank(side, m, plant.state_dim)
    P, n, S = len(token_ids(plant.tokenizer, prompts, max_tokens)), plant.state_dim, scales_arr.size
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn((P, n_directions, n), generator=generator, dtype=torch.float64)
    directions /= directions.norm(dim=-1, keepdim=True)
    order: list[int] = []
    errors, similarity = [], []
    for local in plant.iter_local_models(prompts, layers=layers, max_tokens=max_tokens,
                                         batch_size=batch_size, progress=progress):
        if not order or order[-1] != local.layer:
            order.append(local.layer)
            errors.append(np.empty((S, P, n_directions)))
            per_prompt = torch.empty((P, n, n), dtype=torch.float64)
            similarity.append(per_prompt)
        per_prompt[local.index] = local.jacobians.to("cpu", torch.float64)
        errors[-1][:, local.index] = _prediction_errors(local, directions[local.index], scales_arr)
    similarity = np.stack([similarity_matrix(J, m=m, side=side) for J in similarity]) if order else \
        np.empty((0, P, P))
    errors = np.stack(errors) if order else np.empty((0, S, P, n_directions))
    if P > 1:
        upper = np.triu_indices(P, 1)
        mean_similarity = similarity[:, upper[0], upper[1]].mean(axis=1)
    else:
        mean_similarity = np.full(len(order), np.nan)
    return LinearityDiagnostics(
        layers=np.asarray(order),
        scales=scales_arr,
        prediction_error=errors.mean(axis=(2, 3)),
        prediction_error_all=errors,
        similarity=mean_similarity,
        similarity_matrices=similarity,
        rank=m,
    )


@public_api
def input_nonlinearity(
    plant: Any,
    prompts: list[str],
    laws: Any,
    *,
    max_tokens: int = 24,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Per-layer nonlinearity ``η_k`` of each block's response to a controller's own input.

    .. math::

        \\eta_k = \\operatorname{mean}_p
        \\frac{\\lVert \\varphi_k(z + u) - 2\\varphi_k(z) + \\varphi_k(z - u) \\rVert}
             {\\lVert \\varphi_k(z + u) - \\varphi_k(z - u) \\rVert},
        \\qquad z = z_k^{(p)},\\ u = g_k(z),

    with ``z_k^{(p)}`` prompt ``p``'s unsteered last-token state at block ``k`` and ``g_k`` the
    law of layer ``k`` (the input it would add there, open loop). To leading order ``η_k`` is
    the relative error of the first-order prediction ``J_k u`` of the block's response
    (module docstring, question 3); it is 0 for an affine block.

    Parameters
    ----------
    plant : LLMPlant
    prompts : list of str
        Prompts whose states are probed (e.g. the Jacobian prompts of the linearization).
    laws : dict of int to Law
        ``layer -> law`` with ``law(z, state)`` returning the input at states ``z`` (B, n), e.g.
        :meth:`ALQRSteerer.layer_laws`. Layers without a law are not probed.
    max_tokens : int, default 24
        Prompts keep their first ``max_tokens`` tokens.
    batch_size : int, default 8
    progress : bool, default True
        Show a tqdm progress bar.

    Returns
    -------
    numpy.ndarray, shape (T,), float64
        ``η_k``, averaged over the prompts whose input at layer ``k`` is not zero; NaN where
        there is no law or every prompt's input is zero.

    Raises
    ------
    ArgumentError
        ``laws`` is not a mapping of layer indices in ``[0, T)``.
    """
    import torch

    if not isinstance(laws, dict) or not all(isinstance(k, int) and 0 <= k < plant.horizon
                                              for k in laws):
        raise ArgumentError(f"laws: expected a dict of layer indices in [0, {plant.horizon}) to "
                            f"laws, found {type(laws).__name__}")
    total = np.zeros(plant.horizon)
    count = np.zeros(plant.horizon)
    for local in plant.iter_local_models(prompts, layers=sorted(laws), max_tokens=max_tokens,
                                         batch_size=batch_size, progress=progress,
                                         jacobians=False):
        z = local.inputs
        law = laws[local.layer].to(z.device)
        with torch.no_grad():
            u = law(z.float(), {}).to(z.dtype)
            size = u.double().norm(dim=-1)
            keep = size > 0
            if not bool(keep.any()):
                continue
            plus, base, minus = (local.evaluate(x).double() for x in (z + u, z, z - u))
            eta = (plus - 2 * base + minus).norm(dim=-1) / (plus - minus).norm(dim=-1).clamp_min(1e-300)
        total[local.layer] += float(eta[keep].sum())
        count[local.layer] += int(keep.sum())
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


@public_api
def plot_linearity(diagnostics: LinearityDiagnostics, path: str | os.PathLike) -> Path:
    """Write a two-panel PNG: ``e_k(ε)`` against ``ε`` per layer, and similarity per layer.

    Parameters
    ----------
    diagnostics : LinearityDiagnostics
        The result of :func:`linearity_diagnostics`.
    path : str or os.PathLike
        The PNG file to write (folders are created); written atomically (temporary
        file in the same folder, then renamed).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not isinstance(diagnostics, LinearityDiagnostics):
        raise ArgumentError(
            f"diagnostics: expected a LinearityDiagnostics, found {type(diagnostics).__name__}"
        )
    path = Path(path)
    fig, (ax_err, ax_sim) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        cmap = plt.get_cmap("viridis")
        L = len(diagnostics.layers)
        for row, k in enumerate(diagnostics.layers):
            ax_err.loglog(diagnostics.scales, diagnostics.prediction_error[row], marker="o", ms=3,
                          color=cmap(row / max(1, L - 1)), label=f"layer {k}" if L <= 8 else None)
        ax_err.set_xlabel("relative perturbation size ε")
        ax_err.set_ylabel("relative first-order error")
        ax_err.set_title("Local linearity of each block")
        if L <= 8:
            ax_err.legend(fontsize=7)
        ax_sim.plot(diagnostics.layers, diagnostics.similarity, marker="o")
        ax_sim.set_ylim(0, 1.02)
        ax_sim.set_xlabel("layer k")
        ax_sim.set_ylabel(f"mean top-{diagnostics.rank} subspace similarity")
        ax_sim.set_title("Cross-prompt Jacobian similarity")
        fig.tight_layout()
        atomic_save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return path
