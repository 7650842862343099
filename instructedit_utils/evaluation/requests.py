"""Edit requests for the harness: a seeded sample of a task's records turned into instructed or plain requests
(:func:`task_requests`, :func:`build_requests`), and a digest of everything a set of requests scores
(:func:`requests_digest`), which case files record."""
from __future__ import annotations

import hashlib
import json
import random
from typing import Mapping, Sequence

from ..data.instructions import EditRequest, make_edit_request
from ..data.records import EditRecord
from ..data.tasks import load_task, sample

def build_requests(records: Sequence[EditRecord], *, instructions: bool, description: int | str | None = None,
                   seed: int = 0, instruct_locality: bool = False, pool=None) -> list[EditRequest]:
    """Edit requests for records; with ``description=None`` each record draws a seen description (seeded)."""
    rng = random.Random(seed)
    return [make_edit_request(r, instructions=instructions, description=description, rng=rng,
                              instruct_locality=instruct_locality, pool=pool) for r in records]




def requests_digest(requests: Sequence[EditRequest]) -> str:
    """Digest of everything scored for ``requests``: ids, (instructed) prompts, targets, rephrases, probes, ConvSent
    responses, in order. Any change of data, sample, seed, description or instruction flag changes it."""
    digest = hashlib.sha256()
    for r in requests:
        item = [r.case_id, r.prompt, r.target, list(r.rephrases),
                [[p.prompt, list(p.answers)] for p in r.locality], [[p.prompt, list(p.answers)] for p in r.portability],
                list(r.record.target_responses), list(r.record.opposite_responses)]
        digest.update(json.dumps(item, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def task_requests(tasks: Sequence[str], split: str | Mapping[str, str], n: int | None, *, seed: int,
                  instructions: bool, data_dir=None, instruct_locality: bool = False,
                  description: int | str | None = None, pool=None) -> list[EditRequest]:
    """A deterministic sample of ``n`` records per task turned into edit requests (``split``: one for all tasks or
    one per task; ``description``: see :func:`~instructedit_utils.data.instructions.choose_description`; default a
    seeded random seen one per record)."""
    out: list[EditRequest] = []
    for task in tasks:
        recs = sample(load_task(task, split if isinstance(split, str) else split[task], data_dir), n, seed)
        out += build_requests(recs, instructions=instructions, seed=seed, instruct_locality=instruct_locality,
                              description=description, pool=pool)
    return out
