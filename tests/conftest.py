"""Shared fixtures for the ltv-control test-suite."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Two cores: keep BLAS/OpenMP from oversubscribing when several processes run.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator, fresh per test."""
    return np.random.default_rng(20260425)


@pytest.fixture(scope="session")
def embedded_model():
    """SmolLM2-135M-Instruct (float32, CPU), loaded once per session from the embedded GGUF.

    Returns ``(model, tokenizer)``. The model is in eval mode; tests must not modify its weights.
    """
    torch = pytest.importorskip("torch")
    from ltv_control.adapters import load_embedded_model

    model, tokenizer = load_embedded_model(dtype=torch.float32, device="cpu")
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def embedded_plant(embedded_model):
    """An :class:`ltv_control.adapters.LLMPlant` over the embedded model (shared, read-only)."""
    from ltv_control.adapters import LLMPlant

    model, tokenizer = embedded_model
    return LLMPlant(model, tokenizer)
