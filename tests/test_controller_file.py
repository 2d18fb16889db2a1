"""Controller files: safetensors + JSON metadata, atomic writes, validation, no pickle."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ltv_control import ControllerFileError, DimensionError  # noqa: E402
from ltv_control.adapters import ActAddSteerer, ALQRSteerer, PIDSteerer, Steerer  # noqa: E402
from ltv_control.adapters.controller_file import (  # noqa: E402
    FORMAT,
    load_controller_file,
    save_controller_file,
)

T, N = 4, 8


def _alqr(rng, **kw) -> ALQRSteerer:
    v = rng.standard_normal((T, N))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    e = rng.uniform(0.5, 2.0, T)
    return ALQRSteerer(
        {"w": rng.standard_normal((T, N)), "v": v, "e_norm": e, "beta_star": 1.5 * e},
        hidden_size=N,
        num_layers=T,
        hyperparameters={"q": 0.1, "r": 1.0, "qf": 0.2, "lam": 1.5},
        **kw,
    )


def _tiny_llama(hidden=N, layers=T):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=32, hidden_size=hidden, intermediate_size=16, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def test_round_trip_is_bit_exact(rng, tmp_path):
    st = _alqr(rng, layers=[0, 2, 3], positions="all", layer_path="model.layers", model_id="tiny/llama")
    path = st.save(tmp_path / "c.safetensors")
    back = ALQRSteerer.load(path)
    for name in ALQRSteerer.tensor_names:
        a, b = getattr(st, name), getattr(back, name)
        assert b.dtype == torch.float32 and torch.equal(a, b), name
    assert back.hyperparameters == st.hyperparameters
    assert (back.layers, back.positions, back.layer_path, back.model_id) == (
        [0, 2, 3], "all", "model.layers", "tiny/llama",
    )
    # the generic loader dispatches on the stored kind
    assert type(Steerer.load(path)) is ALQRSteerer


@pytest.mark.parametrize("cls", [ActAddSteerer, PIDSteerer])
def test_baselines_round_trip(cls, rng, tmp_path):
    tensors = {name: rng.standard_normal((T, N)) if name in ("e", "v") else rng.uniform(1, 2, T)
               for name in cls.tensor_names}
    hyper = {"coeff": 2.0} if cls is ActAddSteerer else {"kp": 0.3, "ki": 0.2, "kd": 0.1, "lam": 1.0, "reset_every": 2}
    st = cls(tensors, hidden_size=N, num_layers=T, hyperparameters=hyper, layers=[1, 2])
    back = Steerer.load(st.save(tmp_path / "b.safetensors"))
    assert type(back) is cls and back.hyperparameters == hyper and back.layers == [1, 2]
    for name in cls.tensor_names:
        assert torch.equal(getattr(st, name), getattr(back, name))


def test_header_metadata_layout(rng, tmp_path):
    path = _alqr(rng).save(tmp_path / "c.safetensors")
    data = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen])
    meta = header["__metadata__"]
    assert meta["format"] == FORMAT and meta["kind"] == "alqr"
    assert meta["state_dim"] == str(N) and meta["horizon"] == str(T)
    assert json.loads(meta["hyperparameters"]) == {"q": 0.1, "r": 1.0, "qf": 0.2, "lam": 1.5}
    import ltv_control

    assert meta["version"] == ltv_control.__version__
    assert all(isinstance(v, str) for v in meta.values())
    assert {header[k]["dtype"] for k in header if k != "__metadata__"} == {"F32"}
    assert set(header) - {"__metadata__"} == {"w", "v", "e_norm", "beta_star"}  # no n×n array


def test_atomic_write_leaves_no_partial_file(rng, tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    first = _alqr(rng)
    first.save(path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        _alqr(rng).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no temp file left
    second = _alqr(rng)
    second.save(path)  # overwrite works
    assert torch.equal(ALQRSteerer.load(path).w, second.w)


def test_truncated_files_are_refused(rng, tmp_path):
    data = _alqr(rng).save(tmp_path / "c.safetensors").read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    for cut in (0, 5, 8, 8 + hlen // 2, 8 + hlen + 3, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ControllerFileError, match="truncated|not a safetensors"):
            ALQRSteerer.load(bad)


def test_corrupt_files_are_refused(rng, tmp_path):
    data = bytearray(_alqr(rng).save(tmp_path / "c.safetensors").read_bytes())
    bad = tmp_path / "bad.safetensors"
    header_garbled = data.copy()
    header_garbled[9:20] = b"\xff" * 11
    trailing = data + b"junk"
    huge_len = struct.pack("<Q", 2**62) + bytes(data[8:])
    for blob, msg in ((header_garbled, "corrupt"), (trailing, "trailing"), (huge_len, "not a safetensors")):
        bad.write_bytes(bytes(blob))
        with pytest.raises(ControllerFileError, match=msg):
            ALQRSteerer.load(bad)


def test_foreign_files_are_refused(rng, tmp_path):
    from safetensors.numpy import save_file

    foreign = tmp_path / "model.safetensors"
    save_file({"w": np.zeros((T, N), np.float32)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ControllerFileError, match="not a ltv-control controller"):
        ALQRSteerer.load(foreign)
    no_meta = tmp_path / "nometa.safetensors"
    save_file({"w": np.zeros((T, N), np.float32)}, str(no_meta))
    with pytest.raises(ControllerFileError, match="not a ltv-control controller"):
        Steerer.load(no_meta)
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"w": torch.zeros(T, N)}, pickled)  # a pickle/zip archive, not safetensors
    with pytest.raises(ControllerFileError):
        ALQRSteerer.load(pickled)
    with pytest.raises(ControllerFileError, match="no such"):
        ALQRSteerer.load(tmp_path / "missing.safetensors")


def test_wrong_kind_dtype_or_values_refused(rng, tmp_path):
    path = ActAddSteerer(
        {"e": rng.standard_normal((T, N))}, hidden_size=N, num_layers=T,
        hyperparameters={"coeff": 1.0}, layers=[0],
    ).save(tmp_path / "a.safetensors")
    with pytest.raises(ControllerFileError, match="'actadd' steerer, expected a 'alqr'"):
        ALQRSteerer.load(path)

    from safetensors.numpy import save_file

    meta = {"format": FORMAT, "kind": "alqr", "version": "0", "hidden_size": str(N), "num_layers": str(T)}
    f64 = tmp_path / "f64.safetensors"
    save_file({"w": np.zeros((T, N))}, str(f64), metadata=meta)
    with pytest.raises(ControllerFileError, match="F64"):
        ALQRSteerer.load(f64)
    nan = tmp_path / "nan.safetensors"
    save_file({"w": np.full((T, N), np.nan, np.float32)}, str(nan), metadata=meta)
    with pytest.raises(ControllerFileError, match="NaN"):
        ALQRSteerer.load(nan)
    # right framing and kind, but tensors missing / wrong shape
    incomplete = tmp_path / "incomplete.safetensors"
    save_file({"w": np.zeros((T, N), np.float32)}, str(incomplete), metadata=meta)
    with pytest.raises(ControllerFileError, match="inconsistent"):
        ALQRSteerer.load(incomplete)
    raw_tensors, raw_meta = load_controller_file(incomplete)
    assert raw_meta["kind"] == "alqr" and raw_tensors["w"].shape == (T, N)


def test_load_never_unpickles(rng, tmp_path, monkeypatch):
    path = _alqr(rng).save(tmp_path / "c.safetensors")

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert ALQRSteerer.load(path).num_layers == T


def test_load_with_mismatched_model_is_refused(rng, tmp_path):
    path = _alqr(rng).save(tmp_path / "c.safetensors")
    assert ALQRSteerer.load(path, model=_tiny_llama()).num_layers == T
    with pytest.raises(DimensionError, match="hidden size 8.*hidden size 12"):
        ALQRSteerer.load(path, model=_tiny_llama(hidden=12))
    with pytest.raises(DimensionError, match="4 decoder layers.*has 3"):
        ALQRSteerer.load(path, model=_tiny_llama(layers=3))


def test_save_validates_arguments(tmp_path):
    from ltv_control import ArgumentError

    with pytest.raises(ArgumentError, match="kind"):
        save_controller_file(tmp_path / "x.safetensors", {"w": np.zeros(3)}, {"hidden_size": 1, "num_layers": 3})
    with pytest.raises(ArgumentError, match="tensors"):
        save_controller_file(tmp_path / "x.safetensors", {}, {"kind": "alqr"})


def _synthetic_setpoint(rng, lam=1.5):
    """A Setpoint and a plant linearization built from arrays (no model): the fit pipeline's inputs."""
    from ltv_control import LTVSystem
    from ltv_control.adapters import Setpoint
    from ltv_control.setpoint import linear_feature_setpoint

    zd, zu = rng.standard_normal((5, T + 1, N)) + 1.0, rng.standard_normal((6, T + 1, N))
    lfs, full = linear_feature_setpoint(zd[:, :T], zu[:, :T], lam=lam), linear_feature_setpoint(zd, zu, lam=lam)
    z = np.concatenate([zd, zu])
    setpoint = Setpoint(v=lfs.v, e=lfs.e, e_norm=lfs.e_norm, beta_star=lfs.beta_star, lam=lam,
                        model_id="tiny/llama", layer_path=None, v_all=full.v, e_norm_all=full.e_norm,
                        z_mean=z.mean(0), act_norm=np.median(np.linalg.norm(z, axis=2), axis=0))
    system = LTVSystem(np.eye(N) + 0.1 * rng.standard_normal((T, N, N)))
    return setpoint, system


def _every_kind(rng):
    from ltv_control.adapters import ConstrainedSteerer

    setpoint, system = _synthetic_setpoint(rng)
    return {
        "alqr": ALQRSteerer.from_system(system, setpoint, q=0.2, layers=[1, 2]),
        "actadd": ActAddSteerer.from_setpoint(setpoint, layers=[1], coeff=2.0),
        "pid": PIDSteerer.from_setpoint(setpoint, kp=0.3, reset_every=2),
        "constrained": ConstrainedSteerer.from_system(system, setpoint, rank=3, budget=0.5),
    }


def test_every_kind_loads_in_a_fresh_process(rng, tmp_path):
    """Steerer.load(path) in a new interpreter finds every kind (the registry is not import-order bound)."""
    import subprocess
    import sys

    paths = {kind: st.save(tmp_path / f"{kind}.safetensors") for kind, st in _every_kind(rng).items()}
    script = ("import sys\nfrom ltv_control.adapters import Steerer\n"
              "for p in sys.argv[1:]:\n    s = Steerer.load(p)\n    print(s.kind, type(s).__name__, s.horizon)\n")
    out = subprocess.run([sys.executable, "-c", script, *map(str, paths.values())], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    names = {"alqr": "ALQRSteerer", "actadd": "ActAddSteerer", "pid": "PIDSteerer",
             "constrained": "ConstrainedSteerer"}
    assert out.stdout.split("\n")[:-1] == [f"{k} {names[k]} {T}" for k in paths]


def test_pipeline_steerers_hold_the_setpoint_and_the_lqr_directions(rng):
    """from_system / from_setpoint keep the setpoint's tensors; A-LQR's w_k = K_k v_k (dense oracle)."""
    from ltv_control import finite_horizon_lqr

    setpoint, system = _synthetic_setpoint(rng)
    st = ALQRSteerer.from_system(system, setpoint, q=0.2, r=1.0, qf=0.1)
    K, _ = finite_horizon_lqr(system, 0.2, 1.0, Qf=0.1)
    expected = np.einsum("kij,kj->ki", np.asarray(K), setpoint.v)
    np.testing.assert_allclose(st.w.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.beta_star.numpy(), 1.5 * setpoint.e_norm, rtol=1e-6)
    assert st.lam == 1.5 and st.model_id == "tiny/llama" and (st.horizon, st.state_dim) == (T, N)
    act = ActAddSteerer.from_setpoint(setpoint, layers=[0, 3])
    np.testing.assert_allclose(act.e.numpy(), setpoint.e, rtol=1e-6)
    with pytest.raises(DimensionError, match="system"):
        from ltv_control import LTVSystem

        ALQRSteerer.from_system(LTVSystem(np.asarray(system.A)[:-1]), setpoint)


def test_old_format_file_with_hidden_size_and_num_layers_still_loads(rng, tmp_path):
    """A controller file written before the rename (keys hidden_size/num_layers) loads unchanged."""
    from safetensors.numpy import save_file

    st = _alqr(rng, layers=[1, 3])
    meta = {"format": FORMAT, "format_version": "1", "kind": "alqr", "version": "0.1.0", "model_id": "old",
            "hidden_size": str(N), "num_layers": str(T), "layers": "null", "controlled_layers": "[1, 3]",
            "positions": "last", "hyperparameters": json.dumps(st.hyperparameters)}
    old = tmp_path / "old.safetensors"
    save_file({name: getattr(st, name).numpy() for name in st.tensor_names}, str(old), metadata=meta)
    back = Steerer.load(old, model=_tiny_llama())
    assert type(back) is ALQRSteerer and (back.horizon, back.state_dim) == (T, N) and back.layers == [1, 3]
    for name in st.tensor_names:
        assert torch.equal(getattr(st, name), getattr(back, name))
