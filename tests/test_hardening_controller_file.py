"""Hardening of controller files (issue 13): every malformed file is a ControllerFileError.

Cases of the adversarial probe, each a regression test: hyper-parameters missing or of the
wrong type or range (``lam='abc'``, ``lam=NaN``, ``kp=NaN``, ``coeff=1e30``, ``reset_every=0``,
a JSON list instead of an object), deeply nested JSON (no RecursionError), odd integer strings
(``'²'``, 5,000 digits), flipped bits in tensor data (SHA-256), FIFOs, links to ``/dev/zero``,
folders, file permissions (``0666 & ~umask``), and a fresh process loading every kind.
Hypothesis drives header bytes and hyper-parameter values.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ltv_control import ControllerFileError  # noqa: E402
from ltv_control.adapters import ActAddSteerer, ALQRSteerer, ConstrainedSteerer, PIDSteerer, Steerer  # noqa: E402
from ltv_control.adapters.controller_schema import (  # noqa: E402
    DIGEST_KEY,
    HYPERPARAMETER_SCHEMAS,
    MAX_JSON_DEPTH,
    check_field,
    parse_json,
    read_regular_file,
    tensor_digest,
)

T, N, RANK = 4, 8, 2
FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _unit(rng, rows):
    v = rng.standard_normal((rows, N))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_steerer(kind: str, seed: int = 0) -> Steerer:
    """A steerer of ``kind`` built directly from random tensors (no model needed)."""
    rng = np.random.default_rng(seed)
    e = rng.uniform(0.5, 2.0, T)
    size = {"state_dim": N, "horizon": T}
    if kind == "alqr":
        return ALQRSteerer({"w": rng.standard_normal((T, N)), "v": _unit(rng, T), "e_norm": e,
                            "beta_star": 1.5 * e}, **size,
                           hyperparameters={"q": 0.1, "r": 1.0, "qf": 0.2, "lam": 1.5})
    if kind == "actadd":
        return ActAddSteerer({"e": rng.standard_normal((T, N))}, **size,
                             hyperparameters={"coeff": 4.0}, layers=[1])
    if kind == "pid":
        return PIDSteerer({"v": _unit(rng, T), "e_norm": e, "beta_star": e}, **size,
                          hyperparameters={"kp": 0.5, "ki": 0.5, "kd": 0.0, "lam": 1.0,
                                           "reset_every": 10})
    bases = np.linalg.qr(rng.standard_normal((T + 1, N, RANK)))[0]
    tensors = {"w": rng.standard_normal((T, N)), "bases": bases,
               "A_r": rng.standard_normal((T, RANK, RANK)), "z_mean": rng.standard_normal((T + 1, N)),
               "v_all": _unit(rng, T + 1), "e_norm_all": rng.uniform(0.5, 2.0, T + 1),
               "act_norm": rng.uniform(1.0, 3.0, T + 1)}
    hyper = {"rank": RANK, "budget": 0.1, "q": 0.1, "r": 1.0, "qf": 0.1, "lam": 1.0,
             "first_layer": 1, "terminal_feature": False, "feedback": True, "method": "admm",
             "on_infeasible": "relax"}
    return ConstrainedSteerer(tensors, **size, hyperparameters=hyper)


KINDS = ("alqr", "actadd", "pid", "constrained")


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: dict | str, body: bytes) -> bytes:
    raw = header if isinstance(header, str) else json.dumps(header)
    raw = raw.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + body


def with_metadata(path, **changes) -> None:
    """Rewrite ``path`` with metadata keys changed (``None`` deletes a key); tensors untouched."""
    header, body = split(path.read_bytes())
    meta = header["__metadata__"]
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_bytes(join(header, body))


def with_hyper(path, **changes) -> None:
    header, _ = split(path.read_bytes())
    hyper = json.loads(header["__metadata__"]["hyperparameters"])
    hyper.update(changes)
    with_metadata(path, hyperparameters=json.dumps(hyper))


@pytest.fixture(params=KINDS)
def saved(request, tmp_path):
    kind = request.param
    return kind, make_steerer(kind).save(tmp_path / f"{kind}.safetensors")


def refused(path, *fragments) -> str:
    with pytest.raises(ControllerFileError) as info:
        Steerer.load(path)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------- round trips and the digest

def test_every_kind_round_trips_with_a_digest_and_no_warning(saved):
    kind, path = saved
    header, _ = split(path.read_bytes())
    assert len(header["__metadata__"][DIGEST_KEY]) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = Steerer.load(path)
    original = make_steerer(kind)
    assert type(back) is type(original) and back.hyperparameters == original.hyperparameters
    tensors = {name: getattr(back, name).numpy() for name in back.tensor_names}
    assert tensor_digest(tensors) == tensor_digest(
        {name: getattr(original, name).numpy() for name in original.tensor_names})


def test_file_written_before_the_digest_loads_with_a_warning(tmp_path):
    path = make_steerer("alqr").save(tmp_path / "old.safetensors")
    with_metadata(path, **{DIGEST_KEY: None})
    with pytest.warns(UserWarning, match=DIGEST_KEY):
        back = Steerer.load(path)
    assert back.kind == "alqr"


def test_flipped_bit_in_tensor_data_is_detected(tmp_path):
    path = make_steerer("alqr").save(tmp_path / "c.safetensors")
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 + n + 3] ^= 0x40  # the exponent byte of w[0, 0]: a finite but huge value
    path.write_bytes(bytes(data))
    refused(path, "SHA-256")


@FAST
@pytest.mark.filterwarnings("ignore:.*tensor_sha256")  # a flip in the key's own name
@given(offset=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused_or_harmless(tmp_path, offset, bit):
    path = tmp_path / "flip.safetensors"
    good = make_steerer("pid").save(path).read_bytes()
    data = bytearray(good)
    data[offset % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))
    try:
        back = Steerer.load(path)
    except ControllerFileError as exc:
        assert str(path) in str(exc)
        return
    # a flip that still loads touched the header's text, never a tensor (the digest)
    original = make_steerer("pid")
    for name in original.tensor_names:
        assert torch.equal(getattr(back, name), getattr(original, name))


def test_malformed_digest_is_refused(tmp_path):
    path = make_steerer("actadd").save(tmp_path / "c.safetensors")
    with_metadata(path, **{DIGEST_KEY: "xyz"})
    refused(path, DIGEST_KEY)


# ---------------------------------------------------------------- hyper-parameters

@pytest.mark.parametrize("kind, name, value, fragment", [
    ("alqr", "lam", "abc", "lam"),
    ("alqr", "lam", float("nan"), "finite"),
    ("alqr", "r", 0.0, "r"),
    ("alqr", "q", -1.0, "q"),
    ("pid", "kp", float("nan"), "kp"),
    ("pid", "reset_every", 0, "reset_every"),
    ("pid", "reset_every", 2.5, "reset_every"),
    ("pid", "reset_every", True, "reset_every"),
    ("actadd", "coeff", 1e30, "coeff"),
    ("actadd", "coeff", float("inf"), "coeff"),
    ("actadd", "coeff", None, "coeff"),
    ("constrained", "rank", 0, "rank"),
    ("constrained", "budget", -1.0, "budget"),
    ("constrained", "method", "magic", "method"),
    ("constrained", "feedback", 1, "feedback"),
    ("constrained", "first_layer", T, "first_layer"),
])
def test_bad_hyperparameter_is_refused_at_load(tmp_path, kind, name, value, fragment):
    path = make_steerer(kind).save(tmp_path / "c.safetensors")
    with_hyper(path, **{name: value})
    refused(path, fragment)


@pytest.mark.parametrize("kind", KINDS)
def test_missing_and_unknown_hyperparameters_are_refused(tmp_path, kind):
    path = make_steerer(kind).save(tmp_path / "c.safetensors")
    header, _ = split(path.read_bytes())
    hyper = json.loads(header["__metadata__"]["hyperparameters"])
    first = sorted(hyper)[0]
    del hyper[first]
    with_metadata(path, hyperparameters=json.dumps(hyper))
    refused(path, first, "missing")
    hyper[first] = make_steerer(kind).hyperparameters[first]
    hyper["surprise"] = 1
    with_metadata(path, hyperparameters=json.dumps(hyper))
    refused(path, "surprise")


@pytest.mark.parametrize("text", ["[1, 2]", '"lam"', "3", "null"])
def test_hyperparameters_must_be_a_json_object(tmp_path, text):
    path = make_steerer("alqr").save(tmp_path / "c.safetensors")
    with_metadata(path, hyperparameters=text)
    refused(path, "hyperparameters")


json_values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                        # integers of at most 19 digits: longer ones are refused earlier, by
                        # the JSON parser, with their own message (tested separately)
                        st.lists(st.integers(-10**18, 10**18), max_size=3))


@FAST
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_hyperparameter_values_load_iff_the_schema_accepts_them(tmp_path, kind, data):
    field = data.draw(st.sampled_from(HYPERPARAMETER_SCHEMAS[kind]))
    value = data.draw(json_values)
    path = make_steerer(kind).save(tmp_path / "h.safetensors")
    with_hyper(path, **{field.name: value})
    try:
        expected = check_field(field, value, state_dim=N, horizon=T)
    except ValueError:
        refused(path, field.name)
        return
    back = Steerer.load(path)
    loaded = getattr(back, field.name)
    assert loaded == expected or (isinstance(loaded, float) and math.isinf(loaded))


# ---------------------------------------------------------------- integers, JSON, header

@pytest.mark.parametrize("value", ["²", "1" * 5000, "-4", "0", "4.0", " 4", "٤", ""])
def test_odd_integer_strings_are_refused(tmp_path, value):
    path = make_steerer("alqr").save(tmp_path / "c.safetensors")
    with_metadata(path, horizon=value)
    refused(path, "horizon")


def test_deeply_nested_json_is_refused_without_recursion_error(tmp_path):
    path = make_steerer("alqr").save(tmp_path / "c.safetensors")
    with_metadata(path, hyperparameters="[" * 100_000 + "]" * 100_000)
    refused(path, "nested")
    header, body = split(path.read_bytes())
    deep = json.dumps(header)[:-1] + ', "x": ' + "[" * 200_000 + "]" * 200_000 + "}"
    path.write_bytes(join(deep, body))
    refused(path)


def test_huge_integer_in_the_header_is_refused(tmp_path):
    path = make_steerer("alqr").save(tmp_path / "c.safetensors")
    header, body = split(path.read_bytes())
    text = json.dumps(header)[:-1] + ', "pad": ' + "7" * 5000 + "}"
    path.write_bytes(join(text, body))
    refused(path)


def test_oversized_header_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", 50_000_000) + b"{" + b" " * 100)
    refused(path)


@pytest.mark.parametrize("key, value", [
    ("positions", "sideways"),
    ("controlled_layers", "[0, 99]"),
    ("controlled_layers", '"all"'),
    ("controlled_layers", "[true]"),
    ("layers", "[1]"),
    ("state_dim", "9"),
])
def test_inconsistent_metadata_is_refused(tmp_path, key, value):
    path = make_steerer("alqr").save(tmp_path / "c.safetensors")
    with_metadata(path, **{key: value})
    refused(path)


def test_json_helper_bounds():
    assert parse_json("[[1]]", "f", "x") == [[1]]
    with pytest.raises(ControllerFileError, match="nested"):
        parse_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "f", "x")
    # brackets inside strings do not count
    assert parse_json(json.dumps({"a": "[" * 100}), "f", "x") == {"a": "[" * 100}
    with pytest.raises(ControllerFileError, match="digits"):
        parse_json("1" * 40, "f", "x")
    with pytest.raises(ControllerFileError):
        parse_json("NaN", "f", "x")
    assert math.isnan(parse_json("NaN", "f", "x", allow_constants=True))


@FAST
@given(header=st.binary(max_size=300))
def test_random_header_bytes_are_refused_cleanly(tmp_path, header):
    path = tmp_path / "rand.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(ControllerFileError):
        Steerer.load(path)


@FAST
@given(header=st.recursive(json_values, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=12))
def test_random_json_headers_are_refused_cleanly(tmp_path, header):
    path = tmp_path / "rand.safetensors"
    path.write_bytes(join(json.dumps(header), b"\0" * 16))
    with pytest.raises(ControllerFileError):
        Steerer.load(path)


# ---------------------------------------------------------------- not regular files, modes

def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    code = ("import sys; from ltv_control.adapters import Steerer\n"
            "try:\n    Steerer.load(sys.argv[1])\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    result = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.startswith("ControllerFileError") and "FIFO" in result.stdout


def test_link_to_dev_zero_and_folders_are_refused(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    link = tmp_path / "zero.safetensors"
    link.symlink_to("/dev/zero")
    refused(link, "character device")
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    refused(folder, "directory")
    refused(tmp_path / "missing.safetensors", "no such")
    with pytest.raises(ControllerFileError, match="exceeds"):
        read_regular_file(make_steerer("alqr").save(tmp_path / "c.safetensors"), max_bytes=100)


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = make_steerer("alqr").save(tmp_path / "c.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


# ---------------------------------------------------------------- a fresh process

def test_every_kind_loads_in_a_fresh_process(tmp_path):
    paths = [str(make_steerer(kind).save(tmp_path / f"{kind}.safetensors")) for kind in KINDS]
    code = ("import sys\nfrom ltv_control.adapters import Steerer\n"
            "print(' '.join(Steerer.load(p).kind for p in sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-W", "error", "-c", code, *paths],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == list(KINDS)


def test_save_refuses_what_load_would_refuse(tmp_path):
    from ltv_control import PropertyError

    steerer = make_steerer("actadd")
    steerer.coeff = 1e30  # out of the schema (fit accepts any finite coeff)
    path = tmp_path / "c.safetensors"
    with pytest.raises(PropertyError, match="coeff"):
        steerer.save(path)
    assert not path.exists()


@pytest.mark.parametrize("kind, bad", [("actadd", {"coeff": 1e7}), ("alqr", {"lam": 1e7}),
                                       ("pid", {"kp": 1e7}), ("alqr", {"r": 1e13})])
def test_fit_refuses_what_a_file_could_not_hold_before_any_forward_pass(kind, bad):
    """fit checks the controller-file limits first: no forward pass, then a late save error."""
    from ltv_control import PropertyError
    from ltv_control.adapters import ActAddSteerer, ALQRSteerer, PIDSteerer

    class NoForwardPlant:
        horizon, state_dim = T, N

        def __getattr__(self, name):
            raise AssertionError(f"fit touched the plant ({name}) before checking {bad}")

    cls = {"actadd": ActAddSteerer, "alqr": ALQRSteerer, "pid": PIDSteerer}[kind]
    extra = {"layers": [1]} if kind == "actadd" else {}
    with pytest.raises(PropertyError, match=next(iter(bad))):
        cls.fit(NoForwardPlant(), ["a b c"] * 2, ["d e f"] * 2, **extra, **bad)
