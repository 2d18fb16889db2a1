"""A decoder-only language model as one discrete LTV plant over its layers.

Details: the Notes of :class:`LLMPlant`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from ltv_control.adapters._checks import check_positive_int
from ltv_control.adapters._blocks import (
    find_decoder_layers,
    hidden_size_of,
    replace_block_input,
)
from ltv_control.adapters._replay import (
    PrefixKV,
    ReplayError,
    batch_layout,
    block_input_of,
    clean_capture,
    materialize,
    step_capture_pair,
    verify_replay,
)
from ltv_control.adapters.model_loading import model_id_of
from ltv_control.adapters.tokens import left_pad, model_device, pad_token_id, token_ids

from ltv_control._exceptions import ArgumentError, DimensionError
from ltv_control._validation import public_api

__all__ = ["LLMPlant", "LocalModel"]

_METHODS = ("auto", "cached", "full")
#: rows (copies x prompts) replayed per reverse pass; bounds the replay's activation memory
_ROWS_PER_PASS = 2048


class LocalModel(NamedTuple):
    """Block ``layer``'s last-token map around a batch of prompts (see :meth:`LLMPlant.iter_local_models`)."""

    layer: int
    index: list
    jacobians: Any
    inputs: Any
    evaluate: Callable[[Any], Any]


class _Batch:
    """One batch of prompts: token tensors, its clean capture and (lazily) its replay layouts."""

    def __init__(self, index: list[int], ids: Any, mask: Any, positions: Any):
        self.index = index
        self.ids = ids
        self.mask = mask
        self.positions = positions
        self.clean: list | None = None
        self.step: list | None = None
        self.step_layout: list | None = None
        self.full_layout: list | None = None
        self.full_parts: list | None = None


class LLMPlant:
    """A causal language model seen as an LTV plant ``z_{k+1} = φ_k(z_k)`` over its decoder blocks.

    Parameters
    ----------
    model : transformers.PreTrainedModel or torch.nn.Module
        A decoder-only language model taking ``input_ids`` (and, when it accepts them,
        ``attention_mask``, ``position_ids``, a KV cache). Not modified.
    tokenizer : transformers tokenizer
        Prompts are tokenized as given (``tokenizer(prompt)``, no chat template).
    layers : torch.nn.ModuleList, list of torch.nn.Module, str or None, default None
        The decoder blocks; ``None`` finds them generically
        (:func:`ltv_control.adapters._blocks.find_decoder_layers`), a dotted path such
        as ``"transformer.h"`` or the modules themselves override the search.

    Attributes
    ----------
    horizon : int
        ``T``, the number of decoder blocks.
    state_dim : int
        ``n``, the hidden size.
    layers : list of torch.nn.Module
    layer_path : str or None
        Dotted path of the blocks inside ``model`` (``None`` when given as modules).
    model, tokenizer
    model_id : str
        :func:`ltv_control.adapters.model_loading.model_id_of` of the model.

    Notes
    -----
    The residual stream at the last token is the state: ``z_k`` is the input of
    decoder block ``k`` at the last position and ``z_{k+1} = φ_k(z_k)`` its output
    (``z_T`` is the last block's output, before any final norm). Linearising around
    a set of prompts gives

        A_k = (1/P) Σ_p ∂φ_k(z_k^{(p)}) / ∂z_k^{(p)},   k = 0, ..., T-1,

    the Jacobian of block ``k``'s output at the last token with respect to its input
    at the last token, every earlier position held at its clean value, averaged over
    the prompts.

    How the Jacobians are computed
    ------------------------------
    Holding the earlier positions fixed means holding their keys and values fixed:
    block ``k`` at the last position is then a one-token function of ``z_k`` (its own
    query/key/value and MLP). The plant therefore

    1. captures every block call of one ``use_cache=False`` forward pass per batch
       (cache objects dropped; each block re-invoked with its captured arguments must
       reproduce its recorded output bit for bit), which gives the states and the
       linearisation points;
    2. runs the model's own cached decoding (prefill of the first ``L-1`` tokens,
       then one step) to record each block's one-token call and the prefix
       keys/values its attention reads;
    3. replays each block once on the last tokens of a batch of ``B`` prompts, with
       the prefix keys/values fixed, and takes vector-Jacobian products for all ``n``
       output coordinates at once (``torch.autograd.grad(..., is_grads_batched=True)``):
       one batched reverse pass gives every row of all ``B`` Jacobians, about one
       one-token pass per direction. (Where an operation cannot be batched this way,
       ``c`` copies of the batch are replayed instead and one reverse pass gives ``c``
       rows; about twice the work.)

    When a model does not decode through a cache this replay understands (checked:
    the replayed step must reproduce the clean last-token output), the plant falls
    back to replaying the full sequence (``method="full"``): exact too, about ``L``
    times slower. Both paths are exact reverse-mode derivatives, not finite
    differences.

    Padding: prompts of one batch are left-padded and given explicit position ids
    (``cumsum(mask) - 1``), so a padded prompt sees the same positions as alone;
    pad rows are zeroed between blocks (eager float64 attention would make them NaN).
    Models whose forward takes no ``attention_mask`` or no ``position_ids`` are fed
    batches of equal-length prompts only (no padding).
    """

    @public_api
    def __init__(self, model: Any, tokenizer: Any, *, layers: Any = None):
        import torch

        if not isinstance(model, torch.nn.Module):
            raise ArgumentError(f"model: expected a torch.nn.Module, found {type(model).__name__}")
        if not callable(tokenizer):
            raise ArgumentError(f"tokenizer: expected a callable tokenizer, found {type(tokenizer).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.layers, self.layer_path = find_decoder_layers(model, layers)
        self.horizon = len(self.layers)
        hidden = hidden_size_of(model)
        if hidden is None:
            raise ArgumentError(
                "model: cannot tell its hidden size (no config.hidden_size and no input embeddings)"
            )
        self.state_dim = int(hidden)
        self.model_id = model_id_of(model)
        self._method_cache: str | None = None
        self._cached_unsupported = False
        self._active_layers: set | None = None  # blocks the current computation replays
        self._batched_vjp: bool | None = None  # None: untried; False: unsupported by the model

    @property
    def jacobian_method(self) -> str | None:
        """The replay the last Jacobian computation used: ``"cached"`` (one-token replay with
        the prefix keys/values fixed), ``"full"`` (full-sequence replay), or ``None`` before any."""
        return self._method_cache

    def __repr__(self) -> str:
        path = f", layers={self.layer_path!r}" if self.layer_path else ""
        return f"LLMPlant({self.model_id!r}, horizon={self.horizon}, state_dim={self.state_dim}{path})"

    # ----------------------------------------------------------------------------- tokenizing
    def _device(self) -> Any:
        return model_device(self.model)

    def _token_ids(self, prompts: Any, max_tokens: int | None) -> list[list[int]]:
        return token_ids(self.tokenizer, prompts, max_tokens)

    def _accepts_mask(self) -> bool:
        from ltv_control.adapters._replay import forward_kwargs

        return "attention_mask" in forward_kwargs(self.model, attention_mask=True)

    def _accepts_positions(self) -> bool:
        from ltv_control.adapters._replay import forward_kwargs

        return "position_ids" in forward_kwargs(self.model, position_ids=True)

    def _batches(self, encoded: list[list[int]], batch_size: int) -> list[_Batch]:
        """Left-padded batches; prompts of similar length are grouped to limit padding.

        A model that takes no attention mask, or no position ids (its positions would count
        the pad tokens), gets batches of equal-length prompts only: no padding at all.
        """
        pad_id = pad_token_id(self.tokenizer)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        if self._accepts_mask() and self._accepts_positions():
            groups = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        else:
            groups = []
            for i in order:
                if groups and len(encoded[groups[-1][0]]) == len(encoded[i]) and len(groups[-1]) < batch_size:
                    groups[-1].append(i)
                else:
                    groups.append([i])
        device = self._device()
        batches = []
        for index in groups:
            ids, mask, positions = left_pad([encoded[i] for i in index], pad_id, device=device)
            batches.append(_Batch(index, ids, mask, positions))
        return batches

    # ----------------------------------------------------------------------------- capturing
    def _capture_clean(self, batch: _Batch) -> None:
        mask = batch.mask if self._accepts_mask() else None
        batch.clean = clean_capture(self.model, self.layers, batch.ids, mask, batch.positions)
        verify_replay(self.layers, batch.clean, mask, only=self._active_layers)

    @staticmethod
    def _doubled(batch: _Batch) -> tuple:
        import torch

        return tuple(torch.cat([t, t], dim=0) for t in (batch.ids, batch.mask, batch.positions))

    def _prepare_step(self, batch: _Batch) -> None:
        """Step capture at batch B and 2B, layouts, and checks against the clean capture."""
        import torch

        mask = batch.mask if self._accepts_mask() else None
        step, step2 = step_capture_pair(self.model, self.layers, batch.ids, mask, batch.positions)
        layouts = []
        for k, (block, call, call2, clean) in enumerate(zip(self.layers, step, step2, batch.clean, strict=True)):
            layout = batch_layout(call, call2, with_kv=True)
            if self._active_layers is not None and k not in self._active_layers:
                layouts.append(layout)  # never replayed in this computation: checks skipped
                continue
            # the read-only prefix replay must reproduce the decoding step bit for bit ...
            replay = self._replay_step(block, layout, block_input_of(call), copies=1, grad=False)
            if not torch.equal(replay, call.output):
                raise ReplayError(f"block {k}: the prefix replay does not reproduce the decoding step")
            # ... and, at the clean input, the clean full-sequence output at the last token
            x_clean = block_input_of(clean)[:, -1:, :]
            y = self._replay_step(block, layout, x_clean, copies=1, grad=False)[:, -1, :]
            y_clean = clean.output[:, -1, :]
            scale = y_clean.abs().max().clamp(min=1.0)
            err = ((y - y_clean).abs().max() / scale).item()
            if not err <= _step_tolerance(y.dtype):
                raise ReplayError(
                    f"block {k}: the cached one-token replay differs from the full-sequence output "
                    f"by {err:.3g} (relative)"
                )
            layouts.append(layout)
        batch.step_layout = layouts

    def _prepare_full(self, batch: _Batch) -> None:
        """Full-sequence replay layouts. A padded batch is split into unpadded single prompts:
        pad query rows can hold NaN (eager float64 attention) whose gradient would spread."""

        if bool((batch.mask == 0).any()):
            parts = []
            for row in range(batch.ids.shape[0]):
                keep = batch.mask[row] != 0
                part = _Batch(
                    [row],
                    batch.ids[row : row + 1, keep],
                    batch.mask[row : row + 1, keep],
                    batch.positions[row : row + 1, keep],
                )
                self._capture_clean(part)
                self._prepare_full(part)
                parts.append(part)
            batch.full_parts = parts
            batch.full_layout = []
            return
        batch.full_parts = None
        mask = batch.mask if self._accepts_mask() else None
        ids2, mask2, pos2 = self._doubled(batch)
        clean2 = clean_capture(self.model, self.layers, ids2, mask2 if mask is not None else None, pos2)
        batch.full_layout = [
            batch_layout(call, call2, with_kv=False) for call, call2 in zip(batch.clean, clean2, strict=True)
        ]

    # ----------------------------------------------------------------------------- replaying
    @staticmethod
    def _replay_step(block: Any, layout: tuple, x: Any, *, copies: int, grad: bool) -> Any:
        """Block output at the last token for ``x`` (copies*B, 1, n), prefix keys/values fixed."""
        import torch

        args, kwargs, kv, queries = layout
        cache = PrefixKV(materialize(kv, copies), queries)
        args = materialize(args, copies, cache)
        kwargs = materialize(kwargs, copies, cache)
        args, kwargs = replace_block_input(args, kwargs, x)
        from ltv_control.adapters._blocks import get_block_output

        with torch.set_grad_enabled(grad):
            return get_block_output(block(*args, **kwargs))

    @staticmethod
    def _replay_full(block: Any, layout: tuple, prefix: Any, x: Any, *, copies: int) -> Any:
        import torch
        from ltv_control.adapters._blocks import get_block_output

        args, kwargs = layout[:2]
        args = materialize(args, copies)
        kwargs = materialize(kwargs, copies)
        hidden = torch.cat([torch.cat([prefix] * copies, dim=0), x], dim=1)
        args, kwargs = replace_block_input(args, kwargs, hidden)
        return get_block_output(block(*args, **kwargs))

    def _jacobians(self, k: int, batch: _Batch, method: str) -> Any:
        """Per-prompt Jacobians of block k for one batch: (B, n, n) in the model's dtype."""
        import torch

        if method == "full" and batch.full_parts:
            return torch.cat([self._jacobians(k, part, "full") for part in batch.full_parts], dim=0)
        block = self.layers[k]
        clean_in = block_input_of(batch.clean[k])
        x = clean_in[:, -1:, :].detach()  # (B, 1, n)
        n = x.shape[-1]
        if n != self.state_dim:
            raise DimensionError(f"block {k}: hidden size {n}, expected state_dim {self.state_dim}")
        prefix = clean_in[:, :-1, :].detach()

        def last_output(inputs: Any, copies: int) -> Any:
            if method == "cached":
                y = self._replay_step(block, batch.step_layout[k], inputs, copies=copies, grad=True)
            else:
                y = self._replay_full(block, batch.full_layout[k], prefix, inputs, copies=copies)
            return y[:, -1, :]

        if self._batched_vjp is not False:
            try:
                out = self._jacobians_batched_vjp(last_output, x)
                self._batched_vjp = True
                return out
            except Exception:  # an op without a batching rule that also has no fallback
                if self._batched_vjp:
                    raise
                self._batched_vjp = False
        return self._jacobians_replicated(last_output, x)

    @staticmethod
    def _jacobians_batched_vjp(last_output: Any, x: Any) -> Any:
        """One forward pass of the B prompts, then vector-Jacobian products for all n output
        coordinates at once (``is_grads_batched``): about one one-token pass per direction."""
        import torch

        B, n = x.shape[0], x.shape[-1]
        copies = max(1, min(n, _ROWS_PER_PASS // B))
        out = torch.empty((B, n, n), dtype=x.dtype, device=x.device)
        X = x.clone().requires_grad_(True)
        with torch.enable_grad(), warnings.catch_warnings():
            # attention backward kernels without a vmap rule are looped over the directions
            warnings.filterwarnings("ignore", message=".*batching rule.*", category=UserWarning)
            y = last_output(X, 1)  # (B, n)
            for start in range(0, n, copies):
                c = min(copies, n - start)
                rows = torch.arange(c, device=y.device)
                cot = torch.zeros((c, B, n), dtype=y.dtype, device=y.device)
                cot[rows, :, start + rows] = 1
                (grad,) = torch.autograd.grad(
                    y, X, cot, is_grads_batched=True, retain_graph=start + c < n
                )
                out[:, start : start + c, :] = grad[:, :, -1, :].transpose(0, 1)
        return out

    @staticmethod
    def _jacobians_replicated(last_output: Any, x: Any) -> Any:
        """Fallback: ``c`` copies of the batch in one forward pass, one reverse pass gives ``c``
        rows of every prompt's Jacobian (no vmap; about two one-token passes per direction)."""
        import torch

        B, n = x.shape[0], x.shape[-1]
        passes = math.ceil(n / max(1, min(n, _ROWS_PER_PASS // B)))
        copies = math.ceil(n / passes)
        out = torch.empty((B, n, n), dtype=x.dtype, device=x.device)
        for start in range(0, n, copies):
            c = min(copies, n - start)
            X = torch.cat([x] * c, dim=0).requires_grad_(True)  # (c*B, 1, n), copy-major
            with torch.enable_grad():
                y = last_output(X, c)  # (c*B, n)
                cot = torch.zeros((c, B, n), dtype=y.dtype, device=y.device)
                rows = torch.arange(c, device=y.device)
                cot[rows, :, start + rows] = 1
                (grad,) = torch.autograd.grad(y, X, cot.reshape(c * B, n))
            out[:, start : start + c, :] = grad.reshape(c, B, n).transpose(0, 1)
        return out

    def _last_inputs(self, k: int, batch: _Batch) -> Any:
        """Clean inputs of block k at the last token, (B, n), model dtype and device."""
        return block_input_of(batch.clean[k])[:, -1, :].detach()

    def _evaluate(self, k: int, batch: _Batch, method: str, z: Any) -> Any:
        """φ_k at the last token for last-token inputs ``z`` (B, n), other positions clean."""
        import torch

        if method == "full" and batch.full_parts:
            return torch.cat(
                [self._evaluate(k, part, "full", z[i : i + 1]) for i, part in enumerate(batch.full_parts)]
            )
        x = z[:, None, :]
        with torch.no_grad():
            if method == "cached":
                y = self._replay_step(self.layers[k], batch.step_layout[k], x, copies=1, grad=False)
            else:
                prefix = block_input_of(batch.clean[k])[:, :-1, :].detach()
                y = self._replay_full(self.layers[k], batch.full_layout[k], prefix, x, copies=1)
        return y[:, -1, :]

    def _choose_method(self, batch: _Batch, method: str) -> str:
        """The replay for this batch; ``auto`` tries the cached one-token replay once per plant
        and keeps to the full-sequence replay after a failure (warned once)."""
        if method == "full" or batch.ids.shape[1] < 2:
            if batch.full_layout is None:
                self._prepare_full(batch)
            if method == "full" or self._method_cache is None:
                self._method_cache = "full"
            return "full"
        if method == "cached" or not self._cached_unsupported:
            try:
                if batch.step_layout is None:
                    self._prepare_step(batch)
                self._method_cache = "cached"
                return "cached"
            except Exception as exc:  # any failure of the fast path: use the exact full replay
                if method == "cached":
                    raise
                warnings.warn(
                    f"{self.model_id}: one-token cached replay unavailable ({exc}); "
                    "using the full-sequence replay (exact, about L times slower)",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self._cached_unsupported = True
        if batch.full_layout is None:
            self._prepare_full(batch)
        self._method_cache = "full"
        return "full"

    # ----------------------------------------------------------------------------- public API
    def _run_guard(self) -> Any:
        """Context manager: the model in eval mode while capturing, restored afterwards."""
        plant = self

        class _Guard:
            def __enter__(self) -> None:
                self.training = plant.model.training
                plant.model.eval()

            def __exit__(self, *exc: Any) -> None:
                plant.model.train(self.training)

        return _Guard()

    @public_api
    def last_token_states(
        self, prompts: Sequence[str], *, batch_size: int = 8, max_tokens: int | None = None
    ) -> Any:
        """States ``z_0..z_T`` at the last token of each prompt.

        Parameters
        ----------
        prompts : list of str
        batch_size : int, default 8
            Prompts per forward pass (left-padded; the result does not depend on it).
        max_tokens : int or None, default None
            Keep only the first ``max_tokens`` tokens of each prompt (``None``: all).

        Returns
        -------
        torch.Tensor, shape (P, T+1, n), float32 on CPU
            ``[:, k]`` is the input of block ``k`` at the last token, ``[:, T]`` the last
            block's output (before any final norm).
        """
        import torch

        batch_size = check_positive_int(batch_size, "batch_size")
        if max_tokens is not None:
            max_tokens = check_positive_int(max_tokens, "max_tokens")
        encoded = self._token_ids(prompts, max_tokens)
        states = torch.empty((len(encoded), self.horizon + 1, self.state_dim), dtype=torch.float32)
        with self._run_guard():
            for batch in self._batches(encoded, batch_size):
                mask = batch.mask if self._accepts_mask() else None
                calls = clean_capture(self.model, self.layers, batch.ids, mask, batch.positions)
                columns = [block_input_of(call)[:, -1, :] for call in calls] + [calls[-1].output[:, -1, :]]
                stacked = torch.stack([c.detach().to("cpu", torch.float32) for c in columns], dim=1)
                states[batch.index] = stacked
        return states

    @public_api
    def setpoint(self, desired: Sequence[str], undesired: Sequence[str], *, lam: float = 1.0,
                 batch_size: int = 8) -> Any:
        """The linear-feature setpoint of this plant (the first step of every steerer fit).

        ``e_k = mean(desired) − mean(undesired)`` of the last-token block inputs ``z_k``,
        ``v_k = e_k/‖e_k‖``, ``β*_k = lam·‖e_k‖`` (:func:`ltv_control.setpoint.linear_feature_setpoint`).

        Parameters
        ----------
        desired, undesired : list of str
        lam : float, default 1.0
        batch_size : int, default 8
            Prompts per forward pass of :meth:`last_token_states`.

        Returns
        -------
        ltv_control.adapters.Setpoint
            ``(v (T, n), e (T, n), e_norm (T,), beta_star (T,), lam, model_id, layer_path)``,
            float64 numpy arrays.
        """
        from ltv_control.adapters.setpoint import measure_setpoint

        return measure_setpoint(self, desired, undesired, lam=lam, batch_size=batch_size)

    @public_api
    def iter_jacobians(
        self,
        prompts: Sequence[str],
        *,
        layers: Iterable[int] | None = None,
        max_tokens: int = 24,
        batch_size: int = 8,
        progress: bool = True,
        reduce: str = "mean",
        method: str = "auto",
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(k, A_k)`` for each requested layer, in the order given.

        ``A_k = (1/P) Σ_p ∂φ_k(z_k^{(p)})/∂z_k^{(p)}`` (block output at the last token with
        respect to block input at the last token, earlier positions at their clean values),
        accumulated as a running mean in float64.

        Memory: all prompts' activations are captured first (one forward pass per batch,
        O(P·L·T·n)); beyond that each step holds O(n²) (one batch of Jacobians and the
        running mean), so a backward Riccati recursion can stream the layers in
        ``reversed(range(T))`` order without ever holding the whole (T, n, n) stack.

        Parameters
        ----------
        prompts : list of str
        layers : iterable of int or None, default None
            Block indices in the order to yield them (``None``: ``range(T)``); negative
            indices count from the end.
        max_tokens : int, default 24
            Prompts keep their first ``max_tokens`` tokens.
        batch_size : int, default 8
        progress : bool, default True
            Show a tqdm progress bar.
        reduce : {"mean", "none"}, default "mean"
            ``"none"`` yields the per-prompt Jacobians, shape (P, n, n), in prompt order.
        method : {"auto", "cached", "full"}, default "auto"
            ``"cached"``: one-token replay with the prefix keys/values fixed;
            ``"full"``: full-sequence replay; ``"auto"``: cached when the model supports it.

        Yields
        ------
        (k, A_k) : (int, torch.Tensor)
            ``A_k`` float64 on CPU, shape (n, n) (or (P, n, n) with ``reduce="none"``).
        """
        import torch

        if reduce not in ("mean", "none"):
            raise ArgumentError(f"reduce: expected 'mean' or 'none', found {reduce!r}")
        max_tokens = check_positive_int(max_tokens, "max_tokens")
        total, n = len(self._token_ids(prompts, max_tokens)), self.state_dim
        current, seen = None, 0
        for local in self.iter_local_models(prompts, layers=layers, max_tokens=max_tokens,
                                            batch_size=batch_size, progress=progress, method=method):
            if local.layer != current:
                if current is not None:
                    yield current, (per_prompt if reduce == "none" else mean)
                current, seen = local.layer, 0
                mean = torch.zeros((n, n), dtype=torch.float64)
                per_prompt = torch.empty((total, n, n), dtype=torch.float64) if reduce == "none" else None
            J = local.jacobians.to("cpu", torch.float64)
            if per_prompt is not None:
                per_prompt[local.index] = J
            seen += J.shape[0]
            mean += (J.sum(dim=0) - J.shape[0] * mean) / seen
        if current is not None:
            yield current, (per_prompt if reduce == "none" else mean)

    @public_api
    def iter_local_models(
        self,
        prompts: Sequence[str],
        *,
        layers: Iterable[int] | None = None,
        max_tokens: int = 24,
        batch_size: int = 8,
        progress: bool = True,
        method: str = "auto",
        jacobians: bool = True,
    ) -> Iterator[LocalModel]:
        """Yield, layer by layer (in the order given) and batch by batch, each block's local model.

        Block ``k`` at the last token, the earlier positions held at their clean values, is the
        map ``z ↦ φ_k(z)``; a :class:`LocalModel` holds its Jacobians ``∂φ_k/∂z`` at the prompts'
        clean inputs and a function evaluating ``φ_k`` at other inputs (for linearity checks).

        Parameters
        ----------
        prompts : list of str
        layers : iterable of int or None, default None
            Block indices in the order to visit them (``None``: ``range(T)``).
        max_tokens : int, default 24
        batch_size : int, default 8
        progress : bool, default True
        method : {"auto", "cached", "full"}, default "auto"
            See :meth:`iter_jacobians`.

        Yields
        ------
        LocalModel
            ``(layer, index, jacobians (B, n, n), inputs (B, n), evaluate)``; tensors in the
            model's dtype and device, ``index`` the batch's prompt positions.
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        max_tokens = check_positive_int(max_tokens, "max_tokens")
        if method not in _METHODS:
            raise ArgumentError(f"method: expected one of {_METHODS}, found {method!r}")
        order = self._layer_order(layers)
        encoded = self._token_ids(prompts, max_tokens)
        with self._run_guard():
            batches, methods = self._prepared_batches(encoded, batch_size, order, method)
            bar = _progress(len(order) * len(batches), progress,
                            "Jacobians" if jacobians else "block maps")
            try:
                for k in order:
                    for batch, used in zip(batches, methods, strict=True):
                        J = self._jacobians(k, batch, used).detach() if jacobians else None
                        yield LocalModel(k, batch.index, J, self._last_inputs(k, batch),
                                         functools.partial(self._evaluate, k, batch, used))
                        bar.update(1)
            finally:
                bar.close()

    def _prepared_batches(self, encoded: list, batch_size: int, order: list[int], method: str) -> tuple:
        """Left-padded batches with their clean captures, and the replay method of each."""
        batches = self._batches(encoded, batch_size)
        self._active_layers = set(order)
        try:
            for batch in batches:
                self._capture_clean(batch)
            methods = [self._choose_method(batch, method) for batch in batches]
        finally:
            self._active_layers = None
        return batches, methods

    @public_api
    def linearize(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 24,
        batch_size: int = 8,
        progress: bool = True,
        method: str = "auto",
    ) -> Any:
        """The LTV plant ``z_{k+1} = A_k z_k`` linearised around ``prompts`` (B = identity).

        Parameters
        ----------
        prompts : list of str
        max_tokens : int, default 24
            Prompts keep their first ``max_tokens`` tokens.
        batch_size : int, default 8
        progress : bool, default True
        method : {"auto", "cached", "full"}, default "auto"
            See :meth:`iter_jacobians`.

        Returns
        -------
        ltv_control.LTVSystem
            ``A`` float64 torch tensor on CPU, shape (T, n, n); ``B=None`` (identity input
            matrix: the steering input is added to the residual stream).
        """
        import torch

        from ltv_control.system import LTVSystem

        A = torch.empty((self.horizon, self.state_dim, self.state_dim), dtype=torch.float64)
        for k, A_k in self.iter_jacobians(
            prompts, max_tokens=max_tokens, batch_size=batch_size, progress=progress, method=method
        ):
            A[k] = A_k
        return LTVSystem(A)

    def _layer_order(self, layers: Iterable[int] | None) -> list[int]:
        if layers is None:
            return list(range(self.horizon))
        if isinstance(layers, int | str):
            raise ArgumentError("layers: expected an iterable of block indices")
        order = []
        for k in layers:
            if isinstance(k, bool) or not isinstance(k, int):
                raise ArgumentError(f"layers: expected int block indices, found {type(k).__name__}")
            if not -self.horizon <= k < self.horizon:
                raise DimensionError(f"layers: index {k} out of range for {self.horizon} blocks")
            order.append(k % self.horizon)
        return order


def _step_tolerance(dtype: Any) -> float:
    import torch

    # blocks often compute norms in float32 even in float64 models, and the one-token pass sums
    # in another order than the full sequence: allow float32 rounding, flag real differences.
    return max(1e-4, 8 * torch.finfo(dtype).eps)


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)
