"""Attach per-layer laws ``u_k = law_k(z_k)`` to the decoder blocks of a model.

:func:`attach_laws` registers one forward hook per controlled block (it reads the block's input
``z_k`` and adds ``u_k`` to its output) plus a pre-hook and a hook on the model that read the
2-D ``attention_mask`` of each forward pass, so pad positions are never steered.  It knows nothing
about steerers: any :class:`~ltv_control.adapters.laws.Law` works.

Positions: ``"last"`` steers the newest position of every forward pass (with the KV cache each
token is steered once, when newest, and its steered keys/values stay cached; with
``use_cache=False`` the history is recomputed unsteered); ``"all"`` steers every non-pad
position.  The law runs in float32 (or its own ``dtype``); half-precision outputs get ``u`` added
in float32 and rounded once, float64 outputs get it widened exactly.  Hooks are removed when the
handle exits, also on error.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Mapping
from typing import Any

from ltv_control._exceptions import ControlError, DimensionError
from ltv_control.adapters._blocks import get_block_input, get_block_output, replace_block_output

__all__ = ["SteeringHandle", "attach_laws", "module_device"]

#: model -> ids of the owners attached to it (refuses attaching one owner twice, nested)
_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class SteeringHandle:
    """The hooks of one attachment; a context manager (removing twice is harmless).

    Attributes
    ----------
    layers : list of int
        The hooked (controlled) layer indices.
    positions : str
        ``"last"`` or ``"all"``.
    calls : int
        Number of block-hook invocations that applied an input (diagnostic).
    """

    def __init__(self, layers: list[int], positions: str) -> None:
        self._handles: list = []
        self._on_remove: list = []
        self.layers = layers
        self.positions = positions
        self.calls = 0

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook of this attachment."""
        while self._handles:
            self._handles.pop().remove()
        while self._on_remove:
            self._on_remove.pop()()

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()


class _Pass:
    """What the hooks of one attachment share during a forward pass: the mask and the laws' state."""

    __slots__ = ("mask", "masks", "state", "first_layer", "mask_index")

    def __init__(self, first_layer: int, mask_index: int | None) -> None:
        self.mask = None
        self.masks: dict = {}
        self.state: dict = {}
        self.first_layer = first_layer
        self.mask_index = mask_index

    def clear(self) -> None:
        self.mask = None
        self.masks = {}

    def position_mask(self, hidden: Any, last: bool) -> Any:
        """float32 ``(B, 1)`` / ``(B, L, 1)`` mask of the real steered positions; ``None`` if all real."""
        import torch

        if self.mask is None:
            return None
        batch, length = hidden.shape[0], hidden.shape[1]
        key = (hidden.device, length)
        m = self.masks.get(key)
        if m is None:
            mask = self.mask
            if mask.shape[0] != batch or mask.shape[1] < length:
                m = False  # the mask does not describe this call: every position is real
            else:
                cols = (mask[:, -1] if last else mask[:, -length:]).to(device=hidden.device) != 0
                m = False if bool(cols.all()) else cols.to(torch.float32).unsqueeze(-1)
            self.masks[key] = m
        return None if m is False else m


def _mask_index(model: Any) -> int | None:
    """Positional index of ``attention_mask`` in ``model.forward`` (``None`` if absent)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    for i, p in enumerate(params):
        if p.name == "attention_mask" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return i
    return None


def module_device(module: Any) -> Any:
    """Device of a module's first parameter or buffer (CPU if it has none)."""
    import torch

    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _unobservable(hidden: Any, z_full: Any) -> bool:
    """Whether changing ``hidden`` in place is invisible: no autograd graph, own storage."""
    import torch

    return (not (hidden.requires_grad and torch.is_grad_enabled()) and hidden._base is None
            and hidden.data_ptr() != z_full.data_ptr())


def _add(hidden: Any, output: Any, u: Any, last: bool, inplace: bool) -> Any:
    """Add ``u`` to the steered positions of ``hidden``; the new block output (``None``: in place)."""
    import torch

    new = hidden if inplace else hidden.clone()
    target = new[:, -1] if last else new
    if new.dtype == torch.float32:
        target.add_(u)
    elif new.dtype == torch.float64:
        target.add_(u.to(torch.float64))  # exact widening
    else:  # half types: add in float32, round once
        target.copy_(target.to(torch.float32).add_(u))
    return None if inplace else replace_block_output(output, new)


def _make_hook(k: int, law: Any, state: _Pass, handle: SteeringHandle, last: bool, width: int) -> Any:
    import torch

    laws = {None: law}
    Tensor, float32 = torch.Tensor, torch.float32
    fast = law.inplace and law.dtype in (None, float32)

    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        z_full = args[0] if args and type(args[0]) is Tensor else get_block_input(args, kwargs)
        hidden = output if type(output) is Tensor else get_block_output(output)
        if k == state.first_layer:
            state.state = {}
        if z_full.shape[-1] != width:
            raise DimensionError(f"block {k}: the law is for hidden size {width}, the block input has "
                                 f"size {z_full.shape[-1]}")
        local = laws.get(z_full.device)
        if local is None:
            local = laws[z_full.device] = law.to(z_full.device)
        z = z_full[:, -1] if last else z_full
        if (fast and last and hidden.dtype == float32 and z.dtype == float32
                and hidden.device == z.device and _unobservable(hidden, z_full)
                and state.position_mask(hidden, last) is None):
            local.add_last_inplace(z, hidden[:, -1])  # float32, newest position, no pads
            handle.calls += 1
            return None
        dtype = law.dtype or float32
        u = local(z if z.dtype == dtype else z.to(dtype), state.state)
        if u is None:
            return None
        m = state.position_mask(hidden, last)
        if m is not None:
            u = u * m.to(u.dtype)
        handle.calls += 1
        return _add(hidden, output, u.to(hidden.device), last, _unobservable(hidden, z_full))

    return hook


def _register_mask_hooks(model: Any, state: _Pass, handle: SteeringHandle) -> None:
    import torch

    def pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask") if kwargs else None
        if mask is None and state.mask_index is not None and len(args) > state.mask_index:
            mask = args[state.mask_index]
        state.clear()
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            state.mask = mask

    def post_hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        state.clear()

    handle._handles.append(model.register_forward_pre_hook(pre_hook, with_kwargs=True))
    handle._handles.append(model.register_forward_hook(post_hook, with_kwargs=True, always_call=True))


def _claim(model: Any, owner: Any, handle: SteeringHandle) -> None:
    """Refuse ``owner`` attached twice to ``model``; release the claim when ``handle`` is removed."""
    owners = _ATTACHED.setdefault(model, set())
    if id(owner) in owners:
        raise ControlError(f"this {type(owner).__name__} is already attached to this model (nested "
                           "attach would steer twice); leave the first 'with' block or call "
                           "handle.remove() before attaching it again")
    owners.add(id(owner))
    handle._on_remove.append(lambda: owners.discard(id(owner)))


def attach_laws(model: Any, blocks: list, laws: Mapping[int, Any], *, positions: str, width: int,
                owner: Any = None) -> SteeringHandle:
    """Add ``laws[k](z_k)`` to block ``k``'s output while the returned handle is active.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose forward passes carry the attention mask.
    blocks : list of torch.nn.Module
        Its decoder blocks (``laws`` is indexed into this list).
    laws : mapping of int to Law
        The controlled layers and their laws (tensors on any device; moved to each block's).
    positions : {"last", "all"}
    width : int
        ``n``: the hidden size the laws expect (checked at every call).
    owner : object, optional
        Who attaches (a steerer): the same owner cannot be attached twice to one model at a time.

    Returns
    -------
    SteeringHandle
        Context manager; hooks removed on exit, also when an exception propagates.
    """
    hooked = sorted(laws)
    handle = SteeringHandle(hooked, positions)
    try:
        if owner is not None:
            _claim(model, owner, handle)
        state = _Pass(hooked[0] if hooked else -1, _mask_index(model))
        _register_mask_hooks(model, state, handle)
        for k in hooked:
            law = laws[k].to(module_device(blocks[k]))
            hook = _make_hook(k, law, state, handle, positions == "last", width)
            # prepend: run before hooks that record block outputs (output_hidden_states), so
            # recorded states are the steered residual stream
            handle._handles.append(blocks[k].register_forward_hook(hook, with_kwargs=True, prepend=True))
    except BaseException:
        handle.remove()
        raise
    return handle
