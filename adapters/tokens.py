"""Tokenizing prompts for batched forward passes: one pad-id rule, one left-padding helper.

Prompts are tokenized as given (``tokenizer(prompt)``, the tokenizer's own special tokens, no
chat template).  Batches are left-padded, so the last column is every prompt's newest token, with
position ids that count real tokens only (``cumsum(mask) - 1``, 0 on pads).  The plant, the bound
experiment and the app's generation and metrics all tokenize through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ltv_control._exceptions import ArgumentError, DimensionError

__all__ = ["LeftPadded", "pad_token_id", "token_ids", "left_pad", "tokenize_left_padded", "model_device"]


class LeftPadded(NamedTuple):
    """A left-padded batch: three ``(B, L)`` int64 torch tensors."""

    input_ids: Any
    attention_mask: Any
    position_ids: Any


def pad_token_id(tokenizer: Any) -> int:
    """The pad id: the first integer of ``pad_token_id``, ``eos_token_id``, ``bos_token_id``, else 0.

    Pads are masked out, so the choice never changes a result; it only has to be a valid id.
    """
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def token_ids(tokenizer: Any, prompts: Any, max_tokens: int | None = None,
              name: str = "prompts") -> list[list[int]]:
    """Token ids of each prompt, cut to the first ``max_tokens`` (a string is one prompt).

    Raises
    ------
    ArgumentError
        ``prompts`` is not a list of strings.
    DimensionError
        No prompts, or a prompt that tokenizes to no tokens (``name[i]`` is named).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise ArgumentError(f"{name}: expected a list of strings")
    if len(prompts) == 0:
        raise DimensionError(f"{name}: expected at least one prompt, found an empty list")
    encoded = []
    for i, prompt in enumerate(prompts):
        ids = list(tokenizer(prompt)["input_ids"])
        if max_tokens is not None:
            ids = ids[:max_tokens]
        if not ids:
            raise DimensionError(f"{name}[{i}]: tokenizes to no tokens")
        encoded.append(ids)
    return encoded


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, *, device: Any = None) -> LeftPadded:
    """Left-pad token id lists: ``ids[b, L-len_b:] = seq_b``, ``mask`` 1 there, positions ``cumsum(mask)-1``.

    Returns
    -------
    LeftPadded
        ``(input_ids, attention_mask, position_ids)``, each ``(B, L)`` int64 with ``L`` the
        longest sequence, on ``device`` (default CPU).
    """
    import torch

    if not sequences:
        raise DimensionError("sequences: expected at least one sequence, found 0")
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, length - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, length - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if device is not None:
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    return LeftPadded(ids, mask, positions)


def tokenize_left_padded(tokenizer: Any, prompts: Any, *, max_tokens: int | None = None,
                         device: Any = None) -> LeftPadded:
    """Tokenize ``prompts`` (:func:`token_ids`) and left-pad them into one batch (:func:`left_pad`).

    Parameters
    ----------
    tokenizer : transformers tokenizer (any callable returning ``{"input_ids": [...]}``)
    prompts : list of str
    max_tokens : int or None, default None
        Keep each prompt's first ``max_tokens`` tokens.
    device : torch device or None
        Where the tensors go (default CPU).

    Returns
    -------
    LeftPadded
        ``(input_ids, attention_mask, position_ids)``, each ``(B, L)`` int64.
    """
    return left_pad(token_ids(tokenizer, prompts, max_tokens), pad_token_id(tokenizer), device=device)


def model_device(model: Any) -> Any:
    """Device of the model's input embeddings (else of its first parameter or buffer, else CPU)."""
    import torch

    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
