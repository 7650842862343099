"""The configurations of the book's studies beyond the main comparison: chapter 6's editing-gradient analysis
(:class:`GradientConfig`), chapter 7's training mixtures (:class:`MixtureConfig`, with the paper's training-set sizes),
chapter 5's instruction search (:class:`SearchConfig`) and the chapter on edits that must last
(:class:`SequenceConfig`: sequential and batch editing)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from ..data import paper
from ..data.tasks import task_spec

@dataclass
class GradientConfig:
    """How editing gradients ("editing areas", chapter 6) are collected and analysed.

    Each edit's transformed gradient ``G̃ = Σ_t δ̃_t ũ_tᵀ`` of an edited matrix is stored as a seeded random sketch of
    ``sketch_dim`` numbers (entries of ``G̃`` rotated on both sides by random signs and a Walsh–Hadamard transform, at
    random positions: inner products of ``G̃`` are kept in expectation, computed from the factors without forming
    ``G̃``) plus its exact Frobenius norm; see :mod:`instructedit_utils.evaluation.gradients`.
    """

    sketch_dim: int = 2048  # random features per edited matrix
    sketch_seed: int = 0
    matrices: tuple[str, ...] | None = None  # edited matrices whose areas are analysed (None: all of them)
    single_task: bool = True  # also the single-task editors of chapter 4 (each task through its own editor)
    # also each editor of `methods` as its training started (step 0): what the instruction text alone separates,
    # Finding 1's control
    untrained_control: bool = True
    edit_batch: int = 16  # edits whose gradients one batched forward/backward pass computes
    tsne_perplexity: float = 30.0
    knn: int = 10  # neighbours for the k-nearest-neighbour task purity
    n_boot: int = 1000  # bootstrap resamples of records for the CIs
    n_permutations: int = 200  # label permutations for the "no separation" control

    def __post_init__(self):
        for name in ("sketch_dim", "edit_batch", "knn", "n_boot", "n_permutations"):
            if getattr(self, name) < 1:
                raise ValueError(f"GradientConfig.{name} must be >= 1")
        if not self.tsne_perplexity > 0:
            raise ValueError("GradientConfig.tsne_perplexity must be > 0")
        if self.matrices is not None:
            self.matrices = tuple(self.matrices)
            if not self.matrices:
                raise ValueError("GradientConfig.matrices is empty (None: every edited matrix)")


#: Training-set sizes of the paper's tasks (records; KnowEdit's dataset table, which the paper's text does not print:
#: :func:`instructedit_utils.data.paper.train_sizes`). Drawn in these proportions, ConvSent is most of the training
#: edits: the "ConvSent-dominated" mixture of the paper's Fig. 4d.
PAPER_TRAIN_SIZES = paper.train_sizes()
#: The paper's balanced training set (Fig. 4d): Recent and CounterFact whole, ConvSent cut to the size the caption
#: gives (:func:`instructedit_utils.data.paper.balanced_sizes`).
PAPER_BALANCED_SIZES = paper.balanced_sizes()


@dataclass
class MixtureConfig:
    """Chapter 7's training mixtures (paper Fig. 4b-d): which editors are trained to test task scaling and balance.

    * **Task scaling**: InstructEdit and MEND editors trained on the first 1, 2, ... tasks of :attr:`scaling_order`
      (uniform task weights), one per seed of :attr:`scaling_seeds`.
    * **Balance**: InstructEdit on all training tasks with tasks drawn in proportion to :attr:`dominant_weights`
      (default: the paper's training-set sizes, ConvSent-dominated) against tasks drawn in proportion to
      :attr:`balanced_weights` (default: the paper's balanced set, Fig. 4d), one pair per seed of
      :attr:`balance_seeds`; and the uniform mixture (the book's default) for each seed of :attr:`uniform_seeds`.

    Every mixture editor has the multi-task hyperparameters and :attr:`mixture_steps` steps (None: the multi-task
    budget). An editor whose training config another editor of chapter 2 already has is not trained twice; one that
    differs from a longer run only in its budget is that run's best editor at the budget (``keep_best_at``).
    """

    scaling_order: tuple[str, ...] = ("recent", "counterfact", "convsent")  # tasks added one at a time (Fig. 4c)
    scaling_seeds: tuple[int, ...] = (0,)
    dominant_weights: dict[str, float] | None = None  # None: PAPER_TRAIN_SIZES
    balanced_weights: dict[str, float] | None = None  # None: PAPER_BALANCED_SIZES
    balance_seeds: tuple[int, ...] = (0,)
    uniform_seeds: tuple[int, ...] | None = None  # seeds of the uniform arm (None: balance_seeds)
    mixture_steps: int | None = None  # steps of every mixture editor (None: the multi-task budget)

    def __post_init__(self):
        self.scaling_order = tuple(self.scaling_order)
        if not self.scaling_order or len(set(self.scaling_order)) != len(self.scaling_order):
            raise ValueError(f"MixtureConfig.scaling_order must name distinct tasks, got {self.scaling_order}")
        if self.uniform_seeds is None:
            self.uniform_seeds = self.balance_seeds
        for name in ("scaling_seeds", "balance_seeds", "uniform_seeds"):
            seeds = tuple(int(s) for s in getattr(self, name))
            if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
                raise ValueError(f"MixtureConfig.{name} must be distinct seeds >= 0, got {seeds}")
            setattr(self, name, seeds)
        for name in ("dominant_weights", "balanced_weights"):
            if getattr(self, name) is not None:
                setattr(self, name, {str(k): float(v) for k, v in getattr(self, name).items()})
        for name, weights in (("dominant_weights", self.weights()), ("balanced_weights", self.balanced())):
            if any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError(f"MixtureConfig.{name} must be >= 0 and not all zero, got {weights}")
        if self.mixture_steps is not None and self.mixture_steps < 1:
            raise ValueError("MixtureConfig.mixture_steps must be >= 1 or None")

    def weights(self) -> dict[str, float]:
        """The ConvSent-dominated mixture's task weights."""
        return dict(self.dominant_weights if self.dominant_weights is not None else PAPER_TRAIN_SIZES)

    def balanced(self) -> dict[str, float]:
        """The balanced mixture's task weights."""
        return dict(self.balanced_weights if self.balanced_weights is not None else PAPER_BALANCED_SIZES)

    def check_tasks(self, train_tasks: Sequence[str]) -> None:
        """Every task named here must be a training task of the editors."""
        for what, tasks in (("scaling_order", self.scaling_order), ("dominant_weights", self.weights()),
                            ("balanced_weights", self.balanced())):
            unknown = [t for t in tasks if t not in train_tasks]
            if unknown:
                raise ValueError(f"MixtureConfig.{what} names task(s) {unknown} that are not training tasks "
                                 f"{list(train_tasks)}")
        for what, own, paper_sizes in (("dominant_weights", self.dominant_weights, PAPER_TRAIN_SIZES),
                                       ("balanced_weights", self.balanced_weights, PAPER_BALANCED_SIZES)):
            missing = [t for t in train_tasks if t not in paper_sizes]
            if own is None and missing:
                raise ValueError(f"No paper training-set size for {missing}: give {what}")


GENERATORS = ("local", "endpoint")
SEARCH_METRICS = ("edit/acc", "gen/acc", "loc/acc", "port/acc", "sentiment/success")


@dataclass
class SearchConfig:
    """Chapter 5's instruction search (paper Fig. 2): a generator proposes descriptions, filters reject some with a
    reason, a trial editor scores the rest on a fixed validation sample, the best ``pool_size`` per task form the
    pool; rounds stop when the pool's score stops improving. See :mod:`instructedit_utils.search.loop`.

    The endpoint's base URL and model may also come from ``$INSTRUCTEDIT_LLM_BASE_URL`` and
    ``$INSTRUCTEDIT_LLM_MODEL``; its key only from ``$INSTRUCTEDIT_LLM_API_KEY`` (or ``$OPENAI_API_KEY``), so that
    it never lands in a run folder.
    """

    search_tasks: tuple[str, ...] = ("counterfact", "recent", "convsent")  # tasks whose descriptions are searched
    generator: str = "local"  # "local": the embedded chat model; "endpoint": an OpenAI-compatible chat endpoint
    generator_model: str | None = None  # local: a model preset (None: the experiment's); endpoint: its model name
    endpoint_url: str | None = None  # base URL, e.g. http://127.0.0.1:8000/v1 (None: $INSTRUCTEDIT_LLM_BASE_URL)
    endpoint_timeout: float = 60.0  # seconds per request
    endpoint_retries: int = 4  # further tries after a timeout, a refused connection, HTTP 429 or 5xx
    endpoint_backoff: float = 2.0  # seconds before the first retry, doubled each time (or the server's Retry-After)
    samples_per_round: int = 6  # generator replies per task and round (a reply may hold several descriptions)
    gen_max_new_tokens: int = 48
    temperature: float = 0.9
    top_p: float = 0.95
    example_records: int = 2  # training records shown in the prompt
    feedback: int = 3  # best and worst scored descriptions shown in the prompt (each)
    min_words: int = 6
    max_words: int = 40
    max_similarity: float = 0.6  # word-bigram Jaccard similarity above which a candidate is a near-duplicate
    leak_ngram: int = 5  # a run of this many words shared with one test record is a leak
    val_records: int = 8  # validation records per task each candidate edits
    score_weights: dict[str, float] | None = None  # metric -> weight of the score (None: Rel, Gen, Loc equally)
    pool_size: int = 9  # seen descriptions kept per task (the hand-written held-out one stays last)
    max_rounds: int = 3  # generation rounds after round 0 (the hand-written pool scored)
    search_patience: int = 1  # rounds without improvement before stopping
    min_delta: float = 0.005  # improvement of the stopping statistic that counts
    stop_on: str = "mean"  # the statistic: the pool's "mean" score or its "best" description's, averaged over tasks
    finetune_steps: int = 0  # > 0: fine-tune the trial editor on the chosen pool for that many steps

    def __post_init__(self):
        self.search_tasks = tuple(self.search_tasks)
        if not self.search_tasks or len(set(self.search_tasks)) != len(self.search_tasks):
            raise ValueError(f"SearchConfig.search_tasks must name distinct tasks, got {self.search_tasks}")
        for task in self.search_tasks:
            if "val" not in task_spec(task).splits:
                raise ValueError(f"SearchConfig.search_tasks: {task!r} has no val split to score candidates on")
        if self.generator not in GENERATORS:
            raise ValueError(f"SearchConfig.generator must be one of {GENERATORS}, got {self.generator!r}")
        for name in ("samples_per_round", "gen_max_new_tokens", "example_records", "min_words", "leak_ngram",
                     "val_records", "pool_size", "max_rounds", "search_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchConfig.{name} must be >= 1")
        for name in ("feedback", "endpoint_retries", "finetune_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"SearchConfig.{name} must be >= 0")
        if self.max_words < self.min_words:
            raise ValueError(f"SearchConfig.max_words ({self.max_words}) < min_words ({self.min_words})")
        if not 0 < self.max_similarity <= 1:
            raise ValueError("SearchConfig.max_similarity must be in (0, 1]")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError("SearchConfig.temperature must be > 0 and top_p in (0, 1]")
        if not (self.endpoint_timeout > 0 and self.endpoint_backoff >= 0 and self.min_delta >= 0):
            raise ValueError("SearchConfig.endpoint_timeout must be > 0, endpoint_backoff and min_delta >= 0")
        if self.stop_on not in ("mean", "best"):
            raise ValueError(f"SearchConfig.stop_on must be 'mean' or 'best', got {self.stop_on!r}")
        weights = self.weights()
        unknown = set(weights) - set(SEARCH_METRICS)
        if unknown or any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"SearchConfig.score_weights must map metrics of {SEARCH_METRICS} to weights >= 0, "
                             f"not all 0; got {weights}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def weights(self) -> dict[str, float]:
        """The score's weights, summing to 1."""
        raw = {str(k): float(v) for k, v in (self.score_weights or {"edit/acc": 1, "gen/acc": 1, "loc/acc": 1}).items()}
        total = sum(raw.values())
        return {k: v / total for k, v in raw.items()} if total > 0 else raw


STREAM_SETTINGS = ("training", "holdout")


@dataclass
class SequenceConfig:
    """Sequential and batch editing (:mod:`instructedit_utils.experiments.sequential`).

    The records of a setting (``training``: the test records of the training tasks, interleaved in a seeded order;
    ``holdout``: the hold-out task's) number the largest of :attr:`stream_lengths`. For each length ``T`` they are
    cut into consecutive **streams** of ``T`` edits, each applied one after another to one model, so every length
    measures the same records (``T = 1``: each edit alone); the shorter lengths cover only the first
    :attr:`paired_records` of them (None: all), a multiple of each. Every stream is measured after its last edit; the
    longest also right after each edit and, over all its edits so far, at the checkpoints :attr:`stream_points`, where
    held-out text of the training tasks (:attr:`probe_records` validation records per task, prompt and true answer)
    gives the perplexity. One sample per seed of :attr:`stream_seeds`. **Batch editing**: the first
    ``max(batch_sizes)`` records of the training setting, edited in groups of each size of :attr:`batch_sizes` by each
    editor of :attr:`batch_methods`. Every length (size) must divide the largest one. :attr:`holdout_methods` limits
    the hold-out streams to some methods (the hold-out question is InstructEdit's against MEND's);
    :attr:`method_records` stops some methods' streams early (e.g. ``{"alphaedit": 10}``: streams of 1 and 10 edits
    over the first 10 records; their longest stream is the one of 10, with its checkpoints), for methods whose every
    edit costs an optimisation through most of the model."""

    stream_lengths: tuple[int, ...] = (1, 10, 100)
    stream_points: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
    stream_seeds: tuple[int, ...] = (0,)
    stream_settings: tuple[str, ...] = STREAM_SETTINGS
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64)
    batch_methods: tuple[str, ...] = ("mend", "instructedit")
    probe_records: int = 10
    paired_records: int | None = None
    holdout_methods: tuple[str, ...] | None = None  # methods with hold-out streams (None: every method)
    method_records: dict[str, int] | None = None  # methods whose streams stop at this many records (a stream length)

    def __post_init__(self):
        self.stream_lengths = _dividing(self.stream_lengths, "stream_lengths")
        if not self.stream_lengths:
            raise ValueError("SequenceConfig.stream_lengths needs at least one length")
        if self.paired_records is not None:
            bad = [t for t in self.stream_lengths[:-1] if self.paired_records % t]
            if not 1 <= self.paired_records <= self.records or bad:
                raise ValueError(f"SequenceConfig.paired_records must be in 1..{self.records} and a multiple of every "
                                 f"shorter stream length, got {self.paired_records} (lengths {bad})")
        self.batch_sizes = _dividing(self.batch_sizes, "batch_sizes")
        if self.batch_sizes and max(self.batch_sizes) > self.records:
            raise ValueError(f"SequenceConfig.batch_sizes: a batch of {max(self.batch_sizes)} needs as many records; "
                             f"the streams have {self.records}")
        if self.probe_records < 0:
            raise ValueError("SequenceConfig.probe_records must be >= 0")
        self.stream_points = tuple(int(p) for p in self.stream_points)
        if any(p < 1 for p in self.stream_points):
            raise ValueError(f"SequenceConfig.stream_points must be >= 1, got {self.stream_points}")
        self.stream_seeds = tuple(int(s) for s in self.stream_seeds)
        if not self.stream_seeds or len(set(self.stream_seeds)) != len(self.stream_seeds) or min(self.stream_seeds) < 0:
            raise ValueError(f"SequenceConfig.stream_seeds must be distinct seeds >= 0, got {self.stream_seeds}")
        self.stream_settings = tuple(self.stream_settings)
        unknown = [s for s in self.stream_settings if s not in STREAM_SETTINGS]
        if unknown or not self.stream_settings:
            raise ValueError(f"SequenceConfig.stream_settings must be among {STREAM_SETTINGS}, got {self.stream_settings}")
        self.batch_methods = tuple(self.batch_methods)
        if self.holdout_methods is not None:
            self.holdout_methods = tuple(self.holdout_methods)
        self.method_records = {k: int(v) for k, v in (self.method_records or {}).items()} or None
        for name, n in (self.method_records or {}).items():
            if n not in self.stream_lengths:
                raise ValueError(f"SequenceConfig.method_records: {name!r} stops at {n} records, which must be one of "
                                 f"the stream lengths {self.stream_lengths}")

    def streams_of(self, method: str, setting: str) -> bool:
        """Whether ``method`` edits the streams of ``setting``."""
        return setting != "holdout" or self.holdout_methods is None or method in self.holdout_methods

    @property
    def records(self) -> int:
        """Records per setting and seed: the longest stream's length."""
        return max(self.stream_lengths)

    def covered(self, length: int, method: str | None = None) -> int:
        """Records the streams of ``length`` cover: all for the longest, :attr:`paired_records` for the others; for a
        method of :attr:`method_records`, its records at every length."""
        cap = (self.method_records or {}).get(method)
        if cap is not None:
            return cap
        return self.records if length == self.records or self.paired_records is None else self.paired_records

    def lengths_of(self, method: str) -> tuple[int, ...]:
        """The stream lengths ``method`` edits: every one, or those up to its :attr:`method_records`."""
        cap = (self.method_records or {}).get(method)
        return tuple(t for t in self.stream_lengths if cap is None or t <= cap)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _dividing(values: Sequence[int], name: str) -> tuple[int, ...]:
    """Distinct sizes >= 1, each dividing the largest (so that every size covers the same records in whole groups)."""
    values = tuple(sorted({int(v) for v in values}))
    bad = [v for v in values if v < 1 or values[-1] % v]
    if bad:
        raise ValueError(f"SequenceConfig.{name} {bad} do not divide the largest, {values[-1]}: every size must cover "
                         "the same records in whole groups")
    return values
