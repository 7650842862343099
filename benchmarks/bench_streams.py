"""Benchmark of chapter 8's streams and batch edits: generating the ends of many edited models together vs one by
one, side by side in one process, with the edits alone as the floor.

For ``--records`` interleaved test records of the training tasks and a trained hypernetwork editor:

* ``edits``: the edits alone — ``--records`` streams of one edit, each computed and undone, nothing scored (the
  floor no evaluation can go below);
* ``streams one by one``: :func:`~instructedit_utils.evaluation.streams.evaluate_stream` per stream of one edit, each
  stream generating its natural-stop answers on its own model (batch of one); the unedited scores and lower states
  computed once and shared, as a chapter-8 job shares them;
* ``streams together``: :func:`~instructedit_utils.evaluation.streams.evaluate_streams` on the same streams: their
  edited models generate in shared batches;
* ``batches one group at a time`` / ``batches together``: batch edits of one fact (``k = 1``) scored a group per chunk
  vs ``batch_size`` groups per chunk.

The script checks that each pair gives the same natural-stop answers and the same teacher-forced metrics, and prints
seconds and ratios. Not a test: run it by hand, nothing else running::

    python benchmarks/bench_streams.py --editor runs/cpu/02_editor_training/mend --records 16
"""
from __future__ import annotations

import argparse
import json
import time

from common import add_model_arguments, load_frozen_model


def _same(a: list[dict], b: list[dict]) -> bool:
    """Natural-stop fields equal, teacher-forced ones within float rounding."""
    for x, y in zip(a, b):
        for key in set(x) | set(y):
            if "/" not in key or key.startswith("batch/"):
                continue
            u, v = x.get(key), y.get(key)
            if isinstance(u, float) and isinstance(v, float):
                if abs(u - v) > 1e-5:
                    return False
            elif u != v:
                return False
    return len(a) == len(b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ["counterfact", "recent", "convsent"], 6)
    parser.add_argument("--editor", required=True, help="folder of a trained editor (MEND or InstructEdit)")
    parser.add_argument("--natural-tokens", type=int, default=12)
    args = parser.parse_args()

    from instructedit_utils import methods as baselines
    from instructedit_utils.evaluation.requests import task_requests
    from instructedit_utils.evaluation.streams import (UneditedSubset, evaluate_batches, evaluate_stream,
                                                       evaluate_streams)

    model, tok = load_frozen_model(args)
    method = baselines.build("mend", model, tok, editor_dir=args.editor)
    requests = task_requests(args.tasks, "test", args.records, seed=args.seed, instructions=method.use_instructions)
    kw = dict(max_rephrases=1, max_probes=1, max_aliases=1, sentiment_responses=4,
              natural_max_new_tokens=args.natural_tokens, natural_rephrases=0, batch_size=16)

    def edits():
        for req in requests:
            with method.stream(model, tok) as stream:
                stream.add(req)
        return []

    def ends(rows):
        return [r for r in rows if r["when"] == "retention"]

    def shared():
        """What a chapter-8 job shares between its streams: the unedited scores and the lower states."""
        states: dict = {}
        return dict(unedited=UneditedSubset.of(None, requests, model, tok, method, kw, lower_states=states),
                    lower_states=states)

    def one_by_one():
        common = shared()
        return [r for req in requests for r in ends(evaluate_stream(method, model, tok, [req], points=(), **common,
                                                                    **kw))]

    def together():
        rows = evaluate_streams(method, model, tok, [[r] for r in requests], names=[r.case_id for r in requests],
                                points=(), **shared(), **kw)
        return [r for stream in rows for r in ends(stream)]

    runs = {
        "edits": edits,
        "streams one by one": one_by_one,
        "streams together": together,
        "batches one group at a time": lambda: evaluate_batches(method, model, tok, requests, (1,),
                                                                **{**kw, "batch_size": 1}),
        "batches together": lambda: evaluate_batches(method, model, tok, requests, (1,), **kw),
    }
    seconds, rows = {}, {}
    for name, fn in runs.items():
        start = time.perf_counter()
        rows[name] = fn()
        seconds[name] = time.perf_counter() - start
    out = {
        "records": len(requests), "threads": args.threads, "natural_tokens": args.natural_tokens,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "streams: one by one / together": round(seconds["streams one by one"] / seconds["streams together"], 2),
        "batches: one group at a time / together": round(seconds["batches one group at a time"]
                                                         / seconds["batches together"], 2),
        "streams together / edits alone": round(seconds["streams together"] / seconds["edits"], 2),
        "same streams": _same(rows["streams one by one"], rows["streams together"]),
        "same batches": _same(rows["batches one group at a time"], rows["batches together"]),
    }
    print(json.dumps(out, indent=1))
    return 0 if out["same streams"] and out["same batches"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
