"""The ``ltv-control`` command line: help, errors and exit codes, JSON output, end-to-end runs.

The end-to-end runs use a tiny random Llama saved to ``tmp_path`` (``--model``); the fit →
generate loop runs in fresh processes (``python -m ltv_control.app.cli``), as users run it; one
``demo --quick`` run on the embedded SmolLM2 is marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ltv_control.app.cli import build_parser, main

SUBCOMMANDS = ("demo", "eval", "fit", "generate", "linearize", "bound")


def _one_line_error(capsys, status):
    out, err = capsys.readouterr()
    assert status != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_help_everywhere(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in top
        assert main([name, "--help"]) == 0
        text = capsys.readouterr().out
        assert f"ltv-control {name}" in text and "--seed" in text and "--json" in text
    assert main(["--version"]) == 0
    assert "ltv-control" in capsys.readouterr().out


def test_console_script_entry_point():
    exe = shutil.which("ltv-control")
    if exe is None:
        pytest.skip("console script not installed")
    result = subprocess.run([exe, "generate", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--positions" in result.stdout


def test_no_subcommand_is_an_error(capsys):
    assert main([]) == 2


@pytest.mark.parametrize("argv, fragment", [
    (["demo", "--n-eval", "0"], "--n-eval"),
    (["demo", "--max-new-tokens", "x"], "--max-new-tokens"),
    (["demo", "--lam", "nan"], "--lam"),
    (["demo", "--r", "0"], "--r"),
    (["demo", "--dtype", "int8"], "--dtype"),
    (["demo", "--methods", "alqr,magic"], "magic"),
    (["demo", "--model", "/no/such/model"], "/no/such/model"),
    (["generate", "--controller", "/no/such.safetensors", "--prompt", "x"], "no such file"),
    (["eval", "--desired", "/no/d.txt", "--undesired", "/no/u.txt", "--prompts", "/no/p.txt"],
     "no such file"),
    (["fit", "--method", "magic", "--out", "x.safetensors"], "--method"),
    (["fit"], "--out"),
    (["nonsense"], "nonsense"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, fragment):
    line = _one_line_error(capsys, main(argv))
    assert fragment in line


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    pytest.importorskip("torch")
    from _tiny_lm import save_tiny_llama

    root = tmp_path_factory.mktemp("tiny")
    a = save_tiny_llama(root / "tiny-a", seed=0, layers=3, hidden=32)
    b = save_tiny_llama(root / "tiny-b", seed=1, layers=3, hidden=48)
    data = root / "data"
    data.mkdir()
    from ltv_control.app.datasets import load_sentiment_task

    task = load_sentiment_task()
    (data / "d.txt").write_text("\n".join(task.desired[:8]))
    (data / "u.txt").write_text("\n".join(task.undesired[:8]))
    (data / "p.txt").write_text("\n".join(task.eval_prompts[:4]))
    (data / "j.txt").write_text("\n".join(task.jacobian_prompts[:2]))
    return {"a": a, "b": b, "data": data}


def _run_cli(*argv: str, cwd) -> dict:
    """Run ``python -m ltv_control.app.cli ARGV --quiet --json`` in a fresh process, as a user
    does; return its JSON output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "ltv_control.app.cli", *argv, "--quiet",
                             "--json"], capture_output=True, text=True, timeout=600, cwd=cwd,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("method, strong", [
    ("alqr", ["--positions", "all", "--lam", "50"]),
    ("actadd", ["--coeff", "50"]),
])
def test_fit_then_generate_in_fresh_processes(tiny_dirs, tmp_path, capsys, method, strong):
    a, data = str(tiny_dirs["a"]), tiny_dirs["data"]
    ctrl = tmp_path / f"{method}.safetensors"
    fitted = _run_cli("fit", "--method", method, "--model", a, "--desired", str(data / "d.txt"),
                      "--undesired", str(data / "u.txt"), "--jacobian-prompts",
                      str(data / "j.txt"), "--n-jacobian", "2", "--max-tokens", "6",
                      "--out", str(ctrl), cwd=tmp_path)
    assert fitted["method"] == method and fitted["num_layers"] == 3
    assert fitted["hidden_size"] == 32 and fitted["n_desired"] == 8 and ctrl.is_file()
    prompts = ["--prompt", "The soup was", "--prompt", "I went to the store yesterday and",
               "--max-new-tokens", "4"]
    steered = _run_cli("generate", "--model", a, "--controller", str(ctrl), *strong, *prompts,
                       cwd=tmp_path)
    assert steered["controller"] == str(ctrl) and len(steered["continuations"]) == 2

    def in_process(*extra):
        assert main(["generate", "--model", a, *prompts, "--quiet", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)["continuations"]

    unsteered = in_process()
    assert len(unsteered) == 2
    # a strong controller changes the text; attaching nothing reproduces the unsteered text
    assert steered["continuations"] != unsteered
    if method == "alqr":
        assert len(in_process("--controller", str(ctrl), "--positions", "last")) == 2


def test_seeded_sampling_is_reproducible(tiny_dirs, capsys):
    def run(seed):
        assert main(["generate", "--model", str(tiny_dirs["a"]), "--prompt", "The soup was",
                     "--prompt", "My commute to work is", "--sample", "--seed", str(seed),
                     "--max-new-tokens", "8", "--quiet", "--json"]) == 0
        return json.loads(capsys.readouterr().out)["continuations"]

    first = run(3)
    assert run(3) == first
    assert any(run(seed) != first for seed in (4, 5, 6))


def test_mismatched_and_corrupt_controller_files(tiny_dirs, tmp_path, capsys):
    a, b, data = str(tiny_dirs["a"]), str(tiny_dirs["b"]), tiny_dirs["data"]
    ctrl = tmp_path / "act.safetensors"
    assert main(["fit", "--method", "actadd", "--model", a, "--desired", str(data / "d.txt"),
                 "--undesired", str(data / "u.txt"), "--layers", "1", "--out", str(ctrl),
                 "--quiet"]) == 0
    capsys.readouterr()
    line = _one_line_error(capsys, main(["generate", "--model", b, "--controller", str(ctrl),
                                         "--prompt", "Hi", "--quiet"]))
    assert "32" in line and "48" in line  # expected vs found hidden size
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01not a safetensors file")
    _one_line_error(capsys, main(["generate", "--model", a, "--controller", str(junk),
                                  "--prompt", "Hi", "--quiet"]))
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(ctrl.read_bytes()[:100])
    _one_line_error(capsys, main(["generate", "--model", a, "--controller", str(truncated),
                                  "--prompt", "Hi", "--quiet"]))
    _one_line_error(capsys, main(["generate", "--model", a, "--controller", str(ctrl),
                                  "--prompt", "Hi", "--lam", "2", "--quiet"]))


def test_eval_end_to_end_on_a_tiny_model(tiny_dirs, tmp_path, capsys):
    from ltv_control.app.report import validate_report

    a, data = str(tiny_dirs["a"]), tiny_dirs["data"]
    out_dir = tmp_path / "report"
    status = main(["eval", "--model", a, "--desired", str(data / "d.txt"), "--undesired",
                   str(data / "u.txt"), "--prompts", str(data / "p.txt"), "--jacobian-prompts",
                   str(data / "j.txt"), "--methods", "unsteered,actadd,alqr,alqr_plus,pid",
                   "--max-new-tokens", "4", "--n-jacobian", "2", "--sweep-alqr", "1,2",
                   "--sweep-actadd", "1", "--sweep-pid", "1", "--out", str(out_dir),
                   "--quiet", "--json", "--seed", "7"])
    stdout = capsys.readouterr().out
    assert status == 0
    report = validate_report(json.loads(stdout))
    assert report["seed"] == 7
    assert set(report["methods"]) == {"unsteered", "actadd", "alqr", "alqr_plus", "pid"}
    assert {(p["method"], p["lam"]) for p in report["sweep"]} >= {("alqr", 1.0), ("alqr", 2.0)}
    on_disk = json.loads((out_dir / "report.json").read_text())
    assert on_disk["methods"].keys() == report["methods"].keys()
    for name in ("report.md", "beta.png", "tradeoff.png", "examples.png"):
        assert (out_dir / name).is_file(), name
    for m in report["methods"].values():
        assert 0.0 <= m["positive_rate"] <= 1.0 and m["perplexity"] > 1.0
    # the β figure's data: every method's own steered profile (not a copy of the unsteered one)
    beta = json.loads((out_dir / "details.json").read_text())["beta"]
    assert set(beta) == {"target", *report["methods"]}
    for method in set(report["methods"]) - {"unsteered"}:
        assert beta[method] != beta["unsteered"], method


def test_linearize_writes_a_system_file(tiny_dirs, tmp_path, capsys):
    import numpy as np

    from ltv_control.system_io import load_system

    out_dir = tmp_path / "sys"
    status = main(["linearize", "--model", str(tiny_dirs["a"]), "--n-prompts", "2",
                   "--max-tokens", "6", "--out", str(out_dir), "--quiet", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert status == 0
    system = load_system(payload["system"])
    assert system.horizon == 3 and system.n_states == 32
    assert np.all(np.isfinite(system.A))
    meta = json.loads((out_dir / "system.json").read_text())
    assert meta["horizon"] == 3 and meta["metadata"]["max_tokens"] == 6
    diagnostics = payload["diagnostics"]
    assert (out_dir / "diagnostics.png").read_bytes()[:4] == b"\x89PNG"
    stored = json.loads((out_dir / "diagnostics.json").read_text())
    assert len(stored["prediction_error"]) == 3  # one row per block
    assert 0.0 <= diagnostics["mean_subspace_similarity"] <= 1.0 + 1e-9
    errors = list(diagnostics["mean_prediction_error"].values())
    assert all(e >= 0 for e in errors) and errors[0] <= errors[-1]  # first order: grows with ε


def test_bound_writes_figure_and_summary(tiny_dirs, tmp_path, capsys):
    out_dir = tmp_path / "bound"
    status = main(["bound", "--model", str(tiny_dirs["a"]), "--n-prompts", "5", "--n-jacobian",
                   "1", "--max-tokens", "6", "--out", str(out_dir), "--quiet", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert status == 0
    assert 0.0 <= payload["coverage"] <= 1.0 and payload["n_steps"] > 0
    assert (out_dir / "bound.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out_dir / "bound.json").read_text())["mode"] == payload["mode"]
    line = _one_line_error(capsys, main(["bound", "--model", str(tiny_dirs["a"]),
                                         "--n-prompts", "2", "--quiet"]))
    assert "at least 3" in line


def test_parser_defaults_are_documented():
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():
        for option in action._actions:
            if option.option_strings and option.dest != "help":
                assert option.help, f"{action.prog} {option.option_strings} lacks help"


@pytest.mark.slow
def test_demo_quick_on_the_embedded_model(embedded_model, tmp_path, capsys, monkeypatch):
    from ltv_control import adapters
    from ltv_control.app.report import validate_report

    monkeypatch.setattr(adapters, "load_embedded_model", lambda dtype=None, device="cpu":
                        embedded_model)
    out_dir = tmp_path / "demo"
    status = main(["demo", "--quick", "--quiet", "--json", "--out", str(out_dir)])
    report = validate_report(json.loads(capsys.readouterr().out))
    assert status == 0
    assert {"unsteered", "actadd", "pid", "alqr", "alqr_plus"} <= set(report["methods"])
    assert report["methods"]["alqr"]["positive_rate"] > report["methods"]["unsteered"][
        "positive_rate"]
    assert (out_dir / "report.md").is_file() and (out_dir / "tradeoff.png").is_file()


def test_export_then_generate_with_the_control_vector(tiny_dirs, tmp_path, capsys):
    """fit → export (llama.cpp GGUF) → generate --control-vector, each a fresh process: an
    exactly exported ActAdd controller steers exactly as the controller file does."""
    a, data = str(tiny_dirs["a"]), tiny_dirs["data"]
    ctrl, vector = tmp_path / "actadd.safetensors", tmp_path / "actadd.gguf"
    assert main(["fit", "--method", "actadd", "--layers", "1", "--coeff", "30", "--model", a,
                 "--desired", str(data / "d.txt"), "--undesired", str(data / "u.txt"),
                 "--out", str(ctrl), "--quiet", "--json"]) == 0
    capsys.readouterr()
    exported = _run_cli("export", str(ctrl), "--format", "gguf", "--out", str(vector),
                        "--model", a, cwd=tmp_path)
    assert exported["exact"] is True and vector.is_file()
    assert exported["out"] == str(vector)
    prompts = ["--prompt", "The soup was", "--max-new-tokens", "4"]
    by_vector = _run_cli("generate", "--model", a, "--control-vector", str(vector), *prompts,
                         cwd=tmp_path)
    by_file = _run_cli("generate", "--model", a, "--controller", str(ctrl), *prompts, cwd=tmp_path)
    assert by_vector["continuations"] == by_file["continuations"]
    halved = _run_cli("generate", "--model", a, "--control-vector", str(vector), "--scale", "0",
                      *prompts, cwd=tmp_path)
    assert main(["generate", "--model", a, *prompts, "--quiet", "--json"]) == 0
    assert halved["continuations"] == json.loads(capsys.readouterr().out)["continuations"]
    # the output exists now: a second export is refused without --force, before any work
    result = subprocess.run([sys.executable, "-m", "ltv_control.app.cli", "export", str(ctrl),
                             "--out", str(vector), "--model", a, "--quiet"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert "--force" in result.stderr


def test_model_option_takes_a_gguf_file_and_refuses_others(tmp_path):
    """--model accepts a directory or a .gguf file; a truncated GGUF or another file is one
    error line (exit 2), before any conversion."""
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")  # the magic and a version, then nothing
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\x00" * 16)
    for model, expected in ((bad, "broken.gguf"), (other, "not a .gguf file")):
        result = subprocess.run([sys.executable, "-m", "ltv_control.app.cli", "generate",
                                 "--model", str(model), "--prompt", "Hello", "--quiet"],
                                capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
        assert expected in result.stderr, result.stderr


def test_fit_relative_form_is_stored_and_demo_settings_take_it(tiny_dirs, tmp_path, capsys):
    from ltv_control.adapters import Steerer
    from ltv_control.app.settings import ExperimentSettings

    a, data = str(tiny_dirs["a"]), tiny_dirs["data"]
    ctrl = tmp_path / "relative.safetensors"
    assert main(["fit", "--method", "alqr", "--form", "relative", "--model", a,
                 "--desired", str(data / "d.txt"), "--undesired", str(data / "u.txt"),
                 "--jacobian-prompts", str(data / "j.txt"), "--n-jacobian", "1",
                 "--max-tokens", "6", "--out", str(ctrl), "--quiet", "--json"]) == 0
    capsys.readouterr()
    assert Steerer.load(ctrl).form == "relative"
    args = build_parser().parse_args(["demo", "--alqr-form", "relative"])
    from ltv_control.app.cli import demo_settings

    assert demo_settings(args).alqr_form == "relative"
    assert demo_settings(build_parser().parse_args(["demo", "--alqr-form", "paper"])).alqr_form == "paper"
    # the app's default is the automatic choice (one set of defaults for both families)
    assert ExperimentSettings().alqr_form == "auto"
    assert demo_settings(build_parser().parse_args(["demo"])).alqr_form == "auto"
    assert build_parser().parse_args(["fit", "--method", "alqr", "--out", "x"]).form == "auto"
    with pytest.raises(Exception, match="alqr_form"):
        ExperimentSettings(alqr_form="Paper")


def test_fit_chooses_the_form_and_says_so_in_a_fresh_process(tiny_dirs, tmp_path):
    """``ltv-control fit --method alqr`` (default ``--form auto``) as a user runs it: the choice
    and its measurement are reported, and the file holds the chosen form."""
    import json

    from ltv_control.adapters import Steerer

    a, data = str(tiny_dirs["a"]), tiny_dirs["data"]
    ctrl = tmp_path / "auto.safetensors"
    base = [sys.executable, "-m", "ltv_control.app.cli", "fit", "--method", "alqr", "--model", a,
            "--desired", str(data / "d.txt"), "--undesired", str(data / "u.txt"),
            "--jacobian-prompts", str(data / "j.txt"), "--n-jacobian", "1", "--max-tokens", "6",
            "--out", str(ctrl)]
    done = subprocess.run(base + ["--json"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["form"] in ("paper", "relative") and payload["form_nonlinearity_median"] >= 0
    assert f"A-LQR form auto -> {payload['form']}" in done.stderr
    assert Steerer.load(ctrl).form == payload["form"]
    expected = "paper" if payload["form_nonlinearity_median"] <= 0.1 else "relative"
    assert payload["form"] == expected
