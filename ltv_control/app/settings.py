"""What an evaluation runs: method names, metric keys and :class:`ExperimentSettings`.

Shared by :mod:`ltv_control.app.experiment` (which runs it), :mod:`ltv_control.app.methods`
(which fits the methods) and :mod:`ltv_control.app.cli` (which builds it from options).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ltv_control import PropertyError
from ltv_control.app.generation import Decoding

__all__ = ["METHODS", "METRIC_KEYS", "ExperimentSettings"]

METHODS = ("unsteered", "actadd", "pid", "alqr", "alqr_plus", "alqr_multi", "constrained")
"""Every method name a report may hold, in report order (``alqr_multi``: several concepts
at once, for a multi-concept task only)."""

METRIC_KEYS = ("positive_rate", "vader_mean", "perplexity", "distinct2", "tokens_per_s")
"""The keys of a metrics record M."""


@dataclass
class ExperimentSettings:
    """Every knob of the evaluation, each with its default.

    Attributes
    ----------
    methods : tuple of str
        Methods to run (subset of :data:`METHODS`; ``unsteered`` is always added).  A
        ``constrained`` fit that fails is reported in the notes and skipped.
    n_fit, n_eval, n_jacobian : int or None
        How many fitting pairs, evaluation prompts and Jacobian prompts to use (None: all).
    decoding : Decoding
        Shared decoding rule (greedy by default).
    q, r, qf, lam : float
        A-LQR weights (state, input, terminal) and setpoint scale β*_k = lam·‖e_k‖.  ``r``
        None (the default) is the A-LQR form's own default (0.1 relative, 1.0 paper,
        ``ltv_control.adapters.scaling.DEFAULT_R``) and 1.0 for the constrained and the
        multi-concept steerers.
    alqr_form : {"auto", "relative", "paper"}
        A-LQR form of ``alqr`` / ``alqr_plus`` (``ALQRSteerer.from_system(form=)``): ``auto``
        (default: the paper's form where the model's blocks answer its input linearly, the
        relative form otherwise, decided on the Jacobian prompts; one set of defaults for
        SmolLM2 and Gemma-3, docs/transfer.md), the relative form (normalised gains, massive
        coordinates out of the direction, one-sided law) or the paper's as published.
    max_jacobian_tokens : int
        Jacobian prompts are cut to this many tokens.
    actadd_layers : tuple of int or None
        ActAdd layers (None: the layer at one third of the depth).
    actadd_coeff : float
        ActAdd default coefficient.
    pid : dict
        S-PID gains (kp, ki, kd) and reset_every.
    constrained : dict
        Keyword arguments of ``ConstrainedSteerer.fit`` (rank, budget, ...).
    sweep : dict of str to list of float
        λ grid per method (``coeff`` grid for ActAdd); each must contain the default.
    perplexity_batch_size : int
    """

    methods: tuple[str, ...] = ("unsteered", "actadd", "pid", "alqr", "alqr_plus", "constrained")
    n_fit: int | None = 64
    n_eval: int | None = 48
    n_jacobian: int | None = 2
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=20))
    q: float = 0.1
    r: float | None = None
    qf: float = 0.1
    lam: float = 1.0
    alqr_form: str = "auto"
    max_jacobian_tokens: int = 12
    actadd_layers: tuple[int, ...] | None = None
    actadd_coeff: float = 4.0
    pid: dict = field(default_factory=lambda: {"kp": 0.5, "ki": 0.5, "kd": 0.0, "reset_every": 10})
    constrained: dict = field(default_factory=dict)
    sweep: dict = field(default_factory=lambda: {
        "actadd": [2.0, 4.0, 6.0, 8.0],
        "pid": [1.0],
        "alqr": [0.5, 1.0, 1.5],
        "alqr_plus": [1.0],
        "alqr_multi": [1.0],
        "constrained": [1.0],
    })
    perplexity_batch_size: int = 16

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise PropertyError(f"methods: unknown {unknown}; expected names from {list(METHODS)}")
        if "unsteered" not in self.methods:
            self.methods = ("unsteered",) + tuple(self.methods)
        for name in ("q", "qf"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0):
                raise PropertyError(f"{name} must be a float >= 0, found {getattr(self, name)!r}")
        from ltv_control.adapters.form_choice import FORM_OPTIONS

        if self.alqr_form not in FORM_OPTIONS:
            raise PropertyError(f"alqr_form must be one of {FORM_OPTIONS}, found {self.alqr_form!r}")
        if self.r is not None and not (isinstance(self.r, (int, float)) and self.r > 0):
            raise PropertyError(f"r must be a float > 0, found {self.r!r}")
        for key, grid in self.sweep.items():
            if key not in METHODS:
                raise PropertyError(f"sweep: unknown method {key!r}")
            if not grid or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in grid):
                raise PropertyError(f"sweep[{key!r}] must be a non-empty list of finite floats")

    def default_lam(self, method: str) -> float:
        """λ (ActAdd: coeff) at which a method's headline numbers are reported."""
        return self.actadd_coeff if method == "actadd" else self.lam

    def grid(self, method: str) -> list[float]:
        """The sorted λ (ActAdd: coeff) values a method is evaluated at: its sweep and its
        default."""
        return sorted({float(x) for x in self.sweep.get(method, [])} |
                      {float(self.default_lam(method))})

    def as_dict(self) -> dict:
        """JSON-serializable form, recorded as ``settings`` in the report."""
        out = asdict(self)
        out["methods"] = list(self.methods)
        out["decoding"] = self.decoding.as_dict()
        out["actadd_layers"] = None if self.actadd_layers is None else list(self.actadd_layers)
        return out
