"""Steering tasks as data: contrastive sets, evaluation prompts, a prompt format and judges.

A :class:`Task` holds everything an evaluation needs besides the model:

* ``desired`` / ``undesired`` — the contrastive sets a steerer is fitted on (the LFS setpoint
  ``e_k = mean(desired) − mean(undesired)`` of the block inputs);
* ``judge_desired`` / ``judge_undesired`` — held-out sentences of the same two sides on which a
  concept judge is trained (never used to fit a steerer);
* ``eval_prompts`` — prompts that appear in no fitting or judging set;
* ``jacobian_prompts`` — prompts used to linearize the model (optional);
* ``prompt_format`` — ``"raw"`` (prompts tokenized as given), ``"chat"`` (each prompt becomes a
  user turn of the tokenizer's chat template, with the generation prompt appended) or ``"auto"``
  (``"chat"`` when the tokenizer has a chat template, as instruct models do, else ``"raw"``, as
  for a base model);
* ``kind`` — ``"sentiment"`` (judged by VADER) or ``"concept"`` (embedding and keyword judges,
  :mod:`ltv_control.app.judges`); a multi-concept task keeps its concepts in ``components``.

Built in: ``sentiment`` (the demo's task, :mod:`ltv_control.app.datasets`) and
``concept:NAME`` for every ``NAME.desired.txt`` in the packaged ``data/concepts`` folder.  Users
bring their own concept with files (:func:`load_concept_files`): one item per line, or one JSONL
file whose lines are ``{"set": "desired" | "undesired" | "prompt" | "keyword" | "jacobian",
"text": "..."}``.  Several concepts at once: ``concept:A+concept:B``.

Splits: item ``i`` of each contrastive side goes to the judge when ``i % 3 == 2`` and to the
fitting set otherwise, so the steerer, the judge and the evaluation prompts never share a text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from ltv_control import ArgumentError, DimensionError, PropertyError
from ltv_control.app.cli_checks import read_text_file

__all__ = [
    "JUDGE_EVERY",
    "MIN_ITEMS",
    "PROMPT_FORMATS",
    "Task",
    "builtin_concepts",
    "format_prompts",
    "load_concept_files",
    "load_task",
    "read_items",
    "settings_overrides",
    "split_for_judge",
]

PROMPT_FORMATS = ("raw", "chat", "auto")
"""Accepted values of ``Task.prompt_format``."""

JUDGE_EVERY = 3
"""Item ``i`` of a contrastive side is held out for the judge when ``i % JUDGE_EVERY == 2``."""

MIN_ITEMS = 6
"""Fewest items per contrastive side of a concept task (4 to fit, 2 to train the judge)."""

_CONCEPTS = "concepts"
_JSONL_SETS = {"desired": "desired", "undesired": "undesired", "prompt": "prompts",
               "keyword": "keywords", "jacobian": "jacobian_prompts"}


@dataclass(frozen=True)
class Task:
    """One steering task (see the module docstring for the meaning of every field).

    Attributes
    ----------
    name : str
        ``"sentiment"``, ``"concept:NAME"``, ``"concept:A+concept:B"`` or a user task's name.
    kind : str
        ``"sentiment"`` or ``"concept"``.
    desired, undesired : tuple of str
        Fitting sets.
    eval_prompts : tuple of str
        Evaluation prompts (before :func:`format_prompts`).
    jacobian_prompts : tuple of str
        Linearization prompts (empty: the packaged neutral ones).
    prompt_format : str
        ``"raw"``, ``"chat"`` or ``"auto"`` (:func:`format_prompts`).
    keywords : tuple of str
        Keywords of the keyword judge (empty: no keyword judge).
    judge_desired, judge_undesired : tuple of str
        Held-out sets the embedding judge is trained on.
    components : tuple of Task
        The single-concept tasks of a multi-concept task (empty otherwise).
    """

    name: str
    kind: str
    desired: tuple[str, ...]
    undesired: tuple[str, ...]
    eval_prompts: tuple[str, ...]
    jacobian_prompts: tuple[str, ...] = ()
    prompt_format: str = "raw"
    keywords: tuple[str, ...] = ()
    judge_desired: tuple[str, ...] = ()
    judge_undesired: tuple[str, ...] = ()
    components: tuple["Task", ...] = ()

    def __post_init__(self):
        if self.kind not in ("sentiment", "concept"):
            raise PropertyError(f"kind must be 'sentiment' or 'concept', found {self.kind!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise PropertyError(
                f"prompt_format must be one of {list(PROMPT_FORMATS)}, found {self.prompt_format!r}")
        for field in ("desired", "undesired", "eval_prompts"):
            if not getattr(self, field):
                raise DimensionError(f"task {self.name!r}: {field} must hold at least one text, "
                                     f"found 0")

    @property
    def concepts(self) -> tuple[str, ...]:
        """Concept names: the components' names for a multi-concept task, else ``(name,)``."""
        return tuple(c.short_name for c in self.components) or (self.short_name,)

    @property
    def short_name(self) -> str:
        """The name without a ``concept:`` prefix."""
        return self.name.split(":", 1)[1] if self.name.startswith("concept:") else self.name

    def subset(self, *, n_fit: int | None = None, n_eval: int | None = None,
               n_jacobian: int | None = None) -> Task:
        """The first ``n_fit`` items of each fitting side (and of every component's),
        ``n_eval`` evaluation and ``n_jacobian`` Jacobian prompts (``None`` keeps all).
        The judge sets are kept whole."""
        for name, value in (("n_fit", n_fit), ("n_eval", n_eval), ("n_jacobian", n_jacobian)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise PropertyError(f"{name} must be a positive int or None, found {value!r}")
        return replace(self, desired=self.desired[:n_fit], undesired=self.undesired[:n_fit],
                       eval_prompts=self.eval_prompts[:n_eval],
                       jacobian_prompts=self.jacobian_prompts[:n_jacobian],
                       components=tuple(c.subset(n_fit=n_fit) for c in self.components))

    def formatted_prompts(self, tokenizer) -> list[str]:
        """The evaluation prompts in this task's format (:func:`format_prompts`)."""
        return format_prompts(self.eval_prompts, tokenizer, self.prompt_format)

    def describe(self) -> dict:
        """JSON-ready summary recorded in a report's settings."""
        return {"name": self.name, "kind": self.kind, "prompt_format": self.prompt_format,
                "n_desired": len(self.desired), "n_undesired": len(self.undesired),
                "n_judge_desired": len(self.judge_desired),
                "n_judge_undesired": len(self.judge_undesired),
                "n_eval_prompts": len(self.eval_prompts), "n_keywords": len(self.keywords),
                "concepts": list(self.concepts) if self.kind == "concept" else []}


def format_prompts(prompts, tokenizer, prompt_format: str = "raw") -> list[str]:
    """Prompts as the model sees them.

    ``"raw"`` returns them unchanged; ``"chat"`` renders each as one user turn through
    ``tokenizer.apply_chat_template(..., tokenize=False, add_generation_prompt=True)``;
    ``"auto"`` is ``"chat"`` when the tokenizer has a chat template (an instruct model) and
    ``"raw"`` when it has none (a base model such as Gemma-3-270M).

    Raises
    ------
    PropertyError
        Unknown format.
    ArgumentError
        ``"chat"`` with a tokenizer that has no chat template.
    """
    if prompt_format not in PROMPT_FORMATS:
        raise PropertyError(
            f"prompt_format must be one of {list(PROMPT_FORMATS)}, found {prompt_format!r}")
    prompts = list(prompts)
    if prompt_format == "auto":
        prompt_format = "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    if prompt_format == "raw":
        return prompts
    if not getattr(tokenizer, "chat_template", None):
        raise ArgumentError("prompt_format='chat' needs a tokenizer with a chat template; "
                            f"{type(tokenizer).__name__} has none (use prompt_format='raw')")
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def split_for_judge(items) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a contrastive side into (fit, judge): item ``i`` goes to the judge iff
    ``i % JUDGE_EVERY == 2``."""
    items = tuple(items)
    fit = tuple(t for i, t in enumerate(items) if i % JUDGE_EVERY != 2)
    judge = tuple(t for i, t in enumerate(items) if i % JUDGE_EVERY == 2)
    return fit, judge


def read_items(path: str | Path, what: str) -> tuple[str, ...]:
    """Non-blank, stripped lines of a UTF-8 text file.

    Parameters
    ----------
    path : str or Path
    what : str
        The option or role the file was given for (``"--desired"``), named in errors.

    Raises
    ------
    ArgumentError
        The file is missing, a directory, or cannot be read.
    PropertyError
        The file is not valid UTF-8.
    DimensionError
        The file holds no non-blank line.
    """
    text = read_text_file(path, what, decode_error=PropertyError)
    items = tuple(s for s in (line.strip() for line in text.splitlines()) if s)
    if not items:
        raise DimensionError(f"{what} file {str(path)!r} is empty: expected at least one "
                             "non-blank line, found 0")
    return items


def _read_jsonl(path: str | Path) -> dict[str, tuple[str, ...]]:
    text = read_text_file(path, "--desired (JSONL)", decode_error=PropertyError)
    found: dict[str, list[str]] = {v: [] for v in _JSONL_SETS.values()}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PropertyError(f"{str(path)!r} line {number}: not JSON ({exc.msg})") from None
        if (not isinstance(record, dict) or record.get("set") not in _JSONL_SETS
                or not isinstance(record.get("text"), str)):
            raise PropertyError(
                f"{str(path)!r} line {number}: expected an object {{\"set\": one of "
                f"{sorted(_JSONL_SETS)}, \"text\": str}}, found {line.strip()[:80]!r}")
        if record["text"].strip():
            found[_JSONL_SETS[record["set"]]].append(record["text"].strip())
    return {k: tuple(v) for k, v in found.items()}


def _packaged(name: str) -> tuple[str, ...]:
    folder = resources.files("ltv_control.app.data").joinpath(_CONCEPTS)
    text = folder.joinpath(name).read_text(encoding="utf-8")
    return tuple(s for s in (line.strip() for line in text.splitlines()) if s)


def _packaged_default(name: str) -> tuple[str, ...]:
    text = resources.files("ltv_control.app.data").joinpath(name).read_text(encoding="utf-8")
    return tuple(s for s in (line.strip() for line in text.splitlines()) if s)


def builtin_concepts() -> tuple[str, ...]:
    """Names of the packaged concepts (``concept:NAME`` tasks), sorted."""
    folder = resources.files("ltv_control.app.data").joinpath(_CONCEPTS)
    return tuple(sorted(p.name[: -len(".desired.txt")] for p in folder.iterdir()
                        if p.name.endswith(".desired.txt")))


def _concept_task(name: str, desired, undesired, *, prompts=(), keywords=(),
                  jacobian_prompts=(), prompt_format: str = "auto") -> Task:
    """A concept task from whole contrastive sides (split here into fit / judge)."""
    for side, items in (("desired", desired), ("undesired", undesired)):
        if len(items) < MIN_ITEMS:
            raise DimensionError(
                f"concept task {name!r}: {side} needs at least {MIN_ITEMS} items (some are held "
                f"out to train the judge), found {len(items)}")
    overlap = sorted(set(desired) & set(undesired))
    if overlap:
        raise PropertyError(
            f"concept task {name!r}: desired and undesired share {len(overlap)} item(s), "
            f"e.g. {overlap[0]!r}; the two sides must be different texts")
    fit_d, judge_d = split_for_judge(desired)
    fit_u, judge_u = split_for_judge(undesired)
    return Task(name=name, kind="concept", desired=fit_d, undesired=fit_u,
                eval_prompts=tuple(prompts) or _packaged("prompts.txt"),
                jacobian_prompts=tuple(jacobian_prompts) or _packaged_default(
                    "jacobian_prompts.txt"),
                prompt_format=prompt_format, keywords=tuple(k.lower() for k in keywords),
                judge_desired=judge_d, judge_undesired=judge_u)


def _builtin_concept(name: str, prompt_format: str = "auto") -> Task:
    known = builtin_concepts()
    if name not in known:
        raise ArgumentError(f"unknown concept {name!r}; built-in concepts are {list(known)} "
                            "(or give your own with --desired/--undesired files)")
    return _concept_task(f"concept:{name}", _packaged(f"{name}.desired.txt"),
                         _packaged("neutral.undesired.txt"),
                         keywords=_packaged(f"{name}.keywords.txt"), prompt_format=prompt_format)


def _sentiment_task(prompt_format: str = "raw") -> Task:
    from ltv_control.app.datasets import load_sentiment_task

    s = load_sentiment_task()
    return Task(name="sentiment", kind="sentiment", desired=s.desired, undesired=s.undesired,
                eval_prompts=s.eval_prompts, jacobian_prompts=s.jacobian_prompts,
                prompt_format=prompt_format)


def _multi_task(parts: list[Task]) -> Task:
    """Several concepts at once: fitting sets are the components' interleaved and deduplicated
    (for single-setpoint methods); each component keeps its own sets and judges."""
    names = [p.short_name for p in parts]
    if len(set(names)) != len(names):
        raise ArgumentError(f"a multi-concept task names each concept once, found {names}")

    def union(sides):
        seen: dict[str, None] = {}
        for row in range(max(len(s) for s in sides)):
            for side in sides:
                if row < len(side):
                    seen.setdefault(side[row], None)
        return tuple(seen)

    first = parts[0]
    return Task(name="+".join(p.name for p in parts), kind="concept",
                desired=union([p.desired for p in parts]),
                undesired=union([p.undesired for p in parts]),
                eval_prompts=first.eval_prompts, jacobian_prompts=first.jacobian_prompts,
                prompt_format=first.prompt_format,
                keywords=union([p.keywords for p in parts]) if all(p.keywords for p in parts)
                else (),
                judge_desired=union([p.judge_desired for p in parts]),
                judge_undesired=union([p.judge_undesired for p in parts]),
                components=tuple(parts))


def load_concept_files(desired: str | Path, undesired: str | Path | None = None, *,
                       prompts: str | Path | None = None, keywords: str | Path | None = None,
                       jacobian_prompts: str | Path | None = None, name: str | None = None,
                       prompt_format: str = "auto") -> Task:
    """A user concept task from text files (one item per line) or from one JSONL file.

    Parameters
    ----------
    desired : path
        Sentences about the concept; or a ``.jsonl`` file holding every set (then leave
        ``undesired``, ``prompts``, ``keywords`` and ``jacobian_prompts`` unset), each line
        ``{"set": "desired" | "undesired" | "prompt" | "keyword" | "jacobian", "text": str}``.
    undesired : path
        Sentences not about it (varied everyday topics).
    prompts : path, optional
        Evaluation prompts; default the packaged neutral chat requests.
    keywords : path, optional
        Keywords of the keyword judge (whole words, case-insensitive).
    jacobian_prompts : path, optional
        Linearization prompts; default the packaged neutral ones.
    name : str, optional
        Task name (default ``concept:<stem of the desired file>``).
    prompt_format : {"auto", "chat", "raw"}, default "auto"

    Raises
    ------
    ArgumentError
        A file that is missing or unreadable, ``undesired`` missing for a text file, or extra
        files next to a JSONL file.
    PropertyError
        A non-UTF-8 file, a malformed JSONL line, or the same text on both sides.
    DimensionError
        An empty file or fewer than :data:`MIN_ITEMS` items on a side.
    """
    stem = Path(desired).name.split(".")[0] or "user"
    name = name or f"concept:{stem}"
    if str(desired).endswith(".jsonl"):
        extra = [o for o, v in (("undesired", undesired), ("prompts", prompts),
                                ("keywords", keywords), ("jacobian_prompts", jacobian_prompts))
                 if v is not None]
        if extra:
            raise ArgumentError(f"a JSONL task file holds every set; do not also pass {extra}")
        sets = _read_jsonl(desired)
        for side in ("desired", "undesired"):
            if not sets[side]:
                raise DimensionError(f"JSONL file {str(desired)!r} has no line with "
                                     f"\"set\": \"{side}\" (expected at least {MIN_ITEMS})")
        return _concept_task(name, sets["desired"], sets["undesired"], prompts=sets["prompts"],
                             keywords=sets["keywords"], jacobian_prompts=sets["jacobian_prompts"],
                             prompt_format=prompt_format)
    if undesired is None:
        raise ArgumentError("--undesired FILE is required with --desired FILE (or give one "
                            ".jsonl file holding both sets)")
    if Path(desired).resolve() == Path(undesired).resolve():
        raise ArgumentError(f"--desired and --undesired name the same file {str(desired)!r}")
    read = {opt: read_items(path, opt) if path is not None else ()
            for opt, path in (("--desired", desired), ("--undesired", undesired),
                              ("--prompts", prompts), ("--keywords", keywords),
                              ("--jacobian-prompts", jacobian_prompts))}
    return _concept_task(name, read["--desired"], read["--undesired"], prompts=read["--prompts"],
                         keywords=read["--keywords"], jacobian_prompts=read["--jacobian-prompts"],
                         prompt_format=prompt_format)


def load_task(spec: str = "sentiment", *, desired=None, undesired=None, prompts=None,
              keywords=None, jacobian_prompts=None, prompt_format: str | None = None) -> Task:
    """Resolve a task specification.

    Parameters
    ----------
    spec : str
        ``"sentiment"``; ``"concept:NAME"`` (a built-in concept, :func:`builtin_concepts`);
        ``"concept"`` with ``desired``/``undesired`` files (:func:`load_concept_files`);
        ``"concept:A+concept:B"`` (several built-in concepts steered at once; ``"concept:A+B"``
        is accepted too).
    desired, undesired, prompts, keywords, jacobian_prompts : path, optional
        Files of a user concept (only with ``spec="concept"``, or ``"concept:NAME"`` to name it).
        ``prompts`` / ``jacobian_prompts`` may also replace a built-in task's prompts.
    prompt_format : {"raw", "chat", "auto"}, optional
        Default: ``"raw"`` for sentiment, ``"auto"`` for concepts (the chat template when the
        tokenizer has one).

    Raises
    ------
    ArgumentError
        Unknown task or concept, or files given where they do not apply.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ArgumentError(f"task must be a non-empty str, found {spec!r}")
    spec = spec.strip()
    if desired is not None or undesired is not None:
        if spec != "concept" and not (spec.startswith("concept:") and "+" not in spec):
            raise ArgumentError(f"--desired/--undesired define a user concept: use --task concept "
                                f"(or concept:NAME to name it), found --task {spec!r}")
        if desired is None:
            raise ArgumentError("--desired FILE is required with --undesired FILE")
        return load_concept_files(desired, undesired, prompts=prompts, keywords=keywords,
                                  jacobian_prompts=jacobian_prompts,
                                  name=spec if spec != "concept" else None,
                                  prompt_format=prompt_format or "auto")
    if keywords is not None and spec == "sentiment":
        raise ArgumentError("--keywords applies to concept tasks, not to 'sentiment'")
    if spec == "sentiment":
        task = _sentiment_task(prompt_format or "raw")
    elif spec == "concept":
        raise ArgumentError("--task concept needs --desired FILE and --undesired FILE "
                            f"(or a built-in concept: {[f'concept:{c}' for c in builtin_concepts()]})")
    elif spec.startswith("concept:"):
        names = [p.strip() for p in spec[len("concept:"):].split("+")]
        names = [n[len("concept:"):] if n.startswith("concept:") else n for n in names]
        if not all(names):
            raise ArgumentError(f"malformed task {spec!r}; expected concept:A or concept:A+concept:B")
        parts = [_builtin_concept(n, prompt_format or "auto") for n in names]
        task = parts[0] if len(parts) == 1 else _multi_task(parts)
    else:
        raise ArgumentError(f"unknown task {spec!r}; expected 'sentiment', 'concept:NAME' "
                            f"(NAME in {list(builtin_concepts())}), 'concept:A+concept:B' or "
                            "'concept' with --desired/--undesired files")
    if keywords is not None:
        task = replace(task, keywords=tuple(k.lower() for k in read_items(keywords, "--keywords")))
    if prompts is not None:
        task = replace(task, eval_prompts=read_items(prompts, "--prompts"))
    if jacobian_prompts is not None:
        task = replace(task, jacobian_prompts=read_items(jacobian_prompts, "--jacobian-prompts"))
    return task


def settings_overrides(task, *, quick: bool = False) -> dict:
    """ExperimentSettings fields a task changes from the sentiment defaults.

    Concept tasks run ``unsteered``, ActAdd, S-PID and A-LQR (plus ``alqr_multi`` for several
    concepts) at ``λ = 1.5`` with the sweeps ``alqr``/``alqr_multi`` 0.5, 1, 1.5, 2; ActAdd
    coeff 4, 8; S-PID 1.5 on 32 prompts, 20 new tokens.  ``quick``: 12 prompts, 16 new tokens,
    32 fitting sentences per side, one Jacobian prompt of 10 tokens, unsteered and A-LQR at
    λ = 1 and 2 (and ``alqr_multi`` for several concepts).  Sentiment: no change (``{}``).

    Returns
    -------
    dict
        Keyword arguments for ``ExperimentSettings`` (``decoding`` as a dict of Decoding fields).
    """
    if getattr(task, "kind", "sentiment") != "concept":
        return {}
    multi = bool(task.components)
    if quick:
        methods = ("unsteered", "alqr") + (("alqr_multi",) if multi else ())
        return {"methods": methods, "lam": 2.0, "n_fit": 32, "n_eval": 12, "n_jacobian": 1,
                "max_jacobian_tokens": 10, "decoding": {"max_new_tokens": 16},
                "sweep": {"alqr": [1.0, 2.0], "alqr_multi": [1.0, 2.0]}}
    methods = ("unsteered", "actadd", "pid", "alqr") + (("alqr_multi",) if multi else ())
    return {"methods": methods, "lam": 1.5, "n_eval": 32, "decoding": {"max_new_tokens": 20},
            "sweep": {"alqr": [0.5, 1.0, 1.5, 2.0], "alqr_multi": [0.5, 1.0, 1.5, 2.0],
                      "actadd": [4.0, 8.0], "pid": [1.5], "alqr_plus": [1.5],
                      "constrained": [1.5]}}
