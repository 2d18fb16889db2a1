"""Base class of every steerer: fused per-layer hooks, positions, padding, dtypes, files.

A steerer holds per-layer float32 tensors fitted on an :class:`~ltv_control.adapters.LLMPlant`
and applies, while attached to a model, a control input ``u_k`` to the output of
decoder block ``k`` computed from that block's input ``z_k``:

.. math::

    z_{k+1} = \\varphi_k(z_k) + u_k, \\qquad u_k = \\mathrm{law}_k(z_k).

:meth:`Steerer.attach` registers ONE fused forward hook per controlled block (it
reads the block's input and adds ``u_k`` to its output in the same hook) and one
forward pre-hook plus one forward hook on the model itself (they read the 2-D
``attention_mask`` of the current forward pass so that pad positions are never
steered).  Everything is removed when the context exits, also on error.

Positions
---------
``"last"``
    Only the newest position of every forward pass is steered.  With the KV cache
    on (the default of ``generate``) every token is steered exactly once, when it
    is the newest, and its steered keys/values stay in the cache; the prompt's
    earlier tokens are not steered.  With ``use_cache=False`` the whole history is
    recomputed unsteered at every step and only the newest position is steered
    (the paper-era mode, for reproduction).
``"all"``
    Every non-pad position of every forward pass is steered (A-LQR+).  With the
    cache on, each token is steered when it is processed (prompt tokens in the
    first pass, each generated token in its step).

Pad positions (``attention_mask == 0`` in the model's 2-D mask, left or right
padding, the mask growing during ``generate``) are never steered; with
``"last"`` and left padding the newest column is always a real token.  Masks other
than 2-D (custom 4-D masks) are not interpreted: every position counts as real.

Numerics
--------
The law is computed in float32 whatever the model's dtype (the block input is
cast to float32).  For float16/bfloat16 models ``u_k`` is added to a float32 copy
of the output, which is rounded back once; float64 outputs get ``u_k`` widened
exactly.  Each hook keeps its tensors on its layer's device (a model
spread over several devices works); a tensor arriving on another device moves
the parameters there once.

Writing a steerer (subclass hooks)
----------------------------------
A subclass sets the class attributes

``kind``
    short name stored in controller files (``"alqr"``, ``"actadd"``, ...); a
    subclass that sets its own ``kind`` is registered (first class per kind wins) so
    :meth:`Steerer.load` can dispatch on the kind stored in a file.
``tensor_names``
    names of its per-layer float32 tensors, each of shape ``(T,)`` or ``(T, n)``;
    they are attributes of the instance and are what :meth:`save` writes.
``hyperparameter_names``
    names of scalar/JSON hyper-parameters (attributes; written as JSON).
``attach_options``
    extra keyword options of :meth:`attach` (e.g. ``("lam",)``), ``None`` meaning
    "the fitted value".
``default_positions``
    ``"last"`` or ``"all"``.

and implements

``_layer_parameters(options) -> dict[str, Tensor]``
    full ``(T, ...)`` float32 CPU tensors the law needs, after the attach options
    (e.g. ``beta = lam * e_norm``).  Default: the ``tensor_names`` tensors.
``_active_layers(options) -> list[int]``
    layers where the law can be non-zero (default: all ``T``).  The hooked layers
    are these, intersected with the fitted ``layers`` and with ``attach(layers=)``.
``_begin_forward(state)``
    optional; called once per forward pass (at the first hooked block) with a
    fresh ``state`` dict shared by all hooks of that pass (PID integrators).
``_control(k, z, params, state) -> Tensor | None``
    the law at block ``k``: ``z`` is the block input at the steered positions,
    float32, shape ``(B, n)`` for ``"last"`` and ``(B, L, n)`` for ``"all"``
    (leading dimensions are batch dimensions: broadcast over them); ``params``
    maps each name of ``_layer_parameters`` to its row ``k`` on ``z``'s device;
    return ``u`` with ``z``'s shape (float32), or ``None`` for no input.  The
    base class zeroes ``u`` at pad positions and adds it to the block output.
``_control_last_inplace(k, z, target, params)`` (optional)
    a fused fast path for ``"last"`` on float32 models without padding in the
    newest column: add ``u`` (as ``_control`` would compute it from ``z (B, n)``)
    into ``target`` (the output's newest column, ``(B, n)``) in place.  Used only
    when it is unobservable (no autograd, no aliasing); it must agree with
    ``_control``.
``_from_file(tensors, metadata)`` (classmethod)
    rarely needed: the default passes the tensors and hyper-parameters back to
    ``cls.__init__``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ltv_control._exceptions import ArgumentError, ControllerFileError, DimensionError, PropertyError

__all__ = ["Steerer", "SteeringHandle", "POSITIONS"]

POSITIONS = ("last", "all")


# --------------------------------------------------------------------------- small helpers


def reject_unknown(unknown: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ArgumentError` naming every unknown keyword in ``unknown``."""
    if unknown:
        names = ", ".join(sorted(unknown))
        raise ArgumentError(f"{where}: unknown keyword argument(s) {names}")


def check_positions(positions: Any) -> str:
    """Validate a ``positions`` option (``"last"`` or ``"all"``)."""
    if positions not in POSITIONS:
        raise ArgumentError(f"positions: expected 'last' or 'all', found {positions!r}")
    return positions


def check_prompts(prompts: Any, name: str) -> list[str]:
    """A non-empty list of strings."""
    if isinstance(prompts, str) or not isinstance(prompts, Iterable):
        raise ArgumentError(f"{name}: expected a list of prompt strings, found {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise DimensionError(f"{name}: expected at least one prompt, found none")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ArgumentError(f"{name}[{i}]: expected a string, found {type(p).__name__}")
    return prompts


def check_layer_indices(layers: Any, num_layers: int, name: str = "layers") -> list[int] | None:
    """``None`` or a sorted list of distinct layer indices in ``[0, num_layers)`` (negatives wrap)."""
    if layers is None:
        return None
    if isinstance(layers, int | np.integer):
        layers = [layers]
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        raise ArgumentError(f"{name}: expected a list of layer indices, found {type(layers).__name__}")
    out = set()
    for item in layers:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise ArgumentError(f"{name}: expected integer layer indices, found {item!r}")
        idx = int(item)
        if not -num_layers <= idx < num_layers:
            raise DimensionError(
                f"{name}: layer index {idx} out of range for {num_layers} layers "
                f"(expected -{num_layers} <= index < {num_layers})"
            )
        out.add(idx % num_layers)
    return sorted(out)


def check_scalar(value: Any, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    """A finite real scalar (optionally > 0 or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ArgumentError(f"{name}: expected a real scalar, found {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise PropertyError(f"{name}: expected a finite value, found {value}")
    if positive and value <= 0:
        raise PropertyError(f"{name}: expected a positive value, found {value}")
    if nonnegative and value < 0:
        raise PropertyError(f"{name}: expected a non-negative value, found {value}")
    return value


def model_dimensions(model: Any, layer_path: Any = None) -> tuple[list, str | None, int | None]:
    """``(blocks, path, hidden_size)`` of ``model`` (hidden size from the config or embeddings)."""
    from ltv_control.adapters._blocks import config_hidden_size, find_decoder_layers

    blocks, path = find_decoder_layers(model, layers=layer_path)
    hidden = config_hidden_size(model)
    if hidden is None:
        get_emb = getattr(model, "get_input_embeddings", None)
        emb = get_emb() if callable(get_emb) else None
        hidden = getattr(emb, "embedding_dim", None)
    return blocks, path, hidden


def _module_device(module: Any):
    import torch

    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def _model_id(model: Any) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    return str(name) if name else type(model).__name__


# --------------------------------------------------------------------------- attachment


class SteeringHandle:
    """The hooks of one :meth:`Steerer.attach` call.

    Use as a context manager (``with steerer.attach(model): ...``) or call
    :meth:`remove` yourself.  Removing twice is harmless.

    Attributes
    ----------
    layers : list of int
        The hooked (controlled) layer indices.
    positions : str
        ``"last"`` or ``"all"``.
    calls : int
        Number of block-hook invocations that applied a control input (diagnostic).
    """

    def __init__(self, handles: list, layers: list[int], positions: str) -> None:
        self._handles = handles
        self.layers = layers
        self.positions = positions
        self.calls = 0

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook registered by this attachment."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()


class _MaskState:
    """Attention mask of the current forward pass, shared by the hooks of one attachment."""

    __slots__ = ("mask", "cache", "state", "first_layer")

    def __init__(self, first_layer: int) -> None:
        self.mask = None
        self.cache: dict = {}
        self.state: dict = {}
        self.first_layer = first_layer

    def clear(self) -> None:
        self.mask = None
        self.cache = {}


def _find_mask_index(model: Any) -> int | None:
    """Positional index of ``attention_mask`` in ``model.forward`` (``None`` if absent)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    for i, p in enumerate(params):
        if p.name == "attention_mask" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return i
    return None


def _one_of(new: Any, old: Any, new_name: str, old_name: str) -> int:
    """The value of a renamed keyword: the new name, else the old one (not both, not neither)."""
    if new is None and old is None:
        raise ArgumentError(f"{new_name}: required (an int)")
    if new is not None and old is not None and int(new) != int(old):
        raise ArgumentError(f"{new_name}={new} and its old name {old_name}={old} disagree")
    return int(new if new is not None else old)


# --------------------------------------------------------------------------- registry

#: module (under ``ltv_control.adapters``) defining each built-in steerer kind; importing it
#: registers the class, so a kind is found however the steerer classes were (not) imported
BUILTIN_KINDS = {
    "alqr": "alqr",
    "actadd": "actadd",
    "pid": "pid",
    "constrained": "constrained_steerer",
}


def steerer_class(kind: str) -> type | None:
    """The steerer class registered for ``kind`` (built-in kinds are imported on demand)."""
    import importlib

    if kind not in Steerer._registry and kind in BUILTIN_KINDS:
        importlib.import_module(f"ltv_control.adapters.{BUILTIN_KINDS[kind]}")
    return Steerer._registry.get(kind)


# --------------------------------------------------------------------------- base class


class Steerer:
    """Base class of the steerers (A-LQR, ActAdd, S-PID, constrained).

    Parameters
    ----------
    tensors : mapping of str to array
        The ``tensor_names`` tensors, each ``(T,)`` or ``(T, n)``; stored as float32
        CPU torch tensors and exposed as attributes.
    hidden_size : int
        ``n``, the model's hidden size.
    num_layers : int
        ``T``, the number of decoder blocks.
    hyperparameters : mapping, optional
        Values of ``hyperparameter_names`` (exposed as attributes).
    layers : list of int or None, default None
        Controlled layers (``None``: every layer the law acts on).
    positions : {"last", "all"} or None
        Default positions of :meth:`attach` (``None``: the class default).
    layer_path : str or None
        Dotted path of the decoder blocks (an override used at fit time), re-used at attach.
    model_id : str or None
        Name/path of the model the steerer was fitted on (informative).
    """

    kind: ClassVar[str] = ""
    tensor_names: ClassVar[tuple[str, ...]] = ()
    hyperparameter_names: ClassVar[tuple[str, ...]] = ()
    attach_options: ClassVar[tuple[str, ...]] = ()
    default_positions: ClassVar[str] = "last"
    _registry: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # only classes that name their own kind are registered (the first one wins), so a
        # subclass that merely inherits a kind (e.g. a test double) never hijacks loading
        if "kind" in cls.__dict__ and cls.kind:
            Steerer._registry.setdefault(cls.kind, cls)

    def __init__(
        self,
        tensors: Mapping[str, Any],
        *,
        state_dim: int | None = None,
        horizon: int | None = None,
        hidden_size: int | None = None,
        num_layers: int | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        layers: Sequence[int] | None = None,
        positions: str | None = None,
        layer_path: str | None = None,
        model_id: str | None = None,
    ) -> None:
        import torch

        self.state_dim = _one_of(state_dim, hidden_size, "state_dim", "hidden_size")
        self.horizon = _one_of(horizon, num_layers, "horizon", "num_layers")
        missing = [name for name in self.tensor_names if name not in tensors]
        extra = [name for name in tensors if name not in self.tensor_names]
        if missing or extra:
            raise ArgumentError(
                f"tensors: expected exactly {list(self.tensor_names)}, missing {missing}, "
                f"unexpected {extra}"
            )
        for name in self.tensor_names:
            value = tensors[name]
            if isinstance(value, torch.Tensor):
                t = value.detach().to(device="cpu", dtype=torch.float32).clone()
            else:
                t = torch.as_tensor(np.asarray(value, dtype=np.float32)).clone()
            if t.ndim not in (1, 2) or t.shape[0] != self.horizon or (
                t.ndim == 2 and t.shape[1] != self.state_dim
            ):
                raise DimensionError(
                    f"{name}: expected shape ({self.horizon},) or ({self.horizon}, "
                    f"{self.state_dim}), found {tuple(t.shape)}"
                )
            if not torch.isfinite(t).all():
                raise PropertyError(f"{name}: expected finite values, found NaN or inf")
            setattr(self, name, t)
        hyper = dict(hyperparameters or {})
        unknown = set(hyper) - set(self.hyperparameter_names)
        if unknown:
            raise ArgumentError(f"hyperparameters: unknown names {sorted(unknown)}")
        for name in self.hyperparameter_names:
            setattr(self, name, hyper.get(name))
        self.layers = check_layer_indices(layers, self.horizon)
        self.positions = check_positions(positions or self.default_positions)
        self.layer_path = layer_path
        self.model_id = model_id

    @property
    def num_layers(self) -> int:
        """Old name of :attr:`horizon` (``T``), kept for compatibility."""
        return self.horizon

    @property
    def hidden_size(self) -> int:
        """Old name of :attr:`state_dim` (``n``), kept for compatibility."""
        return self.state_dim

    # ------------------------------------------------------------------ subclass hooks

    def _layer_parameters(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Full ``(T, ...)`` float32 CPU tensors used by :meth:`_control` (after options)."""
        return {name: getattr(self, name) for name in self.tensor_names}

    def _active_layers(self, options: Mapping[str, Any]) -> list[int]:
        """Layers where the law can act (default: all)."""
        return list(range(self.horizon))

    def _begin_forward(self, state: dict) -> None:
        """Per-forward-pass setup (``state`` is a fresh dict shared by that pass's hooks)."""

    def _control(self, k: int, z: Any, params: Mapping[str, Any], state: dict) -> Any:
        """Control input at block ``k``: ``u`` with the shape of ``z`` (float32) or ``None``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ introspection

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The fitted hyper-parameters, by name."""
        return {name: getattr(self, name) for name in self.hyperparameter_names}

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return (
            f"{type(self).__name__}(T={self.horizon}, n={self.state_dim}, "
            f"positions={self.positions!r}, layers={self.layers}, {hyper})"
        )

    def check_model(self, model: Any) -> list:
        """Check that ``model`` matches this steerer; return its decoder blocks.

        Raises
        ------
        DimensionError
            Different hidden size or number of decoder blocks (expected vs found).
        """
        from ltv_control.adapters._blocks import LayerDiscoveryError

        try:
            blocks, _, hidden = model_dimensions(model, self.layer_path)
        except (LayerDiscoveryError, ArgumentError):
            if self.layer_path is None:
                raise
            # the fitted override path does not exist on this model: search generically
            blocks, _, hidden = model_dimensions(model, None)
        if len(blocks) != self.horizon:
            raise DimensionError(
                f"model: the steerer was fitted for {self.horizon} decoder layers, the model "
                f"has {len(blocks)} ({type(model).__name__})"
            )
        if hidden is not None and hidden != self.state_dim:
            raise DimensionError(
                f"model: the steerer was fitted for hidden size {self.state_dim}, the model "
                f"has hidden size {hidden} ({type(model).__name__})"
            )
        return blocks

    # ------------------------------------------------------------------ attach

    def attach(
        self, model: Any, *, positions: str | None = None, layers: Sequence[int] | None = None, **options: Any
    ) -> SteeringHandle:
        """Steer ``model`` while the returned handle is active (use it in a ``with`` block).

        Parameters
        ----------
        model : torch.nn.Module
            The model to steer (the causal LM, or its base model).  Its hidden size and
            number of decoder blocks must match the steerer.
        positions : {"last", "all"} or None, default None
            Which positions to steer (see the module docstring); ``None``: the fitted default.
        layers : list of int or None, default None
            Restrict control to these layers (intersected with the fitted ones).
        **options
            The subclass's ``attach_options`` (``None`` means the fitted value).

        Returns
        -------
        SteeringHandle
            Context manager; the hooks are removed on exit, also when an exception
            (e.g. inside ``generate``) propagates.

        Raises
        ------
        DimensionError
            The model does not match (checked before any forward pass).
        ArgumentError
            Unknown option or bad ``positions``.
        """
        import torch

        unknown = {k: v for k, v in options.items() if k not in self.attach_options}
        reject_unknown(unknown, f"{type(self).__name__}.attach")
        positions = check_positions(positions if positions is not None else self.positions)
        requested = check_layer_indices(layers, self.horizon)
        blocks = self.check_model(model)

        active = set(self._active_layers(options))
        if self.layers is not None:
            active &= set(self.layers)
        if requested is not None:
            active &= set(requested)
        hooked = sorted(active)
        full = self._layer_parameters(options)

        shared = _MaskState(hooked[0] if hooked else -1)
        handles: list = []
        handle = SteeringHandle(handles, hooked, positions)
        try:
            mask_index = _find_mask_index(model)

            def pre_hook(module, args, kwargs):
                mask = kwargs.get("attention_mask") if kwargs else None
                if mask is None and mask_index is not None and len(args) > mask_index:
                    mask = args[mask_index]
                shared.clear()
                if isinstance(mask, torch.Tensor) and mask.ndim == 2:
                    shared.mask = mask
                return None

            def post_hook(module, args, kwargs, output):
                shared.clear()
                return None

            handles.append(model.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(
                model.register_forward_hook(post_hook, with_kwargs=True, always_call=True)
            )
            for k in hooked:
                device = _module_device(blocks[k])
                params = {name: t[k].to(device) for name, t in full.items()}
                hook = self._make_hook(k, params, positions, shared, handle)
                # prepend: run before hooks that record block outputs (output_hidden_states),
                # so recorded states are the steered residual stream
                handles.append(blocks[k].register_forward_hook(hook, with_kwargs=True, prepend=True))
        except BaseException:
            handle.remove()
            raise
        return handle

    def _make_hook(self, k: int, params: dict, positions: str, shared: _MaskState, handle: SteeringHandle):
        import torch

        from ltv_control.adapters._blocks import get_block_input, get_block_output, replace_block_output

        cache = {params[next(iter(params))].device if params else None: params}
        control = self._control
        fused = getattr(self, "_control_last_inplace", None)
        last = positions == "last"
        hidden_size = self.state_dim

        def position_mask(hidden):
            """float32 (B, 1) or (B, L, 1) mask of the real steered positions; None if all real.

            Computed once per forward pass, device and length (cached in ``shared.cache``).
            """
            if shared.mask is None:
                return None
            batch, length = hidden.shape[0], hidden.shape[1]
            key = (hidden.device, length)
            m = shared.cache.get(key)
            if m is None:
                mask = shared.mask
                if mask.shape[0] != batch or mask.shape[1] < length:
                    m = False  # the mask does not describe this call: every position is real
                else:
                    cols = mask[:, -1] if last else mask[:, -length:]
                    cols = cols.to(device=hidden.device) != 0
                    m = False if bool(cols.all()) else cols.to(torch.float32).unsqueeze(-1)
                shared.cache[key] = m
            return None if m is False else m

        Tensor = torch.Tensor
        float32, float64 = torch.float32, torch.float64

        def hook(module, args, kwargs, output):
            # fast paths for the common conventions; the _blocks helpers handle the rest
            z_full = args[0] if args and type(args[0]) is Tensor else get_block_input(args, kwargs)
            hidden = output if type(output) is Tensor else get_block_output(output)
            if k == shared.first_layer:
                shared.state = {}
                self._begin_forward(shared.state)
            p = cache.get(z_full.device)
            if p is None:
                p = {name: t.to(z_full.device) for name, t in params.items()}
                cache[z_full.device] = p
            if z_full.shape[-1] != hidden_size:
                raise DimensionError(
                    f"block {k}: the steerer was fitted for hidden size {hidden_size}, the block "
                    f"input has size {z_full.shape[-1]}"
                )
            z = z_full[:, -1] if last else z_full
            if (
                fused is not None
                and last
                and hidden.dtype == float32
                and z.dtype == float32
                and hidden.device == z.device
                and not (hidden.requires_grad and torch.is_grad_enabled())
                and hidden._base is None
                and hidden.data_ptr() != z_full.data_ptr()
                and position_mask(hidden) is None
            ):
                # float32, newest position only, no pads: one fused in-place update
                fused(k, z, hidden[:, -1], p)
                handle.calls += 1
                return None
            if z.dtype != float32:
                z = z.to(float32)
            u = control(k, z, p, shared.state)
            if u is None:
                return None
            m = position_mask(hidden)
            if m is not None:
                u = u * m
            if u.device != hidden.device:
                u = u.to(hidden.device)
            handle.calls += 1
            # In place when nothing can observe the difference: no autograd graph through the
            # output, and the output is its own storage (not the block input, not a view).
            inplace = (
                not (hidden.requires_grad and torch.is_grad_enabled())
                and hidden._base is None
                and hidden.data_ptr() != z_full.data_ptr()
            )
            new = hidden if inplace else hidden.clone()
            target = new[:, -1] if last else new
            if new.dtype == float32:
                target.add_(u)
            elif new.dtype == float64:
                target.add_(u.to(float64))  # exact widening: no precision lost
            else:  # half types: add in float32, round once
                target.copy_(target.to(float32).add_(u))
            if new is hidden:
                return None  # output modified in place
            return replace_block_output(output, new)

        return hook

    # ------------------------------------------------------------------ files

    def _metadata(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model_id": self.model_id or "",
            "state_dim": str(self.state_dim),
            "horizon": str(self.horizon),
            "layers": json.dumps(self.layer_path),
            "controlled_layers": json.dumps(self.layers),
            "positions": self.positions,
            "hyperparameters": json.dumps(self.hyperparameters, sort_keys=True),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write this steerer to one ``.safetensors`` controller file (atomically).

        See :mod:`ltv_control.adapters.controller_file` for the layout.

        Parameters
        ----------
        path : str or PathLike
            Destination file (its folder must exist); replaced atomically if present.

        Returns
        -------
        pathlib.Path
        """
        from ltv_control.adapters.controller_file import save_controller_file

        tensors = {name: getattr(self, name) for name in self.tensor_names}
        return save_controller_file(path, tensors, self._metadata())

    @classmethod
    def _from_file(cls, tensors: dict, metadata: dict) -> Steerer:
        """Rebuild a steerer from a file's tensors and parsed metadata."""
        return cls(
            tensors,
            state_dim=metadata["state_dim"],
            horizon=metadata["horizon"],
            hyperparameters=metadata["hyperparameters"],
            layers=metadata["controlled_layers"],
            positions=metadata["positions"],
            layer_path=metadata["layers"],
            model_id=metadata["model_id"] or None,
        )

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any = None) -> Steerer:
        """Read a controller file written by :meth:`save`.

        ``Steerer.load`` returns the subclass named by the file's ``kind``; a
        subclass's ``load`` requires its own kind.

        Parameters
        ----------
        path : str or PathLike
        model : torch.nn.Module, optional
            When given, the steerer is checked against it (hidden size, layer count).

        Raises
        ------
        ControllerFileError
            Truncated, corrupt or foreign file, another kind, or inconsistent contents.
        DimensionError
            ``model`` does not match the steerer.
        """
        from ltv_control.adapters.controller_file import load_controller_file

        tensors, raw = load_controller_file(path, kind=cls.kind or None)
        target = steerer_class(raw["kind"]) if not cls.kind else cls
        if target is None:
            raise ControllerFileError(f"{path}: unknown steerer kind {raw['kind']!r}")
        meta: dict[str, Any] = {
            "state_dim": int(raw["state_dim"]),
            "horizon": int(raw["horizon"]),
            "model_id": raw.get("model_id", ""),
            "positions": raw.get("positions") or None,
        }
        try:
            meta["hyperparameters"] = json.loads(raw.get("hyperparameters", "{}"))
            meta["controlled_layers"] = json.loads(raw.get("controlled_layers", "null"))
            meta["layers"] = json.loads(raw.get("layers", "null"))
        except json.JSONDecodeError as exc:
            raise ControllerFileError(f"{path}: corrupt JSON metadata ({exc})") from exc
        try:
            steerer = target._from_file(tensors, meta)
        except (ArgumentError, DimensionError, PropertyError) as exc:
            raise ControllerFileError(f"{path}: inconsistent controller file ({exc})") from exc
        if model is not None:
            steerer.check_model(model)
        return steerer

    # ------------------------------------------------------------------ fitting helpers

    @classmethod
    def from_setpoint_tensors(cls, setpoint: Any, tensors: Mapping[str, Any], *,
                              hyperparameters: Mapping[str, Any], layers: list[int] | None,
                              positions: str) -> Steerer:
        """A steerer of this class sized like ``setpoint`` (``T``, ``n``, layer path, model id)."""
        return cls(
            tensors,
            state_dim=int(setpoint.state_dim),
            horizon=int(setpoint.horizon),
            hyperparameters=dict(hyperparameters),
            layers=layers,
            positions=positions,
            layer_path=setpoint.layer_path,
            model_id=setpoint.model_id,
        )
