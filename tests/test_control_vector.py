"""llama.cpp control vectors: file layout, export (exact and mean closed-loop), import, refusals.

Everything runs on tiny random transformers built in-process; the llama.cpp round trip itself
is tests/test_llamacpp.py.  Oracles: a GGUF written by hand with ``struct`` (independent of the
``gguf`` package), the A-LQR law recomputed from the steered hidden states, and the logits of the
original ActAdd steerer.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from ltv_control import ArgumentError, ControllerFileError, DimensionError, PropertyError  # noqa: E402
from ltv_control.adapters import ActAddSteerer, ALQRSteerer  # noqa: E402
from ltv_control.adapters.control_vector import (  # noqa: E402
    export_gguf,
    load_control_vector,
    mean_closed_loop_input,
    read_control_vector,
    write_control_vector,
)
from ltv_control.atomic import current_umask  # noqa: E402

T, N, VOCAB, PAD = 4, 16, 40, 0


class CharTokenizer:
    """Maps characters to ids 3..VOCAB-1 (BOS 1 first); enough for batching and generate."""

    pad_token_id = PAD
    eos_token_id = 2

    def __call__(self, text):
        return {"input_ids": [1] + [3 + (ord(c) % (VOCAB - 3)) for c in text]}


def _llama(layers=T, hidden=N, seed=1234):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=32, num_hidden_layers=layers,
                                   num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB,
                                   pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = PAD
    return model


@pytest.fixture(scope="module")
def llama():
    return _llama()


def _alqr(seed=0):
    g = np.random.default_rng(seed)
    v = g.standard_normal((T, N))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    e_norm = g.uniform(0.5, 1.5, T)
    return ALQRSteerer({"w": 0.3 * g.standard_normal((T, N)), "v": v, "e_norm": e_norm,
                        "beta_star": 2.0 * e_norm}, hidden_size=N, num_layers=T,
                       hyperparameters={"q": 0.1, "r": 1.0, "qf": 0.1, "lam": 2.0})


def _actadd(layers, coeff=1.5, seed=0):
    e = np.random.default_rng(seed).standard_normal((T, N))
    return ActAddSteerer({"e": e}, hidden_size=N, num_layers=T, hyperparameters={"coeff": coeff},
                         layers=layers)


PROMPTS = ["good day", "a terrible film", "the weather is", "x"]


# ------------------------------------------------------------------------------- file layout


def _gguf_string(text):
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _hand_written_gguf(path, rows, *, arch="controlvector", tensor_type=0, names=None):
    """A GGUF v3 file assembled byte by byte (the format llama.cpp reads), independent of gguf-py."""
    names = names or [f"direction.{i}" for i in range(1, len(rows) + 1)]
    kv = (_gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string(arch)
          + _gguf_string("controlvector.layer_count") + struct.pack("<I", 5) + struct.pack("<i", len(rows)))
    infos, offset = b"", 0
    for name, row in zip(names, rows):
        infos += _gguf_string(name) + struct.pack("<IQIQ", 1, len(row), tensor_type, offset)
        offset += (4 * len(row) + 31) // 32 * 32
    header = struct.pack("<4sIQQ", b"GGUF", 3, len(rows), 2) + kv + infos
    body = header + b"\0" * ((-len(header)) % 32)
    for row in rows:
        blob = np.asarray(row, dtype="<f4").tobytes()
        body += blob + b"\0" * ((-len(blob)) % 32)
    path.write_bytes(body)
    return path


def test_hand_written_llamacpp_file_is_read(tmp_path):
    rows = np.random.default_rng(0).standard_normal((3, N)).astype(np.float32)
    cv = read_control_vector(_hand_written_gguf(tmp_path / "cv.gguf", rows))
    assert sorted(cv.directions) == [1, 2, 3]
    for i in range(3):
        np.testing.assert_array_equal(cv.directions[i + 1], rows[i])
    assert cv.hidden_size == N and cv.layer_count == 3 and cv.num_layers is None


def test_written_file_matches_llamacpp_generator_layout(tmp_path):
    vectors = np.random.default_rng(1).standard_normal((T, N)).astype(np.float32)
    vectors[0] = 0
    path = write_control_vector(tmp_path / "cv.gguf", vectors, model_hint="llama")
    reader = gguf.GGUFReader(str(path))
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"
    layer_count = reader.fields["controlvector.layer_count"]
    assert fields["controlvector.layer_count"] == T - 1
    assert layer_count.types == [gguf.GGUFValueType.INT32]  # as cvector-generator writes it
    names = [t.name for t in reader.tensors]
    assert names == [f"direction.{k}" for k in range(1, T)]
    for t in reader.tensors:
        k = int(t.name.split(".")[1])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [N]
        np.testing.assert_array_equal(np.asarray(t.data), vectors[k])
    assert (path.stat().st_mode & 0o777) == (0o666 & ~current_umask())
    assert os.listdir(tmp_path) == ["cv.gguf"]  # no temporary file left behind


def test_writer_refuses_block0_and_bad_shapes(tmp_path):
    with pytest.raises(PropertyError, match="block 0"):
        write_control_vector(tmp_path / "a.gguf", np.ones((T, N)), model_hint="llama")
    with pytest.raises(DimensionError, match=r"\(T, n\)"):
        write_control_vector(tmp_path / "b.gguf", np.zeros(N), model_hint="llama")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("make", "match"), [
    (lambda p: p.write_bytes(b"PK\x03\x04 not a gguf"), "not a GGUF"),
    (lambda p: p.write_bytes(_hand_written_gguf(p, np.ones((2, N))).read_bytes()[:90]), "truncated or corrupt"),
    (lambda p: _hand_written_gguf(p, np.ones((2, N)), arch="llama"), "general.architecture is 'llama'"),
    (lambda p: _hand_written_gguf(p, np.ones((2, N)), names=["direction.0", "direction.1"]), "direction.N with N >= 1"),
    (lambda p: _hand_written_gguf(p, np.ones((2, N)), names=["direction.1", "token_embd.weight"]), "not a direction"),
    (lambda p: _hand_written_gguf(p, np.ones((1, N)), tensor_type=1), "float32 1-D"),
])
def test_corrupt_or_foreign_files_refused(tmp_path, make, match):
    path = tmp_path / "bad.gguf"
    make(path)
    with pytest.raises(ControllerFileError, match=match):
        load_control_vector(path)


def test_mismatch_refused_naming_both(tmp_path, llama):
    path = write_control_vector(tmp_path / "cv.gguf", np.zeros((T, 12)), model_hint="llama")
    with pytest.raises(DimensionError, match=r"hidden size 12.*hidden size 16"):
        load_control_vector(path, llama)
    path = write_control_vector(tmp_path / "cv5.gguf", np.zeros((T + 1, N)), model_hint="llama")
    with pytest.raises(DimensionError, match=r"direction\.4 targets block 4.*4 decoder layers"):
        load_control_vector(path, llama)
    small = np.zeros((T - 1, N), dtype=np.float32)  # written for 3 layers, the model has 4
    path = write_control_vector(tmp_path / "cv3.gguf", small, model_hint="llama")
    with pytest.raises(DimensionError, match=r"written for 3 decoder layers.*has 4"):
        load_control_vector(path, llama)


# ------------------------------------------------------------------------------- export / import


def test_actadd_export_is_exact_and_round_trips(tmp_path, llama):
    st = _actadd(layers=[1, 3], coeff=1.5)
    report = export_gguf(st, tmp_path / "actadd.gguf", model=llama)
    assert report.exact and report.layers == [1, 3] and report.dropped_norm == 0
    np.testing.assert_allclose(report.vectors[1], 1.5 * st.e[1].numpy(), rtol=1e-6)
    assert np.all(report.vectors[[0, 2]] == 0) and report.captured_total == 1.0
    assert os.fspath(report) == str(tmp_path / "actadd.gguf")

    ids = torch.tensor([[1, 5, 9, 12, 7], [1, 4, 4, 30, 2]])
    imported = load_control_vector(report, llama, scale=2.0)
    assert imported.layers == [1, 3] and imported.positions == "all"
    with torch.no_grad():
        with st.attach(llama, coeff=3.0, positions="all"):
            reference = llama(ids).logits
        with imported.attach(llama):
            logits = llama(ids).logits
        plain = llama(ids).logits
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    assert (logits - plain).abs().max() > 1e-2  # the vector does something


def test_block0_input_dropped_and_reported(tmp_path, llama):
    st = _actadd(layers=[0, 2], coeff=1.0)
    report = export_gguf(st, tmp_path / "a.gguf")
    assert report.layers == [2]
    assert report.dropped_norm == pytest.approx(float(np.linalg.norm(st.e[0].numpy())), rel=1e-6)
    assert "block 0" in report.summary()
    with pytest.raises(PropertyError, match="block 0"):
        export_gguf(st, tmp_path / "b.gguf", layer0="error")
    assert not (tmp_path / "b.gguf").exists()


def test_zero_vector_leaves_logits_unchanged(tmp_path, llama):
    path = write_control_vector(tmp_path / "zero.gguf", np.zeros((T, N)), model_hint="llama")
    st = load_control_vector(path, llama)
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        plain = llama(ids).logits
        with st.attach(llama):
            steered = llama(ids).logits
    assert torch.equal(plain, steered)


def test_repeng_style_file_imports_with_model(tmp_path, llama):
    """repeng writes only some directions and layer_count = their number (uint32)."""
    g = np.random.default_rng(3)
    d2, d3 = g.standard_normal(N).astype(np.float32), g.standard_normal(N).astype(np.float32)
    writer = gguf.GGUFWriter(str(tmp_path / "r.gguf"), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 2)
    writer.add_tensor("direction.2", d2)
    writer.add_tensor("direction.3", d3)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    st = load_control_vector(tmp_path / "r.gguf", llama, scale=0.5)
    assert st.num_layers == T and st.layers == [2, 3] and st.coeff == 0.5
    np.testing.assert_array_equal(st.e[3].numpy(), d3)
    assert np.all(st.e[:2].numpy() == 0)


def _alqr_oracle(st, model, prompts):
    """ū_k recomputed from the steered block inputs: u = (β* − vᵀz) w at every real position."""
    tok = CharTokenizer()
    rows = [tok(p)["input_ids"] for p in prompts]
    L = max(map(len, rows))
    ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad(), st.attach(model, positions="all"):
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    out = np.zeros((T, N))
    for k in range(T):
        z = hs[k].double()
        u = (st.beta_star[k].double() - z @ st.v[k].double()).unsqueeze(-1) * st.w[k].double()
        out[k] = (u * mask.unsqueeze(-1)).sum((0, 1)).numpy() / int(mask.sum())
    return out, int(mask.sum())


def test_mean_closed_loop_input_matches_the_law(llama):
    st = _alqr()
    stats = mean_closed_loop_input(st, llama, CharTokenizer(), PROMPTS, max_new_tokens=0, batch_size=3)
    oracle, count = _alqr_oracle(st, llama, PROMPTS)
    np.testing.assert_allclose(stats.mean, oracle, rtol=1e-4, atol=1e-5)
    assert list(stats.count) == [count] * T
    norms = np.sum(stats.mean ** 2, axis=1)
    assert np.all(stats.energy >= norms * (1 - 1e-9))  # Jensen: mean‖u‖² >= ‖mean u‖²


def test_generation_counts_every_token(llama):
    st = _alqr()
    tok = CharTokenizer()
    stats = mean_closed_loop_input(st, llama, tok, PROMPTS, max_new_tokens=3, batch_size=8)
    prompt_tokens = sum(len(tok(p)["input_ids"]) for p in PROMPTS)
    # prompt positions + every generated token but the last (its output never feeds a pass)
    assert list(stats.count) == [prompt_tokens + len(PROMPTS) * 2] * T


def test_feedback_export_is_the_mean_input(tmp_path, llama):
    st = _alqr()
    with pytest.raises(ArgumentError, match="tokenizer, prompts"):
        export_gguf(st, tmp_path / "x.gguf", model=llama)
    report = export_gguf(st, tmp_path / "alqr.gguf", model=llama, tokenizer=CharTokenizer(),
                         prompts=PROMPTS, max_new_tokens=0)
    oracle, count = _alqr_oracle(st, llama, PROMPTS)
    assert not report.exact and report.positions == count and report.prompts == len(PROMPTS)
    np.testing.assert_allclose(report.vectors[1:], oracle[1:], rtol=1e-4, atol=1e-5)
    assert report.dropped_norm == pytest.approx(np.linalg.norm(oracle[0]), rel=1e-4)
    assert 0 < report.captured_total <= 1 and "approximation" in report.summary()
    cv = read_control_vector(report)
    assert cv.metadata["ltv_control.kind"] == "alqr" and cv.metadata["ltv_control.exact"] is False
    assert cv.num_layers == T and cv.model_hint == "llama"


# ------------------------------------------------------------------------------- app pieces


def test_compare_export_of_an_exact_export_keeps_everything(tmp_path):
    pytest.importorskip("vaderSentiment")
    from _tiny_lm import tiny_llama

    from ltv_control.app.control_vectors import compare_export, format_comparison
    from ltv_control.app.generation import Decoding

    model, tok = tiny_llama(layers=3, hidden=32)
    e = np.random.default_rng(0).standard_normal((3, 32))
    st = ActAddSteerer({"e": e}, hidden_size=32, num_layers=3, hyperparameters={"coeff": 3.0},
                       layers=[1, 2], positions="all")
    exported = load_control_vector(export_gguf(st, tmp_path / "a.gguf", model=model), model)
    prompts = ["the film was", "my day is", "the food"]
    result = compare_export(model, tok, st, exported, prompts,
                            decoding=Decoding(max_new_tokens=4, batch_size=2))
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["unsteered", "closed loop", "exported constant"]
    assert rows["closed loop"] == {**rows["exported constant"], "method": "closed loop"}
    assert "| exported constant |" in format_comparison(result)


def test_export_command_writes_the_file_and_the_table(tmp_path):
    pytest.importorskip("vaderSentiment")
    import argparse

    from _tiny_lm import tiny_llama

    from ltv_control.app.control_vectors import add_export_arguments, export_command

    model, tok = tiny_llama(layers=3, hidden=32)
    g = np.random.default_rng(1)
    v = g.standard_normal((3, 32))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    st = ALQRSteerer({"w": 0.5 * g.standard_normal((3, 32)), "v": v, "e_norm": np.ones(3),
                      "beta_star": 2 * np.ones(3)}, hidden_size=32, num_layers=3,
                     hyperparameters={"q": 0.1, "r": 1.0, "qf": 0.1, "lam": 2.0})
    controller = st.save(tmp_path / "alqr.safetensors")
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args([str(controller), "--out", str(tmp_path / "alqr.gguf"), "--n-prompts",
                              "2", "--calibration-tokens", "2", "--n-eval", "2",
                              "--max-new-tokens", "3", "--quiet"])
    payload, text = export_command(args, model, tok)
    assert payload["kind"] == "alqr" and not payload["exact"] and payload["layers"] == [1, 2]
    assert (tmp_path / "alqr.gguf").is_file() and "approximation" in text
    assert [r["method"] for r in payload["comparison"]["rows"]] == \
        ["unsteered", "closed loop", "exported constant"]
