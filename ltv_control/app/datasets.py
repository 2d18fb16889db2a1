"""The sentiment steering task shipped with ltv-control.

The four text files in :mod:`ltv_control.app.data` were written for this project (see
``docs/data.md``): parallel positive/negative sentences for fitting a steering controller,
neutral prompt openings for evaluation that appear in no fitting set, and neutral-ish prompts
for linearizing the model.  They are read with :mod:`importlib.resources`, so they work from
an installed wheel as well as from a source checkout.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ltv_control import ArgumentError, PropertyError

__all__ = ["SentimentTask", "load_sentiment_task", "read_lines"]

_FILES = {
    "desired": "desired.txt",
    "undesired": "undesired.txt",
    "eval_prompts": "eval_prompts.txt",
    "jacobian_prompts": "jacobian_prompts.txt",
}


@dataclass(frozen=True)
class SentimentTask:
    """Contrastive sentiment data: steer continuations from negative to positive.

    Attributes
    ----------
    desired : tuple of str
        Short positive sentences (the behaviour to steer towards).
    undesired : tuple of str
        Short negative sentences, roughly parallel in topic and length to ``desired``.
    eval_prompts : tuple of str
        Neutral prompt openings used only for evaluation (disjoint from the fitting sets).
    jacobian_prompts : tuple of str
        Neutral-ish prompts used to linearize the model (``LLMPlant.linearize``).
    """

    desired: tuple[str, ...]
    undesired: tuple[str, ...]
    eval_prompts: tuple[str, ...]
    jacobian_prompts: tuple[str, ...]

    def subset(self, *, n_fit: int | None = None, n_eval: int | None = None,
               n_jacobian: int | None = None) -> SentimentTask:
        """Return a task with the first ``n_fit`` fitting pairs, ``n_eval`` evaluation prompts and
        ``n_jacobian`` Jacobian prompts (``None`` keeps all)."""
        for name, value in (("n_fit", n_fit), ("n_eval", n_eval), ("n_jacobian", n_jacobian)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise PropertyError(f"{name} must be a positive int or None, found {value!r}")
        return SentimentTask(
            desired=self.desired[:n_fit],
            undesired=self.undesired[:n_fit],
            eval_prompts=self.eval_prompts[:n_eval],
            jacobian_prompts=self.jacobian_prompts[:n_jacobian],
        )


def read_lines(source: str | Path) -> tuple[str, ...]:
    """Read one text per line from ``source``, dropping blank lines and surrounding whitespace.

    Parameters
    ----------
    source : str or Path
        A UTF-8 text file.

    Returns
    -------
    tuple of str

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    PropertyError
        If the file holds no non-blank line.
    """
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    lines = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    lines = tuple(line for line in lines if line)
    if not lines:
        raise PropertyError(f"{str(path)!r} holds no non-blank line")
    return lines


def _read_packaged(name: str) -> tuple[str, ...]:
    text = resources.files("ltv_control.app.data").joinpath(name).read_text(encoding="utf-8")
    return tuple(s for s in (line.strip() for line in text.splitlines()) if s)


def load_sentiment_task(**kwargs) -> SentimentTask:
    """Load the packaged sentiment task (negative → positive).

    Returns
    -------
    SentimentTask
        216 positive/negative pairs (line ``i`` of ``desired`` and ``undesired`` share a topic),
        66 evaluation prompt openings, 50 Jacobian prompts.
    """
    if kwargs:
        raise ArgumentError(f"load_sentiment_task() takes no arguments, found {sorted(kwargs)}")
    return SentimentTask(**{field: _read_packaged(name) for field, name in _FILES.items()})
