"""Batched generation with left padding, optionally under a steering controller.

Every method in an evaluation goes through :func:`generate_continuations`, so they share the
prompts, the decoding rule (greedy, or sampling seeded per batch), the KV-cache mode and the
batching.  ``torch`` is imported lazily.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ltv_control import ArgumentError, PropertyError

__all__ = ["Decoding", "Generation", "generate_continuations"]


@dataclass(frozen=True)
class Decoding:
    """Decoding rule shared by every method of an evaluation.

    Attributes
    ----------
    max_new_tokens : int, default 24
    do_sample : bool, default False
        Greedy decoding unless True.
    temperature, top_p : float, defaults 0.8 and 0.95
        Used only when sampling.
    seed : int, default 0
        Sampling seed; batch ``b`` uses ``seed + b`` so results do not depend on other batches.
    use_cache : bool, default True
        KV-cache on (steered keys/values stay cached) or off (history recomputed each step).
    batch_size : int, default 16
    """

    max_new_tokens: int = 24
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    use_cache: bool = True
    batch_size: int = 16

    def __post_init__(self):
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PropertyError(f"{name} must be a positive int, found {value!r}")
        if not self.temperature > 0:
            raise PropertyError(f"temperature must be > 0, found {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise PropertyError(f"top_p must be in (0, 1], found {self.top_p!r}")

    def as_dict(self) -> dict:
        """Plain-dict form (JSON-serializable)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Generation:
    """Continuations of a list of prompts.

    Attributes
    ----------
    prompts : list of str
    texts : list of str
        Decoded continuations (prompt excluded, cut at the first EOS, special tokens skipped).
    token_ids : list of list of int
        Continuation token ids (cut at the first EOS, EOS excluded).
    n_tokens : int
        Generated tokens counted for throughput (continuation tokens, EOS included).
    seconds : float
        Wall time spent in ``generate`` calls.
    """

    prompts: list[str]
    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    n_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time."""
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None),
                   tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _generate_options(decoding: Decoding, pad: int) -> dict:
    """Keyword arguments of ``model.generate`` for ``decoding`` (greedy or nucleus sampling)."""
    options = dict(max_new_tokens=decoding.max_new_tokens, do_sample=decoding.do_sample,
                   use_cache=decoding.use_cache, pad_token_id=pad)
    if decoding.do_sample:
        options.update(temperature=decoding.temperature, top_p=decoding.top_p, top_k=0)
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    return options


def _collect(out: Generation, rows: list[list[int]], eos: set[int], tokenizer) -> None:
    """Append continuations cut at their first EOS (EOS counted as generated, not kept)."""
    for row in rows:
        cut = next((j for j, token in enumerate(row) if token in eos), len(row))
        out.n_tokens += min(cut + 1, len(row))
        out.token_ids.append(row[:cut])
        out.texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())


def _check_prompts(prompts) -> None:
    """Refuse anything but a non-empty sequence of non-blank strings."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ArgumentError("prompts must be a sequence of str")
    if not prompts:
        raise PropertyError("prompts must hold at least one prompt, found 0")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise PropertyError(f"prompts[{empty[0]}]: empty prompt (nothing to continue); give each "
                            f"prompt some text ({len(empty)} empty)")


def generate_continuations(model, tokenizer, prompts: Sequence[str], *,
                           decoding: Decoding | None = None, steering=None,
                           progress: bool = True, desc: str = "generate") -> Generation:
    """Generate continuations of ``prompts`` in left-padded batches.

    Parameters
    ----------
    model : transformers causal LM
    tokenizer : its tokenizer; prompts are tokenized as given (``tokenizer(prompt)``), batches
        left-padded by :func:`ltv_control.adapters.tokenize_left_padded`.
    prompts : sequence of str, length P
    decoding : Decoding, optional
        Defaults to ``Decoding()`` (greedy, 24 new tokens, KV cache on).
    steering : callable returning a context manager, optional
        Called once per batch, e.g. ``lambda: steerer.attach(model, positions="last")``; the
        hooks are in place during ``generate`` and removed when it returns or raises.
    progress : bool, default True
        tqdm bar over batches.
    desc : str
        Progress-bar label.

    Returns
    -------
    Generation

    Raises
    ------
    ArgumentError
        ``prompts`` is not a sequence of str, or ``decoding`` not a Decoding.
    PropertyError
        No prompt, or an empty (whitespace-only) prompt, which the model cannot continue.
    """
    import torch

    from ltv_control.adapters import tokenize_left_padded
    from ltv_control.adapters import model_device, pad_token_id

    _check_prompts(prompts)
    decoding = decoding or Decoding()
    if not isinstance(decoding, Decoding):
        raise ArgumentError(f"decoding must be a Decoding, found {type(decoding).__name__}")
    options = _generate_options(decoding, pad_token_id(tokenizer))
    eos, device = _eos_ids(model, tokenizer), model_device(model)
    out = Generation(prompts=list(prompts))
    starts = list(range(0, len(prompts), decoding.batch_size))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for batch_index, start in enumerate(starts):
        batch = tokenize_left_padded(tokenizer, list(prompts[start:start + decoding.batch_size]),
                                     device=device)
        if decoding.do_sample:
            torch.manual_seed(decoding.seed + batch_index)
        context = steering() if steering is not None else contextlib.nullcontext()
        began = time.perf_counter()
        with torch.no_grad(), context:
            generated = model.generate(input_ids=batch.input_ids,
                                       attention_mask=batch.attention_mask, **options)
        out.seconds += time.perf_counter() - began
        _collect(out, generated[:, batch.input_ids.shape[1]:].tolist(), eos, tokenizer)
    return out
