"""PyTorch / transformers adapters: a language model as one LTV plant, and steering controllers.

Everything here is imported lazily (module ``__getattr__``), so ``import ltv_control.adapters``
does not import torch or transformers. To add an export, add one ``"Name": "module"`` line to
``_LAZY_EXPORTS`` (the module is ``ltv_control.adapters.<module>``).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY_EXPORTS: dict[str, str] = {
    # the plant (model loading, Jacobians, diagnostics)
    "load_embedded_model": "model_loading",
    "load_model": "model_loading",
    "model_id_of": "model_loading",
    "LLMPlant": "plant",
    "Setpoint": "setpoint",
    "StreamedSystem": "gains",
    "tokenize_left_padded": "tokens",
    "pad_token_id": "tokens",
    "left_pad": "tokens",
    "model_device": "tokens",
    "find_decoder_layers": "_blocks",
    "linearity_diagnostics": "diagnostics",
    "LinearityDiagnostics": "diagnostics",
    "subspace_similarity": "diagnostics",
    "plot_linearity": "diagnostics",
    "input_nonlinearity": "diagnostics",
    "choose_form": "form_choice",
    "FormChoice": "form_choice",
    # steering (steerers, hooks, controller files)
    "Steerer": "steerer",
    "SteeringHandle": "hooks",
    "attach_laws": "hooks",
    "AffineLaw": "laws",
    "PIDLaw": "laws",
    "Law": "laws",
    "ALQRSteerer": "alqr",
    "ActAddSteerer": "actadd",
    "PIDSteerer": "pid",
    "ConstrainedSteerer": "constrained_steerer",
    "MultiConceptSteerer": "multi_concept",
    "save_controller_file": "controller_file",
    "load_controller_file": "controller_file",
    # llama.cpp control vectors (export / import)
    "export_gguf": "control_vector",
    "load_control_vector": "control_vector",
    # tracking-error bound on a language model
    "llm_bound_experiment": "bound_experiment",
    "closed_loop_states": "bound_experiment",
    "BoundExperimentResult": "bound_experiment",
    # bounded memory and several processes
    "fit_alqr_streamed": "streamed_fit",
    "distributed_jacobians": "distributed",
    "iter_distributed_jacobians": "distributed",
    "init_distributed": "distributed",
}

__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
