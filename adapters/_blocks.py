"""Generic decoder-block discovery and block input/output conventions.

A decoder-only transformer is, for ltv-control, a stack of ``T`` blocks applied
one after the other to the residual stream: ``z_{k+1} = φ_k(z_k)``. This module
finds that stack without a table of model families, and reads/replaces the
hidden states that go into and come out of one block, whatever calling
convention the family uses.

Conventions handled
-------------------
Block input
    ``hidden_states`` is the first positional argument (every transformers
    family) or the keyword ``hidden_states=``.
Block output
    a plain tensor (transformers >= 5), a tuple or list whose first item is the
    hidden states (transformers < 5, Falcon, GPT-2 style blocks), or a
    :class:`~transformers.utils.ModelOutput` / mapping with a ``hidden_states``
    or ``last_hidden_state`` entry (otherwise its first entry).

Discovery rule (:func:`find_decoder_layers`)
    Every :class:`torch.nn.ModuleList` whose elements all share one class is a
    candidate. When the model's config states its layer count
    (``num_hidden_layers``, ``n_layer``, ``num_layers`` or ``n_layers``, also
    inside ``text_config``), candidates of exactly that length are kept; when no
    same-class list has that length, a ModuleList of mixed classes with exactly
    that length is taken (hybrid stacks such as Jamba or Zamba2). Among
    the remaining candidates the longest list wins, then the one holding the
    most parameters (so a per-layer list of MoE experts never beats the layer
    list), then the shallowest attribute path. When nothing fits, pass
    ``layers=``: a ModuleList, a list of modules, or a dotted path such as
    ``"transformer.h"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ltv_control._exceptions import ArgumentError, ControlError
from ltv_control._validation import public_api

__all__ = [
    "LayerDiscoveryError",
    "find_decoder_layers",
    "get_block_input",
    "replace_block_input",
    "get_block_output",
    "replace_block_output",
    "config_num_layers",
    "config_hidden_size",
    "hidden_size_of",
]

_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HIDDEN_SIZE_KEYS = ("hidden_size", "n_embd", "d_model", "dim")


class LayerDiscoveryError(ControlError, ValueError):
    """The decoder blocks of a model could not be found; pass ``layers=`` explicitly."""


def _config_value(model: Any, keys: tuple[str, ...]) -> int | None:
    """First integer found under one of ``keys`` in ``model.config`` (or its ``text_config``)."""
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for key in keys:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def config_num_layers(model: Any) -> int | None:
    """Number of decoder layers stated by ``model.config`` (``None`` when it states none)."""
    return _config_value(model, _LAYER_COUNT_KEYS)


def config_hidden_size(model: Any) -> int | None:
    """Hidden (residual-stream) size stated by ``model.config`` (``None`` when it states none)."""
    return _config_value(model, _HIDDEN_SIZE_KEYS)


def hidden_size_of(model: Any) -> int | None:
    """Hidden size from ``model.config``, else the input embeddings' width (``None`` if neither)."""
    hidden = config_hidden_size(model)
    if hidden is None:
        get_emb = getattr(model, "get_input_embeddings", None)
        emb = get_emb() if callable(get_emb) else None
        hidden = getattr(emb, "embedding_dim", None)
    return None if hidden is None else int(hidden)


def _resolve_path(model: Any, path: str) -> Any:
    """Follow a dotted attribute path (integer parts index into sequences)."""
    obj = model
    for part in path.split("."):
        if part == "":
            raise ArgumentError(f"layers: empty component in the dotted path {path!r}")
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif part.isdigit() and hasattr(obj, "__getitem__"):
            try:
                obj = obj[int(part)]
            except (IndexError, KeyError, TypeError) as exc:
                raise LayerDiscoveryError(
                    f"layers: cannot index {type(obj).__name__} with {part!r} in the path {path!r}"
                ) from exc
        else:
            raise LayerDiscoveryError(
                f"layers: {type(model).__name__} has no attribute path {path!r} "
                f"(failed at {part!r} on a {type(obj).__name__})"
            )
    return obj


def _as_module_list(obj: Any, what: str) -> list:
    import torch

    if isinstance(obj, torch.nn.Module) and not isinstance(
        obj, torch.nn.ModuleList | torch.nn.Sequential
    ):
        raise ArgumentError(
            f"layers: expected a ModuleList, a list of modules or a dotted path to one; "
            f"{what} is a single {type(obj).__name__}"
        )
    if not isinstance(obj, torch.nn.ModuleList | torch.nn.Sequential | list | tuple):
        raise ArgumentError(
            f"layers: expected a ModuleList, a list of modules or a dotted path string; "
            f"found {type(obj).__name__}"
        )
    modules = list(obj)
    if not modules:
        raise LayerDiscoveryError(f"layers: {what} is empty")
    for i, module in enumerate(modules):
        if not isinstance(module, torch.nn.Module):
            raise ArgumentError(
                f"layers: item {i} of {what} is a {type(module).__name__}, expected a torch.nn.Module"
            )
    return modules


@public_api
def find_decoder_layers(model: Any, layers: Any = None) -> tuple[list, str | None]:
    """Find the decoder blocks of ``model``, in execution order.

    Parameters
    ----------
    model : torch.nn.Module
        A decoder-only (causal) language model.
    layers : torch.nn.ModuleList, list of torch.nn.Module, str or None, default None
        Override of the generic search: the blocks themselves, or a dotted
        attribute path from ``model`` (e.g. ``"transformer.h"``,
        ``"model.layers"``). ``None`` searches generically (see the module
        docstring for the rule).

    Returns
    -------
    blocks : list of torch.nn.Module
        The ``T`` decoder blocks.
    path : str or None
        The dotted path of the block list inside ``model`` (``None`` when the
        blocks were passed as modules).

    Raises
    ------
    LayerDiscoveryError
        No candidate list was found, or the given path does not exist.
    ArgumentError
        ``layers`` has an unsupported type.
    """
    import torch

    if layers is not None:
        if isinstance(layers, str):
            return _as_module_list(_resolve_path(model, layers), f"the path {layers!r}"), layers
        return _as_module_list(layers, "the given layers"), None

    if not isinstance(model, torch.nn.Module):
        raise ArgumentError(f"model: expected a torch.nn.Module, found {type(model).__name__}")

    candidates, mixed = [], []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        n_params = sum(p.numel() for p in module.parameters())
        if len({type(m) for m in module}) == 1:
            candidates.append((name, module, n_params))
        else:
            mixed.append((name, module, n_params))

    expected = config_num_layers(model)
    if expected is not None:
        matching = [c for c in candidates if len(c[1]) == expected]
        if not matching:
            # hybrid stacks (attention and state-space blocks of different classes in one list)
            matching = [c for c in mixed if len(c[1]) == expected]
        if matching:
            candidates = matching
    if not candidates:
        stated = f" (config states {expected} layers)" if expected is not None else ""
        raise LayerDiscoveryError(
            f"could not find the decoder blocks of {type(model).__name__}{stated}: no "
            "torch.nn.ModuleList of same-class modules. Pass layers= explicitly: the ModuleList, "
            "a list of the blocks, or a dotted path such as 'transformer.h'."
        )
    candidates.sort(key=lambda c: (-len(c[1]), -c[2], c[0].count("."), c[0]))
    name, module, _ = candidates[0]
    return list(module), name


def get_block_input(args: tuple, kwargs: Mapping[str, Any]):
    """Hidden states entering a block: ``args[0]`` or ``kwargs["hidden_states"]``.

    Parameters
    ----------
    args, kwargs
        The call arguments of the block (as seen by a forward pre-hook with
        ``with_kwargs=True``).

    Returns
    -------
    torch.Tensor, shape (batch, seq, n)
    """
    import torch

    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    hidden = kwargs.get("hidden_states") if kwargs else None
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise ArgumentError(
        "block call: expected the hidden states as the first positional argument or as "
        f"hidden_states=; found {len(args)} positional arguments and keywords {sorted(kwargs or {})}"
    )


def replace_block_input(args: tuple, kwargs: Mapping[str, Any], hidden) -> tuple[tuple, dict]:
    """Copy of the call arguments ``(args, kwargs)`` with the hidden states replaced by ``hidden``."""
    import torch

    kwargs = dict(kwargs or {})
    if args and isinstance(args[0], torch.Tensor):
        return (hidden, *args[1:]), kwargs
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        kwargs["hidden_states"] = hidden
        return tuple(args), kwargs
    raise ArgumentError(
        "block call: expected the hidden states as the first positional argument or as "
        f"hidden_states=; found {len(args)} positional arguments and keywords {sorted(kwargs)}"
    )


def _mapping_key(output: Mapping) -> Any:
    for key in ("hidden_states", "last_hidden_state"):
        if key in output and output[key] is not None:
            return key
    for key, value in output.items():
        if value is not None:
            return key
    raise ArgumentError("block output: an empty mapping holds no hidden states")


def get_block_output(output: Any):
    """Hidden states leaving a block.

    A tensor is returned as is; a tuple/list gives its first item; a
    ``ModelOutput``/mapping gives ``hidden_states`` (or ``last_hidden_state``,
    or its first non-``None`` entry).

    Returns
    -------
    torch.Tensor, shape (batch, seq, n)
    """
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return output[_mapping_key(output)]
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ArgumentError(
        "block output: expected a tensor, a tuple/list starting with the hidden states, or a "
        f"ModelOutput; found {type(output).__name__}"
    )


def replace_block_output(output: Any, hidden) -> Any:
    """``output`` with its hidden states replaced by ``hidden``, same structure.

    A tensor becomes ``hidden``; a tuple/list keeps its other items (same
    container type); a ``ModelOutput``/mapping is copied (same class) with the
    hidden-states entry replaced. ``output`` itself is not modified.
    """
    import torch

    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, Mapping):
        key = _mapping_key(output)
        items = dict(output.items())
        items[key] = hidden
        try:
            return type(output)(**items)
        except TypeError:
            return dict(items)
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        rest = list(output[1:])
        if isinstance(output, list):
            return [hidden, *rest]
        if hasattr(output, "_fields"):  # NamedTuple
            return type(output)(hidden, *rest)
        return (hidden, *rest)
    raise ArgumentError(
        "block output: expected a tensor, a tuple/list starting with the hidden states, or a "
        f"ModelOutput; found {type(output).__name__}"
    )
