"""Jacobian extraction spread over processes with ``torch.distributed``.

The layer Jacobians of a language-model plant are independent across layers and across prompts:

.. math::

    A_k = \\frac{1}{P} \\sum_{p=1}^{P} J_k^{(p)}
        = \\frac{\\sum_r P_r \\bar A_k^{(r)}}{\\sum_r P_r},

where rank ``r`` holds ``P_r`` prompts and computes their mean ``Ā_k^{(r)}``.  Two ways to split
the work are offered:

``shard="prompts"`` (default)
    every rank takes the prompts ``prompts[r::W]`` and every requested layer; the weighted sums
    ``P_r Ā_k^{(r)}`` and the counts are added with one ``all_reduce`` per layer.  Every rank
    ends with the same ``A_k``; layers are produced one at a time, so this composes with the
    streamed Riccati (:mod:`ltv_control.streaming`) in O(n²) memory per rank.
``shard="layers"``
    the requested layers are dealt out round-robin (``layers[r::W]``); every rank uses all the
    prompts.  In round ``j`` rank ``r`` computes layer ``layers[j·W + r]``, then each of the ``W``
    fresh Jacobians is broadcast from its owner, so layers still come out in the requested order
    with O(W·n²) memory per rank.

Without an initialised process group (a plain ``python`` run) the same functions run as a single
process (world size 1) and simply forward to ``plant.iter_jacobians``.

Launch with ``torchrun --nproc-per-node=G script.py`` (or ``accelerate launch``); call
:func:`init_distributed` first (it reads the ``torchrun`` environment, picks ``nccl`` when CUDA is
available and ``gloo`` otherwise, and binds each rank to ``cuda:LOCAL_RANK``).  Models loaded with
``device_map="auto"`` span several GPUs inside one process: see ``docs/scale.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ltv_control._exceptions import ArgumentError, DimensionError

__all__ = [
    "DistributedContext",
    "distributed_context",
    "init_distributed",
    "iter_distributed_jacobians",
    "distributed_jacobians",
    "shard_prompts",
]

_SHARDS = ("prompts", "layers")


class DistributedContext:
    """Rank, world size, process group and the device on which collectives run.

    Attributes
    ----------
    rank, world_size : int
        ``0`` and ``1`` when no process group is initialised.
    group : ProcessGroup or None
        The group the collectives use (``None``: the default group).
    reduce_device : torch.device
        Where tensors are placed for collectives: CPU for ``gloo``, ``cuda:current`` for
        ``nccl``.
    """

    def __init__(self, rank: int, world_size: int, group: Any, reduce_device: Any) -> None:
        self.rank = rank
        self.world_size = world_size
        self.group = group
        self.reduce_device = reduce_device

    @property
    def active(self) -> bool:
        """Whether collectives are needed (world size above 1)."""
        return self.world_size > 1

    def __repr__(self) -> str:
        return (
            f"DistributedContext(rank={self.rank}, world_size={self.world_size}, "
            f"reduce_device={self.reduce_device})"
        )


def distributed_context(group: Any = None, reduce_device: Any = None) -> DistributedContext:
    """Describe the current process group (world size 1 when none is initialised).

    Parameters
    ----------
    group : ProcessGroup, optional
        Sub-group to use; default the world group.
    reduce_device : str or torch.device, optional
        Device for collective buffers; default CPU for gloo, ``cuda:<current>`` for nccl, CPU
        otherwise.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext(0, 1, None, torch.device(reduce_device or "cpu"))
    rank = dist.get_rank(group)
    world = dist.get_world_size(group)
    if reduce_device is None:
        backend = str(dist.get_backend(group)).lower()
        if "nccl" in backend and torch.cuda.is_available():
            reduce_device = torch.device("cuda", torch.cuda.current_device())
        else:
            reduce_device = torch.device("cpu")
    return DistributedContext(rank, world, group, torch.device(reduce_device))


def init_distributed(backend: str | None = None, *, bind_device: bool = True, **init_kwargs: Any) -> DistributedContext:
    """Initialise the default process group from the ``torchrun`` environment when needed.

    Does nothing (and returns a world-size-1 context) when ``WORLD_SIZE`` is unset or 1 and no
    group exists.  With CUDA available and ``backend`` ``None`` or ``"nccl"``, uses ``nccl`` and
    (``bind_device=True``) binds this process to ``cuda:LOCAL_RANK``; otherwise ``gloo``.

    Parameters
    ----------
    backend : str, optional
        ``"nccl"``, ``"gloo"``, ...; default as above.  ``"gloo"`` reduces on the CPU, where
        :meth:`LLMPlant.iter_jacobians` returns its Jacobians; use it when each rank spans
        several GPUs (``device_map="auto"``).
    bind_device : bool, default True
        Call ``torch.cuda.set_device(LOCAL_RANK)`` (one GPU per rank).  Pass ``False`` when a
        rank's model spans several GPUs.
    **init_kwargs
        Passed to ``torch.distributed.init_process_group`` (e.g. ``timeout=``).
    """
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return distributed_context()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return distributed_context()
    use_nccl = torch.cuda.is_available() and backend in (None, "nccl")
    if use_nccl and bind_device:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend or ("nccl" if use_nccl else "gloo"), **init_kwargs)
    return distributed_context()


def shard_prompts(prompts: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The prompts rank ``rank`` handles: ``prompts[rank::world_size]`` (possibly empty)."""
    return list(prompts)[rank::world_size]


def _normalise_layers(plant: Any, layers: Iterable[int] | None) -> list[int]:
    T = int(plant.horizon)
    if layers is None:
        return list(range(T))
    if isinstance(layers, (str, bytes)):
        raise ArgumentError(f"layers: expected an iterable of layer indices, found {type(layers).__name__}")
    out = []
    for k in layers:
        k = int(k)
        if not 0 <= k < T:
            raise DimensionError(f"layers: expected indices in [0, {T}), found {k}")
        out.append(k)
    if not out:
        raise DimensionError("layers: expected at least one layer index, found none")
    return out


def iter_distributed_jacobians(
    plant: Any,
    prompts: Sequence[str],
    *,
    layers: Iterable[int] | None = None,
    shard: str = "prompts",
    max_tokens: int = 24,
    batch_size: int = 8,
    progress: bool = True,
    method: str = "auto",
    group: Any = None,
    reduce_device: Any = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(k, A_k)`` for ``k`` in ``layers`` (in that order), the work split over ranks.

    ``A_k`` is the mean over *all* prompts (of every rank) of the last-token block Jacobian, as
    :meth:`LLMPlant.iter_jacobians` defines it; every rank receives the same float64 tensor.
    All ranks must call this with the same arguments.

    Parameters
    ----------
    plant : LLMPlant
        The plant (each rank holds its own copy of the model).
    prompts : sequence of str
        All prompts; each rank picks its shard itself.
    layers : iterable of int, optional
        Layer indices, in the order wanted (``reversed(range(T))`` for the backward Riccati);
        default all layers ascending.
    shard : {"prompts", "layers"}
        Split prompts (default) or layers across ranks (see the module docstring).
    max_tokens, batch_size, progress, method : see :meth:`LLMPlant.iter_jacobians`
        Forwarded to the plant (the progress bar is shown on rank 0 only).
    group : ProcessGroup, optional
        Process group; default the world group.
    reduce_device : str or torch.device, optional
        Device of the collective buffers (default CPU for gloo, the current CUDA device for nccl).

    Yields
    ------
    (int, torch.Tensor)
        Layer index and its (n, n) float64 Jacobian mean, on the device ``plant.iter_jacobians``
        returned it on (world size 1) or on ``reduce_device``.
    """
    if shard not in _SHARDS:
        raise ArgumentError(f"shard: expected one of {_SHARDS}, found {shard!r}")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ArgumentError("prompts: expected a non-empty sequence of strings")
    order = _normalise_layers(plant, layers)
    ctx = distributed_context(group, reduce_device)
    show = bool(progress) and ctx.rank == 0
    options = dict(max_tokens=max_tokens, batch_size=batch_size, progress=show, method=method)

    if not ctx.active:
        yield from plant.iter_jacobians(prompts, layers=order, **options)
        return

    shard_fn = _prompt_shards if shard == "prompts" else _layer_shards
    yield from shard_fn(plant, prompts, order, ctx, options)


def _prompt_shards(plant: Any, prompts: list, order: list, ctx: DistributedContext, options: dict) -> Iterator:
    """Each rank averages its share of the prompts; ``A_k = Σ_r P_r A_k^r / P`` by all-reduce."""
    import torch
    import torch.distributed as dist

    n, dev = int(plant.state_dim), ctx.reduce_device
    mine = shard_prompts(prompts, ctx.rank, ctx.world_size)
    count = torch.tensor([float(len(mine))], dtype=torch.float64, device=dev)
    dist.all_reduce(count, group=ctx.group)
    total = float(count.item())
    local = iter(plant.iter_jacobians(mine, layers=order, **options)) if mine else None
    for k in order:
        if local is not None:
            k_local, A_k = next(local)
            if int(k_local) != k:
                raise DimensionError(f"plant.iter_jacobians: expected layer {k}, found {k_local}")
            buf = A_k.to(device=dev, dtype=torch.float64) * float(len(mine))
            del A_k
        else:
            buf = torch.zeros(n, n, dtype=torch.float64, device=dev)
        dist.all_reduce(buf, group=ctx.group)
        buf /= total
        yield k, buf
        del buf
    if local is not None:
        for _ in local:  # let the plant's generator finish (hooks, progress bars)
            pass


def _layer_shards(plant: Any, prompts: list, order: list, ctx: DistributedContext, options: dict) -> Iterator:
    """Round-robin rounds of layers; each layer's owner broadcasts its ``A_k``."""
    import torch
    import torch.distributed as dist

    n, dev, W = int(plant.state_dim), ctx.reduce_device, ctx.world_size
    mine_layers = order[ctx.rank :: W]
    local = iter(plant.iter_jacobians(prompts, layers=mine_layers, **options)) if mine_layers else None
    ranks = dist.get_process_group_ranks(ctx.group) if ctx.group is not None else None
    for start in range(0, len(order), W):
        block = order[start : start + W]
        own = None
        if ctx.rank < len(block):
            k_local, A_k = next(local)
            if int(k_local) != block[ctx.rank]:
                raise DimensionError(f"plant.iter_jacobians: expected layer {block[ctx.rank]}, found {k_local}")
            own = A_k.to(device=dev, dtype=torch.float64).contiguous()
            del A_k
        for j, k in enumerate(block):
            buf = own if j == ctx.rank else torch.empty(n, n, dtype=torch.float64, device=dev)
            dist.broadcast(buf, src=j if ranks is None else ranks[j], group=ctx.group)
            yield k, buf
            del buf
        own = None
    if local is not None:
        for _ in local:
            pass


def distributed_jacobians(
    plant: Any,
    prompts: Sequence[str],
    *,
    layers: Iterable[int] | None = None,
    shard: str = "prompts",
    max_tokens: int = 24,
    batch_size: int = 8,
    progress: bool = True,
    method: str = "auto",
    group: Any = None,
    reduce_device: Any = None,
) -> Any:
    """Stack of Jacobian means ``(len(layers), n, n)`` float64, computed over all ranks.

    Holds every layer at once (use :func:`iter_distributed_jacobians` with
    :mod:`ltv_control.streaming` to keep memory at O(n²)).  Rows follow the order of ``layers``.

    Parameters
    ----------
    plant, prompts, layers, shard, max_tokens, batch_size, progress, method, group, reduce_device : see :func:`iter_distributed_jacobians`
        Same meaning.

    Returns
    -------
    torch.Tensor, shape (len(layers), n, n), float64 on the CPU
    """
    import torch

    mats = [
        A_k.detach().cpu()
        for _, A_k in iter_distributed_jacobians(
            plant,
            prompts,
            layers=layers,
            shard=shard,
            max_tokens=max_tokens,
            batch_size=batch_size,
            progress=progress,
            method=method,
            group=group,
            reduce_device=reduce_device,
        )
    ]
    return torch.stack(mats)
