"""Hardening of the ``ltv-control`` command line (issue 13), run as users run it.

Each case of the adversarial probe runs ``python -m ltv_control.app.cli`` in a fresh process and
must end with exit status 2 and exactly one ``error:`` line naming the option or file (never a
traceback): non-UTF-8 input files, absent devices, empty and over-long prompts, corrupt model
weights, a full disk, unwritable or existing ``--out`` paths (checked before any work; replaced
only with ``--force``; never an input file), and no empty ``--out`` folder left behind.  The fit →
generate loop runs for every steerer kind, then ``eval`` on the same methods.  Hypothesis drives
the bytes of an input file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ltv_control import ArgumentError  # noqa: E402
from ltv_control.app.cli import main  # noqa: E402
from ltv_control.app.cli_checks import read_text_file  # noqa: E402

BAD_UTF8 = "the soup was good\nnot bad at all \xff\xfe here\n".encode("latin-1")
BAD_OFFSET = BAD_UTF8.index(b"\xff")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from _tiny_lm import save_tiny_llama

    from ltv_control.app.datasets import load_sentiment_task

    root = tmp_path_factory.mktemp("hard")
    model = save_tiny_llama(root / "tiny", seed=0, layers=3, hidden=32)
    broken = root / "broken"
    broken.mkdir()
    for item in model.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])  # truncated weights
    task = load_sentiment_task()
    data = root / "data"
    data.mkdir()
    for name, lines in (("d", task.desired[:8]), ("u", task.undesired[:8]),
                        ("p", task.eval_prompts[:4]), ("j", task.jacobian_prompts[:2])):
        (data / f"{name}.txt").write_text("\n".join(lines), encoding="utf-8")
    (data / "bad.txt").write_bytes(BAD_UTF8)
    return {"model": str(model), "broken": str(broken), "data": data}


def cli(*argv: str, cwd, code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m ltv_control.app.cli ARGV --quiet`` (or ``-c code ARGV``) in a fresh process."""
    head = ["-c", code] if code else ["-m", "ltv_control.app.cli"]
    return subprocess.run([sys.executable, *head, *argv, "--quiet"], capture_output=True,
                          text=True, timeout=600, cwd=cwd, env=ENV)


def one_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def fit_args(env, out, *extra) -> list[str]:
    data = env["data"]
    return ["fit", "--model", env["model"], "--desired", str(data / "d.txt"), "--undesired",
            str(data / "u.txt"), "--jacobian-prompts", str(data / "j.txt"), "--n-jacobian", "2",
            "--max-tokens", "6", "--out", str(out), *extra]


# ---------------------------------------------------------------- input files

@pytest.mark.parametrize("argv", [
    ["fit", "--desired", "BAD", "--out", "OUT/c.safetensors"],
    ["generate", "--prompts", "BAD"],
    ["linearize", "--prompts", "BAD", "--out", "OUT/sys"],
    ["bound", "--prompts", "BAD", "--out", "OUT/bound"],
    ["eval", "--desired", "D", "--undesired", "D", "--prompts", "BAD", "--out", "OUT/rep"],
])
def test_non_utf8_input_files(env, tmp_path, argv):
    bad, d = str(env["data"] / "bad.txt"), str(env["data"] / "d.txt")
    argv = [{"BAD": bad, "D": d}.get(a, a.replace("OUT", str(tmp_path))) for a in argv]
    result = cli(*argv, "--model", env["model"], cwd=tmp_path)
    line = one_error(result, bad, "UTF-8", f"byte offset {BAD_OFFSET}")
    assert "0xff" in line
    assert list(tmp_path.iterdir()) == []  # nothing written, no empty folder


def test_read_text_file_reports_the_first_bad_byte(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(BAD_UTF8)
    with pytest.raises(ArgumentError, match=f"byte offset {BAD_OFFSET}"):
        read_text_file(path, "--desired")
    path.write_bytes("\ufeffhello\n".encode("utf-8"))
    assert read_text_file(path, "--desired") == "hello\n"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ArgumentError, match="regular"):
        read_text_file(fifo, "--prompts")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200))
def test_any_input_file_bytes_give_one_error_line(tmp_path, capsys, content):
    """In-process for speed: any bytes as --desired end in one clear error line (here the
    existing --out stops a valid file before the model is loaded)."""
    desired, out = tmp_path / "d.txt", tmp_path / "exists.safetensors"
    desired.write_bytes(content)
    out.write_bytes(b"keep")
    status = main(["fit", "--desired", str(desired), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error:"), err
    try:
        content.decode("utf-8")
        assert "UTF-8" not in err[0]
    except UnicodeDecodeError:
        assert "UTF-8" in err[0] and str(desired) in err[0]
    assert out.read_bytes() == b"keep"


# ---------------------------------------------------------------- devices, prompts, models

@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps", "meta", "tpu", "cpu:x"])
def test_absent_or_unusable_devices(env, tmp_path, capsys, device):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that CUDA device")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if device == "cuda":  # one case as users run it; the others in-process (fast)
        one_error(cli("generate", "--model", env["model"], "--prompt", "the soup", "--device",
                      device, cwd=tmp_path), "--device")
        return
    status = main(["generate", "--model", env["model"], "--prompt", "the soup", "--device",
                   device, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--device" in err[0], err


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(env, tmp_path, prompt):
    one_error(cli("generate", "--model", env["model"], "--prompt", prompt, cwd=tmp_path),
              "empty")


def test_prompt_longer_than_the_model_positions(env, tmp_path):
    long = " ".join(["good"] * 300)  # the tiny model has 256 positions
    line = one_error(cli("generate", "--model", env["model"], "--prompt", "the soup", "--prompt",
                         long, "--max-new-tokens", "4", cwd=tmp_path), "256")
    assert "prompt 1" in line


def test_corrupt_model_weights(env, tmp_path):
    one_error(cli("generate", "--model", env["broken"], "--prompt", "the soup", cwd=tmp_path),
              "--model", env["broken"])


# ---------------------------------------------------------------- outputs

def test_unwritable_out_is_found_before_any_work(env, tmp_path):
    if not os.path.isdir("/sys") or os.access("/sys", os.W_OK) and _writable("/sys"):
        pytest.skip("no read-only folder to write into")
    # the broken model would fail if loaded: the --out error must come first
    data = env["data"]
    one_error(cli("fit", "--model", env["broken"], "--desired", str(data / "d.txt"),
                  "--undesired", str(data / "u.txt"), "--out", "/sys/c.safetensors",
                  cwd=tmp_path), "--out", "/sys")
    one_error(cli("linearize", "--model", env["broken"], "--out", "/sys/ltv-system",
                  cwd=tmp_path), "--out", "/sys")
    one_error(cli("fit", "--model", env["broken"], "--out", str(tmp_path / "no" / "c.safetensors"),
                  cwd=tmp_path), "--out", "does not exist")


def _writable(folder: str) -> bool:
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def test_existing_out_needs_force_and_inputs_are_never_overwritten(env, tmp_path):
    data = env["data"]
    out = tmp_path / "c.safetensors"
    out.write_bytes(b"precious")
    one_error(cli(*fit_args(env, out, "--method", "actadd", "--layers", "1"), cwd=tmp_path),
              "--force")
    assert out.read_bytes() == b"precious"
    desired = data / "d.txt"
    before = desired.read_bytes()
    one_error(cli(*fit_args(env, desired, "--method", "actadd", "--force"), cwd=tmp_path),
              "input")
    assert desired.read_bytes() == before
    report = tmp_path / "sys"
    report.mkdir()
    (report / "system.safetensors").write_bytes(b"old")
    one_error(cli("linearize", "--model", env["model"], "--out", str(report), cwd=tmp_path),
              "--force")
    result = cli(*fit_args(env, out, "--method", "actadd", "--layers", "1", "--force"),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] != b"precious"[:8]


FULL_DISK = """
import errno, sys
import ltv_control.atomic as atomic
def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
atomic.atomic_write = full
from ltv_control.app.cli import main
sys.exit(main(sys.argv[1:]))
"""

FAILING_RUN = """
import sys
import ltv_control.app.experiment as experiment
from ltv_control import ControlError
def fail(*args, **kwargs):
    raise ControlError("the run failed half-way")
experiment.run_experiment = fail
from ltv_control.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_full_disk_is_one_clear_line(env, tmp_path):
    out = tmp_path / "c.safetensors"
    result = cli(*fit_args(env, out, "--method", "actadd", "--layers", "1"), cwd=tmp_path,
                 code=FULL_DISK)
    one_error(result, "no space left")
    assert not out.exists()


def test_failed_eval_leaves_no_empty_out_folder(env, tmp_path):
    data, out = env["data"], tmp_path / "report"
    result = cli("eval", "--model", env["model"], "--desired", str(data / "d.txt"), "--undesired",
                 str(data / "u.txt"), "--prompts", str(data / "p.txt"), "--out", str(out),
                 cwd=tmp_path, code=FAILING_RUN)
    one_error(result, "half-way")
    assert not out.exists()


# ---------------------------------------------------------------- the loop, every kind

LOOP = [
    ("alqr", ["--lam", "20"], ["--lam", "30", "--positions", "all"]),
    ("actadd", ["--layers", "1", "--coeff", "20"], ["--coeff", "30"]),
    ("pid", ["--lam", "20"], ["--lam", "30"]),
    ("constrained", ["--lam", "20"], ["--lam", "30"]),
]


PROMPTS = ["--prompt", "The soup was", "--prompt", "I went to the store", "--max-new-tokens", "4",
           "--json"]


@pytest.fixture(scope="module")
def unsteered(env, tmp_path_factory):
    plain = cli("generate", "--model", env["model"], *PROMPTS, cwd=tmp_path_factory.mktemp("plain"))
    assert plain.returncode == 0, plain.stderr
    return json.loads(plain.stdout)["continuations"]


@pytest.mark.parametrize("kind, fit_extra, gen_extra", LOOP, ids=[k for k, *_ in LOOP])
def test_fit_then_generate_in_fresh_processes(env, tmp_path, unsteered, kind, fit_extra, gen_extra):
    """``generate`` loads the file with ``Steerer.load`` in a fresh interpreter (the kind
    registry is filled on demand there)."""
    ctrl = tmp_path / f"{kind}.safetensors"
    fitted = cli(*fit_args(env, ctrl, "--method", kind, *fit_extra), "--json", cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr
    assert json.loads(fitted.stdout)["method"] == kind and ctrl.is_file()
    steered = cli("generate", "--model", env["model"], "--controller", str(ctrl), *gen_extra,
                  *PROMPTS, cwd=tmp_path)
    assert steered.returncode == 0, steered.stderr
    assert "Traceback" not in steered.stderr and "Warning" not in steered.stderr
    texts = json.loads(steered.stdout)["continuations"]
    assert len(texts) == len(unsteered) == 2
    if kind != "constrained":  # a budgeted controller may legitimately leave greedy text alone
        assert texts != unsteered


def test_eval_runs_every_kind_in_a_fresh_process(env, tmp_path):
    data, out = env["data"], tmp_path / "report"
    result = cli("eval", "--model", env["model"], "--desired", str(data / "d.txt"),
                 "--undesired", str(data / "u.txt"), "--prompts", str(data / "p.txt"),
                 "--jacobian-prompts", str(data / "j.txt"), "--methods",
                 "unsteered,actadd,pid,alqr,constrained", "--max-new-tokens", "3",
                 "--n-jacobian", "1", "--sweep-alqr", "1", "--sweep-actadd", "1",
                 "--sweep-pid", "1", "--no-bound", "--out", str(out), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"actadd", "pid", "alqr", "constrained"} <= set(report["methods"])
    assert (out / "report.json").is_file()
    again = cli("eval", "--model", env["model"], "--desired", str(data / "d.txt"),
                "--undesired", str(data / "u.txt"), "--prompts", str(data / "p.txt"),
                "--out", str(out), cwd=tmp_path)
    one_error(again, "--force")
    assert Path(out / "report.json").is_file()
