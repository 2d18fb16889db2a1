"""The steerer type: named per-layer tensors, hyper-parameters, a kind registry, attach/save/load.

A steerer holds float32 tensors fitted on an :class:`~ltv_control.adapters.LLMPlant` and turns
them into per-layer laws (:mod:`ltv_control.adapters.laws`) that
:func:`ltv_control.adapters.hooks.attach_laws` applies to a model.  Files go through
:mod:`ltv_control.adapters.controller_file`.

Writing a steerer: set ``kind`` (registered, so :meth:`Steerer.load` dispatches on it; add the
module to :data:`BUILTIN_KINDS` so a fresh process finds it), ``tensor_names`` (each ``(T,)`` or
``(T, n)``), ``hyperparameter_names``, ``attach_options`` and ``default_positions``, and implement
:meth:`Steerer.layer_laws`.

Names: ``horizon`` is ``T``, ``state_dim`` is ``n``; on a steerer ``layers`` are the controlled
layer indices and ``layer_path`` the dotted path of the decoder blocks (the ``layers=`` override
of :class:`~ltv_control.adapters.LLMPlant`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ltv_control._exceptions import ArgumentError, ControllerFileError, DimensionError, PropertyError
from ltv_control.adapters._checks import check_layer_indices, check_positions, reject_unknown
from ltv_control.adapters.hooks import SteeringHandle, attach_laws

__all__ = ["Steerer", "SteeringHandle", "BUILTIN_KINDS", "steerer_class"]

#: module (under ``ltv_control.adapters``) defining each built-in kind; importing it registers
#: the class, so a kind is found however the steerer classes were (not) imported before
BUILTIN_KINDS = {"alqr": "alqr", "actadd": "actadd", "pid": "pid", "constrained": "constrained_steerer",
                 "alqr_multi": "multi_concept"}


def steerer_class(kind: str) -> type | None:
    """The steerer class registered for ``kind`` (built-in kinds are imported on demand)."""
    if kind not in Steerer._registry and kind in BUILTIN_KINDS:
        importlib.import_module(f"ltv_control.adapters.{BUILTIN_KINDS[kind]}")
    return Steerer._registry.get(kind)


def _one_of(new: Any, old: Any, new_name: str, old_name: str) -> int:
    """The value of a renamed keyword: the new name, else the old one (not both, not neither)."""
    if new is None and old is None:
        raise ArgumentError(f"{new_name}: required (an int)")
    if new is not None and old is not None and int(new) != int(old):
        raise ArgumentError(f"{new_name}={new} and its old name {old_name}={old} disagree")
    return int(new if new is not None else old)


def _float32_tensor(name: str, value: Any, T: int, n: int) -> Any:
    """``value`` as a float32 CPU tensor of shape ``(T,)`` or ``(T, n)``, finite."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().to(device="cpu", dtype=torch.float32).clone()
    else:
        t = torch.as_tensor(np.asarray(value, dtype=np.float32)).clone()
    if t.ndim not in (1, 2) or t.shape[0] != T or (t.ndim == 2 and t.shape[1] != n):
        raise DimensionError(f"{name}: expected shape ({T},) or ({T}, {n}), found {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise PropertyError(f"{name}: expected finite values, found NaN or inf")
    return t


class Steerer:
    """Base class of the steerers (A-LQR, ActAdd, S-PID, constrained).

    Parameters
    ----------
    tensors : mapping of str to array
        The ``tensor_names`` tensors, ``(T,)`` or ``(T, n)``; kept as float32 CPU attributes.
    state_dim, horizon : int
        ``n`` (hidden size) and ``T`` (decoder blocks); the old names ``hidden_size`` and
        ``num_layers`` are accepted too.
    hyperparameters : mapping, optional
        Values of ``hyperparameter_names`` (attributes).
    layers : list of int or None, default None
        The controlled layer indices (``None``: every layer the law acts on).
    positions : {"last", "all"} or None
        Default positions of :meth:`attach` (``None``: the class default).
    layer_path : str or None
        Dotted path of the decoder blocks used at fit time (re-used at attach).
    model_id : str or None
        The model the steerer was fitted on (informative).
    """

    kind: ClassVar[str] = ""
    tensor_names: ClassVar[tuple[str, ...]] = ()
    hyperparameter_names: ClassVar[tuple[str, ...]] = ()
    attach_options: ClassVar[tuple[str, ...]] = ()
    default_positions: ClassVar[str] = "last"
    _registry: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # only classes naming their own kind are registered (first wins): a subclass that merely
        # inherits a kind (e.g. a test double) never hijacks loading
        if "kind" in cls.__dict__ and cls.kind:
            Steerer._registry.setdefault(cls.kind, cls)

    def __init__(self, tensors: Mapping[str, Any], *, state_dim: int | None = None,
                 horizon: int | None = None, hidden_size: int | None = None,
                 num_layers: int | None = None, hyperparameters: Mapping[str, Any] | None = None,
                 layers: Sequence[int] | None = None, positions: str | None = None,
                 layer_path: str | None = None, model_id: str | None = None) -> None:
        self.state_dim = _one_of(state_dim, hidden_size, "state_dim", "hidden_size")
        self.horizon = _one_of(horizon, num_layers, "horizon", "num_layers")
        missing = [name for name in self.tensor_names if name not in tensors]
        extra = [name for name in tensors if name not in self.tensor_names]
        if missing or extra:
            raise ArgumentError(f"tensors: expected exactly {list(self.tensor_names)}, missing {missing}, "
                                f"unexpected {extra}")
        for name in self.tensor_names:
            setattr(self, name, _float32_tensor(name, tensors[name], self.horizon, self.state_dim))
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

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The fitted hyper-parameters, by name."""
        return {name: getattr(self, name) for name in self.hyperparameter_names}

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return (f"{type(self).__name__}(horizon={self.horizon}, state_dim={self.state_dim}, "
                f"positions={self.positions!r}, layers={self.layers}, {hyper})")

    @classmethod
    def check_hyperparameters(cls, *, horizon: int, state_dim: int, **values: Any) -> None:
        """Refuse hyper-parameters a controller file of this kind could not hold.

        Called by every ``fit`` before its first forward pass, with the same limits as
        :data:`~ltv_control.adapters.controller_schema.HYPERPARAMETER_SCHEMAS` applies at load
        (e.g. ``|coeff| <= 1e6``), so a fit never runs for minutes and then fails at ``save``.

        Parameters
        ----------
        horizon, state_dim : int
            ``T`` and ``n`` of the plant (ranges such as ``rank <= n`` depend on them).
        **values
            Hyper-parameters by name; names the schema does not list are not checked here.

        Raises
        ------
        PropertyError
            Naming the hyper-parameter, what was expected and what was found.
        """
        from ltv_control.adapters.controller_schema import HYPERPARAMETER_SCHEMAS, check_field

        fields = {field.name: field for field in HYPERPARAMETER_SCHEMAS.get(cls.kind, ())}
        for name, value in values.items():
            if name in fields:
                try:
                    check_field(fields[name], value, state_dim=state_dim, horizon=horizon)
                except ValueError as exc:
                    raise PropertyError(f"{cls.__name__}.fit: {exc}") from None

    @classmethod
    def from_setpoint_tensors(cls, setpoint: Any, tensors: Mapping[str, Any], *,
                              hyperparameters: Mapping[str, Any], layers: list[int] | None,
                              positions: str) -> Steerer:
        """A steerer of this class sized like ``setpoint`` (``T``, ``n``, layer path, model id)."""
        return cls(tensors, state_dim=int(setpoint.state_dim), horizon=int(setpoint.horizon),
                   hyperparameters=dict(hyperparameters), layers=layers, positions=positions,
                   layer_path=setpoint.layer_path, model_id=setpoint.model_id)

    # ------------------------------------------------------------------ laws and attach

    def layer_laws(self, **options: Any) -> dict[int, Any]:
        """The per-layer laws ``{k: Law}`` after the attach ``options`` (``None``: fitted value).

        Layers where the law is identically zero may be left out.
        """
        raise NotImplementedError

    def check_model(self, model: Any) -> list:
        """Check that ``model`` matches this steerer; return its decoder blocks.

        Raises
        ------
        DimensionError
            Different hidden size or number of decoder blocks (expected vs found).
        """
        from ltv_control.adapters._blocks import LayerDiscoveryError, find_decoder_layers, hidden_size_of

        try:
            blocks, _ = find_decoder_layers(model, layers=self.layer_path)
        except (LayerDiscoveryError, ArgumentError):
            if self.layer_path is None:
                raise
            blocks, _ = find_decoder_layers(model, layers=None)  # the fit's path is not on this model
        hidden = hidden_size_of(model)
        if len(blocks) != self.horizon:
            raise DimensionError(f"model: the steerer was fitted for {self.horizon} decoder layers, the "
                                 f"model has {len(blocks)} ({type(model).__name__})")
        if hidden is not None and hidden != self.state_dim:
            raise DimensionError(f"model: the steerer was fitted for hidden size {self.state_dim}, the "
                                 f"model has hidden size {hidden} ({type(model).__name__})")
        return blocks

    def attach(self, model: Any, *, positions: str | None = None, layers: Sequence[int] | None = None,
               **options: Any) -> SteeringHandle:
        """Steer ``model`` while the returned handle is active (use it in a ``with`` block).

        Parameters
        ----------
        model : torch.nn.Module
            Its hidden size and number of decoder blocks must match (checked before any pass).
        positions : {"last", "all"} or None, default None
            See :mod:`ltv_control.adapters.hooks`; ``None``: the fitted default.
        layers : list of int or None, default None
            Restrict control to these layer indices (intersected with the fitted ones).
        **options
            The subclass's ``attach_options`` (``None`` means the fitted value).

        Returns
        -------
        SteeringHandle
            Context manager; hooks removed on exit, also when an exception propagates.

        Raises
        ------
        DimensionError
            The model does not match.
        ArgumentError
            Unknown option or bad ``positions``.
        ControlError
            This steerer is already attached to ``model`` (nested attach would steer twice).
        """
        reject_unknown({k: v for k, v in options.items() if k not in self.attach_options},
                       f"{type(self).__name__}.attach")
        positions = check_positions(positions if positions is not None else self.positions)
        requested = check_layer_indices(layers, self.horizon)
        blocks = self.check_model(model)
        laws = self.layer_laws(**options)
        keep = set(laws)
        for restriction in (self.layers, requested):
            if restriction is not None:
                keep &= set(restriction)
        return attach_laws(model, blocks, {k: laws[k] for k in sorted(keep)}, positions=positions,
                           width=self.state_dim, owner=self)

    # ------------------------------------------------------------------ files

    def _record(self) -> Any:
        """This steerer as a :class:`~ltv_control.adapters.controller_file.SteererRecord`."""
        from ltv_control.adapters.controller_file import SteererRecord

        return SteererRecord(kind=self.kind, tensors={name: getattr(self, name) for name in self.tensor_names},
                             state_dim=self.state_dim, horizon=self.horizon,
                             hyperparameters=self.hyperparameters, controlled_layers=self.layers,
                             positions=self.positions, layer_path=self.layer_path,
                             model_id=self.model_id, metadata={})

    @classmethod
    def _from_record(cls, record: Any) -> Steerer:
        """Rebuild a steerer from a controller file's record."""
        return cls(record.tensors, state_dim=record.state_dim, horizon=record.horizon,
                   hyperparameters=record.hyperparameters, layers=record.controlled_layers,
                   positions=record.positions, layer_path=record.layer_path, model_id=record.model_id)

    def save(self, path: str | os.PathLike) -> Path:
        """Write this steerer to one ``.safetensors`` controller file, atomically (fsync'ed).

        Parameters
        ----------
        path : str or PathLike
            Destination (see :mod:`ltv_control.adapters.controller_file` for the layout);
            replaced atomically if present.

        Returns
        -------
        pathlib.Path
        """
        from ltv_control.adapters.controller_file import write_steerer_file

        return write_steerer_file(path, self._record())

    def export_gguf(self, path: str | os.PathLike, **options: Any) -> Any:
        """Write this steerer as a llama.cpp control-vector GGUF (``direction.k`` on block ``k``).

        Constant laws (ActAdd) export exactly; feedback laws export their mean closed-loop input
        ``ū_k`` along steered runs of calibration prompts (an approximation, reported as such).

        Parameters
        ----------
        path : str or PathLike
            Destination ``.gguf`` file, written atomically.
        **options
            Passed to :func:`ltv_control.adapters.control_vector.export_gguf` (``model``,
            ``tokenizer`` and ``prompts`` are required for feedback laws).

        Returns
        -------
        ControlVectorExport
            Path-like report: the vectors, the captured share of the input energy, the dropped
            block-0 input.
        """
        from ltv_control.adapters.control_vector import export_gguf

        return export_gguf(self, path, **options)

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any = None) -> Steerer:
        """Read a controller file written by :meth:`save`.

        ``Steerer.load`` returns the class named by the file's ``kind`` (in any process); a
        subclass's ``load`` requires its own kind.

        Parameters
        ----------
        path : str or PathLike
        model : torch.nn.Module, optional
            When given, the steerer is checked against it (hidden size, layer count).

        Raises
        ------
        ControllerFileError
            Truncated, corrupt or foreign file, another or an unknown kind, inconsistent contents.
        DimensionError
            ``model`` does not match the steerer.
        """
        from ltv_control.adapters.controller_file import read_steerer_file

        record = read_steerer_file(path, kind=cls.kind or None)
        target = steerer_class(record.kind) if not cls.kind else cls
        if target is None:
            raise ControllerFileError(f"{path}: unknown steerer kind {record.kind!r} "
                                      f"(known: {sorted(set(BUILTIN_KINDS) | set(Steerer._registry))})")
        try:
            steerer = target._from_record(record)
        except (ArgumentError, DimensionError, PropertyError) as exc:
            raise ControllerFileError(f"{path}: inconsistent controller file ({exc})") from exc
        if model is not None:
            steerer.check_model(model)
        return steerer
