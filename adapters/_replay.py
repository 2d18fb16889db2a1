"""Capturing decoder-block calls and replaying one block with a perturbed last-token input.

Two captures serve the plant (:mod:`ltv_control.adapters.plant`):

*clean capture*
    one ``use_cache=False`` forward pass of the whole model, with a forward
    pre-hook and a forward hook on every block recording its call arguments
    and its output. Cache objects found in the arguments are dropped; a block
    re-invoked with the recorded arguments must reproduce the recorded output
    bit for bit (:func:`verify_replay`), otherwise the capture is refused.
*step capture*
    the model's own cached decoding, split in two passes: a prefill over the
    first ``L-1`` tokens (``use_cache=True``), then one step over the last
    token. During the step every block's arguments are recorded together with
    the keys/values its attention read from the cache. A block replayed on the
    last token alone, with a read-only :class:`PrefixKV` in place of the cache,
    then computes exactly ``φ_k`` at the last position with the earlier
    positions' keys/values fixed, at the cost of one token.

Replay with ``c`` perturbed copies needs every batched tensor argument repeated
``c`` times. Which tensors carry the batch (and along which dimension) is read
off by capturing the same prompts twice, with batch ``B`` and ``2B``
(:func:`batch_layout`), so no family-specific knowledge is needed.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from ltv_control.adapters._blocks import (
    get_block_input,
    get_block_output,
    replace_block_output,
)

from ltv_control._exceptions import ControlError

__all__ = [
    "ReplayError",
    "BlockCall",
    "PrefixKV",
    "forward_kwargs",
    "clean_capture",
    "step_capture",
    "step_capture_pair",
    "verify_replay",
    "batch_layout",
    "materialize",
]


class ReplayError(ControlError, RuntimeError):
    """A captured block call cannot be replayed faithfully."""


@dataclass
class BlockCall:
    """One recorded block call: ``block(*args, **kwargs) -> output``.

    ``output`` is the hidden-states tensor the block returned (pad rows zeroed),
    ``kv`` the ``(keys, values)`` the block's attention read from the cache,
    without the newest position (step capture only), else ``None``;
    ``queries`` the ``(method name, answer)`` of every read-only query the block
    made of the cache (e.g. ``get_seq_length``), in call order (step capture only).
    """

    args: tuple
    kwargs: dict
    output: Any = None
    kv: list = field(default_factory=list)
    queries: list = field(default_factory=list)


def _is_cache(obj: Any) -> bool:
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover - transformers always present with the adapters
        return False
    return isinstance(obj, Cache)


def _accepted(fn: Any) -> tuple[set[str], bool]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set(), True
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return set(params), var_kw


def forward_kwargs(model: Any, **candidates: Any) -> dict:
    """The subset of ``candidates`` that ``model.forward`` accepts by name (``None`` values dropped).

    The keyword ``cache`` is passed as ``cache`` or ``past_key_values``, whichever the
    forward signature names.
    """
    names, _ = _accepted(model.forward)
    out = {}
    for key, value in candidates.items():
        if value is None:
            continue
        if key == "cache":
            if "cache" in names:
                out["cache"] = value
            elif "past_key_values" in names:
                out["past_key_values"] = value
            continue
        if key in names:
            out[key] = value
    return out


def _drop_caches(tree: Any) -> Any:
    """Replace every cache object (and ``use_cache=True``) in a call-argument tree."""
    if _is_cache(tree):
        return None
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return tuple(_drop_caches(t) for t in tree)
    if isinstance(tree, list):
        return [_drop_caches(t) for t in tree]
    if isinstance(tree, dict):
        return {k: (False if k == "use_cache" else _drop_caches(v)) for k, v in tree.items()}
    return tree


class _Hooks:
    """Context manager recording every block's calls; removes its hooks on exit."""

    def __init__(self, blocks: list, pad: Any = None):
        self.blocks = blocks
        self.pad = pad  # (B, L) bool, True at pad positions, or None
        self.calls: list[BlockCall | None] = [None] * len(blocks)
        self.current: int | None = None
        self.handles: list = []

    def _sanitize(self, hidden: Any) -> Any:
        """Zero the pad rows (eager float64 attention turns them into NaN that would spread)."""
        if self.pad is None or hidden.dim() != 3 or hidden.shape[:2] != self.pad.shape:
            return hidden
        pad = self.pad.to(hidden.device).unsqueeze(-1)
        return hidden.masked_fill(pad, 0)

    def __enter__(self) -> _Hooks:
        for k, block in enumerate(self.blocks):

            def pre(module: Any, args: tuple, kwargs: dict, k: int = k) -> None:
                self.current = k
                self.calls[k] = BlockCall(tuple(args), dict(kwargs))

            def post(module: Any, args: tuple, kwargs: dict, output: Any, k: int = k) -> Any:
                hidden = self._sanitize(get_block_output(output))
                self.calls[k].output = hidden.detach()
                self.current = None
                return replace_block_output(output, hidden)

            self.handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            self.handles.append(block.register_forward_hook(post, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def clean_capture(model: Any, blocks: list, ids: Any, mask: Any, positions: Any) -> list[BlockCall]:
    """Record every block call of one ``use_cache=False`` forward pass (cache objects dropped).

    Parameters
    ----------
    ids, mask, positions : torch.Tensor, shape (B, L)
        Left-padded token ids, attention mask (1 = token) and position ids.

    Returns
    -------
    list of BlockCall, one per block, ``output`` of shape (B, L, n).
    """
    import torch

    pad = (mask == 0) if mask is not None and bool((mask == 0).any()) else None
    kwargs = forward_kwargs(
        model, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1
    )
    with torch.no_grad(), _Hooks(blocks, pad) as hooks:
        model(input_ids=ids, **kwargs)
    calls = hooks.calls
    for k, call in enumerate(calls):
        if call is None or call.output is None:
            raise ReplayError(
                f"block {k} was not called during the forward pass; the layers found are not the "
                "model's decoder blocks (pass layers= explicitly)"
            )
        hidden = block_input_of(call)
        for what, tensor in (("input", hidden), ("output", call.output)):
            if tensor.dim() != 3 or tuple(tensor.shape[:2]) != tuple(ids.shape):
                raise ReplayError(
                    f"block {k}: its hidden-states {what} has shape {tuple(tensor.shape)}, expected "
                    f"(batch, tokens, hidden) = ({ids.shape[0]}, {ids.shape[1]}, n); the layers found "
                    "do not carry one residual stream (pass layers= explicitly)"
                )
        call.args = _drop_caches(call.args)
        call.kwargs = _drop_caches(call.kwargs)
    return calls


def _replayed_output(block: Any, call: BlockCall, pad: Any = None) -> Any:
    import torch

    with torch.no_grad():
        hidden = get_block_output(block(*call.args, **call.kwargs))
    if pad is not None and hidden.dim() == 3 and hidden.shape[:2] == pad.shape:
        hidden = hidden.masked_fill(pad.to(hidden.device).unsqueeze(-1), 0)
    return hidden


def verify_replay(blocks: list, calls: list[BlockCall], mask: Any = None, only: Any = None) -> None:
    """Re-invoke every block with its recorded arguments; the output must match bit for bit.

    ``only`` (a set of block indices) restricts the check to the blocks that will be replayed.

    Raises
    ------
    ReplayError
        A block's replay differs (a captured KV cache, dropout in training mode, a
        stateful block, ...); Jacobians from such a capture would be wrong.
    """
    import torch

    pad = (mask == 0) if mask is not None and bool((mask == 0).any()) else None
    for k, (block, call) in enumerate(zip(blocks, calls, strict=True)):
        if only is not None and k not in only:
            continue
        again = _replayed_output(block, call, pad)
        if not torch.equal(again, call.output):
            diff = (again - call.output).abs().nan_to_num(float("inf")).max().item()
            raise ReplayError(
                f"block {k}: re-invoking it with its captured arguments does not reproduce its "
                f"recorded output (max abs difference {diff:.3g}); the block is stateful, "
                "captured a cache, or the model is in training mode (dropout)"
            )


#: read-only cache queries a block may make during a decoding step (MPT asks the sequence
#: length); their answers are recorded at step capture and repeated by :class:`PrefixKV`
CACHE_QUERIES = ("get_seq_length",)


class PrefixKV:
    """Read-only stand-in for a KV cache in a replayed block call.

    ``update(keys, values, ...)`` returns the recorded prefix keys/values (the
    earlier positions, held fixed) concatenated with the new ones along the
    sequence axis (``-2``); nothing is stored, so replays never accumulate.
    A read-only query named in :data:`CACHE_QUERIES` returns the answer the real
    cache gave during the captured step (``queries``: ``(name, answer)`` pairs in
    call order); the replay is then the captured step exactly, which the plant
    checks bit for bit.
    """

    def __init__(self, kv: list, queries: list | None = None):
        self._kv = kv
        self._next = 0
        self._queries = list(queries or [])
        self._next_query = 0

    def _answer(self, name: str) -> Any:
        if self._next_query >= len(self._queries) or self._queries[self._next_query][0] != name:
            raise ReplayError(
                f"replayed block asked cache.{name} out of the order recorded during the capture"
            )
        answer = self._queries[self._next_query][1]
        self._next_query += 1
        return answer

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple:
        import torch

        if self._next >= len(self._kv):
            raise ReplayError("replayed block called the cache more often than during the capture")
        keys, values = self._kv[self._next]
        self._next += 1
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in CACHE_QUERIES and any(q[0] == name for q in self._queries):
            return lambda *args, **kwargs: self._answer(name)
        raise AttributeError(
            f"replayed block used cache.{name}, which the prefix replay does not support"
        )


def _cache_out(output: Any) -> Any:
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


def step_capture_pair(
    model: Any, blocks: list, ids: Any, mask: Any, positions: Any
) -> tuple[list[BlockCall], list[BlockCall]]:
    """:func:`step_capture` at batch B and at batch 2B (the batch twice), sharing one prefill.

    The 2B capture only serves :func:`batch_layout`. The prefilled cache is copied and
    doubled with ``reorder_cache``; caches without it get a second prefill.
    """
    import copy

    import torch

    calls_2b: list = []
    doubled = None

    def fork(cache: Any) -> None:
        nonlocal doubled
        try:
            twin = copy.deepcopy(cache)
            index = torch.arange(ids.shape[0], device=ids.device)
            twin.reorder_cache(torch.cat([index, index]))
            doubled = twin
        except Exception:  # no reorder_cache / not copyable: a second prefill below
            doubled = None

    calls_b = step_capture(model, blocks, ids, mask, positions, _fork=fork)

    def twice(t: Any) -> Any:
        return None if t is None else torch.cat([t, t], dim=0)

    if doubled is not None:
        calls_2b = step_capture(
            model, blocks, twice(ids), twice(mask), twice(positions), _prefilled=doubled
        )
    else:
        calls_2b = step_capture(model, blocks, twice(ids), twice(mask), twice(positions))
    return calls_b, calls_2b


def step_capture(
    model: Any, blocks: list, ids: Any, mask: Any, positions: Any, *, _fork: Any = None,
    _prefilled: Any = None,
) -> list[BlockCall]:
    """Record every block call of a one-token decoding step after a prefill of the first L-1 tokens.

    Returns
    -------
    list of BlockCall, one per block: args/kwargs of the step (the cache object is
    kept in place and replaced at replay time), ``output`` (B, 1, n), and ``kv``: the
    prefix keys/values the block's attention read, one ``(keys, values)`` per cache read.

    Raises
    ------
    ReplayError
        The model does not decode with a cache this module understands.
    """
    import torch

    if ids.shape[1] < 2:
        raise ReplayError("prefix replay needs at least two tokens")
    cache = _prefilled if _prefilled is not None else _prefill(model, blocks, ids, mask, positions)
    if cache is None or not hasattr(cache, "update"):
        raise ReplayError(f"{type(model).__name__} returned no KV cache from a use_cache=True pass")
    if _fork is not None:
        _fork(cache)
    step_kwargs = forward_kwargs(
        model,
        attention_mask=mask,
        position_ids=None if positions is None else positions[:, -1:],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    if not any(k in step_kwargs for k in ("cache", "past_key_values")):
        raise ReplayError(f"{type(model).__name__}.forward takes no cache argument")
    targets = [cache]
    inner = getattr(cache, "self_attention_cache", None)
    if inner is not None and hasattr(inner, "update"):
        targets.append(inner)
    hooks = _Hooks(blocks, None)
    originals: list = []
    try:
        _instrument_caches(targets, hooks, originals)
        with torch.no_grad(), hooks:
            model(input_ids=ids[:, -1:], **step_kwargs)
    finally:
        for target, name, original in reversed(originals):
            if original is None:
                target.__dict__.pop(name, None)
            else:
                setattr(target, name, original)
    for k, call in enumerate(hooks.calls):
        if call is None or call.output is None:
            raise ReplayError(f"block {k} was not called during the decoding step")
        if not call.kv:
            raise ReplayError(f"block {k} read no keys/values from the cache")
    return hooks.calls


def _prefill(model: Any, blocks: list, ids: Any, mask: Any, positions: Any) -> Any:
    """The KV cache of a ``use_cache=True`` pass over the first ``L-1`` tokens (pad rows zeroed)."""
    import torch

    pad = (mask == 0) if mask is not None and bool((mask == 0).any()) else None
    prefill_kwargs = forward_kwargs(
        model,
        attention_mask=None if mask is None else mask[:, :-1],
        position_ids=None if positions is None else positions[:, :-1],
        use_cache=True,
        logits_to_keep=1,
    )
    with torch.no_grad(), _Hooks(blocks, None if pad is None else pad[:, :-1]):
        prefill = model(input_ids=ids[:, :-1], **prefill_kwargs)
    return _cache_out(prefill)


def _instrument_caches(targets: list, hooks: Any, originals: list) -> None:
    """Wrap each cache's ``update`` (record the prefix keys/values each block reads) and its
    query methods (record their answers); ``originals`` collects what to restore."""
    import torch

    def recorder(original: Any) -> Any:
        def update(key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple:
            keys, values = original(key_states, value_states, *args, **kwargs)
            k = hooks.current
            if k is None:
                raise ReplayError("cache update outside a decoder block")
            new = key_states.shape[-2]
            if not (torch.equal(keys[..., -new:, :], key_states)
                    and torch.equal(values[..., -new:, :], value_states)):
                raise ReplayError("the cache does not append new keys/values at the end")
            hooks.calls[k].kv.append((keys[..., :-new, :].detach(), values[..., :-new, :].detach()))
            return keys, values

        return update

    def query_recorder(name: str, original: Any) -> Any:
        def query(*args: Any, **kwargs: Any) -> Any:
            answer = original(*args, **kwargs)
            if hooks.current is not None:  # asked inside a block: replayed from the record
                hooks.calls[hooks.current].queries.append((name, answer))
            return answer

        return query

    for target in targets:
        originals.append((target, "update", target.__dict__.get("update")))
        target.update = recorder(type(target).update.__get__(target))
        for name in CACHE_QUERIES:
            method = getattr(type(target), name, None)
            if callable(method):
                originals.append((target, name, target.__dict__.get(name)))
                setattr(target, name, query_recorder(name, method.__get__(target)))


# ---------------------------------------------------------------------------------------------
# batch layout: which captured tensors carry the batch, along which dimension
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Batched:
    tensor: Any
    dim: int


@dataclass(frozen=True)
class _CacheSlot:
    pass


def _layout(a: Any, b: Any, where: str) -> Any:
    """Compare a tree captured at batch B (``a``) with the same at batch 2B (``b``)."""
    import torch

    if _is_cache(a) or isinstance(a, PrefixKV):
        return _CacheSlot()
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            raise ReplayError(f"{where}: a tensor at batch B is a {type(b).__name__} at batch 2B")
        if a.shape == b.shape:
            return a
        diff = [d for d in range(a.dim()) if a.shape[d] != b.shape[d]] if a.dim() == b.dim() else []
        if len(diff) != 1 or b.shape[diff[0]] != 2 * a.shape[diff[0]]:
            raise ReplayError(
                f"{where}: cannot tell its batch dimension (shape {tuple(a.shape)} at batch B, "
                f"{tuple(b.shape)} at batch 2B)"
            )
        return _Batched(a, diff[0])
    if isinstance(a, tuple | list):
        if not isinstance(b, tuple | list) or len(a) != len(b):
            raise ReplayError(f"{where}: argument structure depends on the batch size")
        items = [_layout(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b))]
        if hasattr(a, "_fields"):
            return type(a)(*items)
        return type(a)(items)
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            raise ReplayError(f"{where}: argument structure depends on the batch size")
        return {k: _layout(a[k], b[k], f"{where}.{k}") for k in a}
    return a


def batch_layout(call_b: BlockCall, call_2b: BlockCall, *, with_kv: bool) -> tuple:
    """Layout of one block call: ``(args, kwargs, kv)`` trees with batched tensors marked,
    plus, with ``with_kv``, a fourth item: the recorded cache queries (see :class:`PrefixKV`).

    The hidden-states argument must be batched along dimension 0.
    """
    args = _layout(call_b.args, call_2b.args, "args")
    kwargs = _layout(call_b.kwargs, call_2b.kwargs, "kwargs")
    if not with_kv:
        return args, kwargs, None
    kv = _layout(call_b.kv, call_2b.kv, "cache keys/values")
    if call_b.queries != call_2b.queries:
        raise ReplayError("the block's cache queries depend on the batch size")
    return args, kwargs, kv, list(call_b.queries)


def materialize(tree: Any, copies: int, cache: Any = None) -> Any:
    """Instantiate a layout tree for ``copies`` copies of the batch (copy-major order).

    A batched tensor ``t`` becomes ``cat([t] * copies, dim)``; cache slots become ``cache``.
    """
    import torch

    if isinstance(tree, _Batched):
        if copies == 1:
            return tree.tensor
        return torch.cat([tree.tensor] * copies, dim=tree.dim)
    if isinstance(tree, _CacheSlot):
        return cache
    if isinstance(tree, tuple | list):
        items = [materialize(t, copies, cache) for t in tree]
        if hasattr(tree, "_fields"):
            return type(tree)(*items)
        return type(tree)(items)
    if isinstance(tree, dict):
        return {k: materialize(v, copies, cache) for k, v in tree.items()}
    return tree


def block_input_of(call: BlockCall) -> Any:
    """The hidden states a recorded call passed to its block."""
    return get_block_input(call.args, call.kwargs)
