"""Instructions: turn a record into the edit request the editor sees.

InstructEdit prepends a task instruction to each edit::

    Task: {task}
    Description: {description}
    Input: {input}

Each task has a pool of descriptions (``resources/instructions.json``, written for this project): *seen* ones, which
training draws from, and *held-out* ones (five per task, as the paper constructs five unseen instructions for its
Fig. 3), which no editor is trained with, so evaluation can test instructions the editor never saw. ConvSent
descriptions carry ``[LABEL]`` and ``[TOPIC]`` slots filled from every record (target sentiment and topic); a slot
left unfilled is an error, never silently passed on.
"""
from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from .records import EditRecord, Probe
from ..util.runs import atomic_write_text
import pandas as pd

SLOTS = {"[LABEL]": "target_sentiment", "[TOPIC]": "topic"}
_UNFILLED = re.compile(r"\[(LABEL|TOPIC)\]")
#: the slots each task's records can fill (other tasks' records have no topic or sentiment)
TASK_SLOTS = {"convsent": frozenset(SLOTS)}


@dataclass(frozen=True)
class InstructionPool:
    """Template, task display names and descriptions per task: ``descriptions[task]`` holds the seen ones followed
    by the ``held_out[task]`` last ones (default: one), never used in training."""

    template: str
    names: dict[str, str]
    descriptions: dict[str, tuple[str, ...]]
    held_out_counts: dict[str, int] | None = None  # held-out descriptions at the end of each task's tuple (None: 1)

    def __post_init__(self):
        for slot in ("{task}", "{description}", "{input}"):
            if slot not in self.template:
                raise ValueError(f"Instruction template lacks {slot}: {self.template!r}")
        for task, descs in self.descriptions.items():
            held = self.n_held_out(task)
            if held < 1 or len(descs) - held < 1:
                raise ValueError(f"Task {task!r} needs at least one seen and one held-out description, got "
                                 f"{len(descs) - held} seen and {held} held out")
            if task not in self.names:
                raise ValueError(f"Task {task!r} has descriptions but no display name")

    def n_held_out(self, task: str) -> int:
        return (self.held_out_counts or {}).get(task, 1)

    @classmethod
    def from_file(cls, path: str | Path) -> "InstructionPool":
        """Read a pool from JSON: ``{"template": ..., "tasks": {task: {"name": ..., "descriptions": [...],
        "held_out": [...]}}}``; without ``held_out`` the last description is the held-out one."""
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        try:
            tasks = raw["tasks"]
            return cls(
                template=raw["template"],
                names={t: v["name"] for t, v in tasks.items()},
                descriptions={t: tuple(v["descriptions"]) + tuple(v.get("held_out", ())) for t, v in tasks.items()},
                held_out_counts={t: len(v["held_out"]) for t, v in tasks.items() if "held_out" in v} or None,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not an instruction pool file ({exc!r})") from None

    def to_dict(self, comment: str | None = None) -> dict[str, Any]:
        """The pool in the resource file's format (:meth:`from_file` reads it back)."""
        head = {"_comment": comment} if comment else {}
        return {**head, "template": self.template,
                "tasks": {t: {"name": self.names[t], "descriptions": list(self.seen(t)),
                              "held_out": list(self.held_out(t))} for t in self.descriptions}}

    def write(self, path: str | Path, comment: str | None = None) -> Path:
        """Write the pool as a resource file (atomically: a temporary file, then a rename)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(comment), indent=2, ensure_ascii=False) + "\n")
        return path

    def _task(self, task: str) -> tuple[str, ...]:
        try:
            return self.descriptions[task]
        except KeyError:
            raise KeyError(f"No descriptions for task {task!r}; known: {list(self.descriptions)}") from None

    def seen(self, task: str) -> tuple[str, ...]:
        """Descriptions used in training."""
        return self._task(task)[:-self.n_held_out(task)]

    def held_out(self, task: str) -> tuple[str, ...]:
        """Descriptions never used in training."""
        return self._task(task)[-self.n_held_out(task):]

    def replace_seen(self, task: str, seen: Sequence[str]) -> "InstructionPool":
        """This pool with ``task``'s seen descriptions replaced (its held-out ones kept)."""
        descriptions = {**self.descriptions, task: (*seen, *self.held_out(task))}
        counts = {t: self.n_held_out(t) for t in self.descriptions}
        return InstructionPool(self.template, dict(self.names), descriptions, counts)


@functools.lru_cache(maxsize=1)
def default_pool() -> InstructionPool:
    """The pool shipped with the package."""
    with resources.as_file(resources.files("instructedit_utils") / "resources" / "instructions.json") as path:
        return InstructionPool.from_file(path)


def load_pool(path: str | Path | None = None) -> InstructionPool:
    """The pool in ``path`` (a file in the resource format, e.g. one written by the instruction search), or the
    package's pool when ``path`` is None."""
    if path is None:
        return default_pool()
    if not Path(path).is_file():
        raise FileNotFoundError(f"No instruction pool file {path}")
    stat = Path(path).stat()
    return _read_pool(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_pool(path: str, mtime_ns: int, size: int) -> InstructionPool:
    """A pool file read and checked once per version of the file (the pool is immutable, so callers share it: the
    configs, the trainer and the harness ask for it many times)."""
    pool = InstructionPool.from_file(path)
    for task, descs in pool.descriptions.items():
        for i, text in enumerate(descs):
            _check_description(text, task, f"{path}: {task} description {i}")
    return pool


def fill_slots(description: str, record: EditRecord) -> str:
    """Fill ``[LABEL]``/``[TOPIC]`` from the record; error if a slot cannot be filled."""
    text = description
    for slot, attr in SLOTS.items():
        if slot in text:
            value = getattr(record, attr)
            if not value:
                raise ValueError(f"Description needs {slot} but record {record.record_id} has no {attr}")
            text = text.replace(slot, value)
    if _UNFILLED.search(text):
        raise ValueError(f"Unfilled slot left in description for {record.record_id}: {text!r}")
    return text


def format_instruction(task_name: str, description: str, text: str, template: str | None = None) -> str:
    """``Task: {task}\\nDescription: {description}\\nInput: {input}``."""
    template = template or default_pool().template
    return template.format(task=task_name, description=description, input=text)


@dataclass(frozen=True)
class EditRequest:
    """What an editor and the metrics see for one record: prompts (instructed or not) and expected answers."""

    record: EditRecord
    prompt: str
    target: str
    rephrases: tuple[str, ...]
    locality: tuple[Probe, ...]
    portability: tuple[Probe, ...]
    description: str | None = None  # filled description used (None: instructions off)
    description_index: int | None = None  # index in the task's pool; None for an external/free text

    @property
    def case_id(self) -> str:
        return self.record.record_id

    @property
    def header(self) -> str:
        """The instruction text before the record's own prompt (empty with instructions off)."""
        if self.description is None or not self.prompt.endswith(self.record.prompt):
            return ""
        return self.prompt[:len(self.prompt) - len(self.record.prompt)]

    @property
    def task(self) -> str:
        return self.record.task


def choose_description(task: str, pool: InstructionPool, description: int | str | None = None,
                       rng: random.Random | None = None) -> tuple[str, int | None]:
    """Pick a description: ``None`` → a random *seen* one (``rng``, else the first), ``"held_out"`` → a random
    held-out one (``rng``, else the first held-out), an ``int`` → that index, any other string → used verbatim
    (external descriptions)."""
    descs = pool._task(task)
    seen, held = len(descs) - pool.n_held_out(task), pool.n_held_out(task)
    if description is None:
        idx = rng.randrange(seen) if rng is not None else 0
    elif description == "held_out":
        idx = seen + (rng.randrange(held) if rng is not None else 0)
    elif isinstance(description, int):
        if not -len(descs) <= description < len(descs):
            raise IndexError(f"Task {task!r} has {len(descs)} descriptions, no index {description}")
        idx = description % len(descs)
    else:
        return description, None
    return descs[idx], idx


def make_edit_request(record: EditRecord, *, instructions: bool = True, description: int | str | None = None,
                      rng: random.Random | None = None, instruct_locality: bool = False,
                      pool: InstructionPool | None = None) -> EditRequest:
    """Turn a record into an :class:`EditRequest`.

    With ``instructions`` on, the edit prompt, rephrases and portability prompts are wrapped in the instruction
    template (and locality prompts too when ``instruct_locality``). See :func:`choose_description` for
    ``description``/``rng``.
    """
    if not instructions:
        return EditRequest(record, record.prompt, record.target_new, record.rephrases, record.locality,
                           record.portability)
    pool = pool or default_pool()
    raw, idx = choose_description(record.task, pool, description, rng)
    filled = fill_slots(raw, record)
    name = pool.names[record.task]

    def wrap(text: str) -> str:
        return format_instruction(name, filled, text, pool.template)

    def wrap_probes(probes: tuple[Probe, ...]) -> tuple[Probe, ...]:
        return tuple(Probe(wrap(p.prompt), p.answers, p.kind) for p in probes)

    return EditRequest(
        record=record,
        prompt=wrap(record.prompt),
        target=record.target_new,
        rephrases=tuple(wrap(r) for r in record.rephrases),
        locality=wrap_probes(record.locality) if instruct_locality else record.locality,
        portability=wrap_probes(record.portability),
        description=filled,
        description_index=idx,
    )


def pool_table(pool: InstructionPool | None = None) -> "pd.DataFrame":
    """The description pool as a table (task, index, role seen/held-out, description)."""
    pool = pool or default_pool()
    rows = []
    for task, descs in pool.descriptions.items():
        n_seen = len(pool.seen(task))
        for i, d in enumerate(descs):
            rows.append({"task": task, "index": i, "role": "held-out" if i >= n_seen else "seen", "description": d})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# External descriptions (the unseen-instruction setting)
# --------------------------------------------------------------------------------------------------------------------


def _check_description(text: Any, task: str, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: a description must be a non-empty string, got {text!r}")
    unfillable = {f"[{slot}]" for slot in _UNFILLED.findall(text)} - TASK_SLOTS.get(task, frozenset())
    if unfillable:
        raise ValueError(f"{where}: {sorted(unfillable)} cannot be filled from {task!r} records "
                         f"(slots exist for: {', '.join(f'{t} {sorted(s)}' for t, s in TASK_SLOTS.items())})")
    return text.strip()


def read_descriptions(path: str | Path, tasks: Sequence[str]) -> dict[str, list[str]]:
    """External descriptions, validated: JSON ``{task: [description, ...]}`` (tasks among ``tasks``), an instruction
    pool file (:meth:`InstructionPool.write`; its seen descriptions) or a text file with one description per line
    (used for every task). ``[LABEL]``/``[TOPIC]`` slots are filled per record, so
    they may appear only for tasks whose records have them (ConvSent). Every error names the file and the
    offending key, entry or line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No descriptions file {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object {{task: [description, ...]}}, got "
                             f"{type(raw).__name__}")
        if "template" in raw and "tasks" in raw:  # an instruction pool (resource format): its seen descriptions
            pool = load_pool(path)
            if pool.template != default_pool().template:
                raise ValueError(f"{path}: an instruction pool with another template; external descriptions are "
                                 f"tested in the package's template (use the pool as instructions_file instead)")
            return {t: list(pool.seen(t)) if t in pool.descriptions else [] for t in tasks}
        out: dict[str, list[str]] = {t: [] for t in tasks}
        for key, value in raw.items():
            if key not in tasks:
                raise ValueError(f"{path}: key {key!r} is not a task evaluated here (tasks: {list(tasks)})")
            if not isinstance(value, list) or not value:
                raise ValueError(f"{path}: {key!r} must be a non-empty list of descriptions, got {value!r}")
            out[key] = [_check_description(d, key, f"{path}: {key}[{i}]") for i, d in enumerate(value)]
        return out
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no descriptions (one per line)")
    for n, line in lines:
        for task in tasks:
            _check_description(line, task, f"{path} line {n} (used for every task)")
    return {t: [line for _, line in lines] for t in tasks}
