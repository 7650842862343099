"""Benchmark of the scoring the chapters spend their evaluation time on, before/after each batching step.

* ``unedited``: chapter 1's Base scoring (:func:`~instructedit_utils.evaluation.evaluate_unedited`, chapter 1's
  30-token Fluency generations) one request at a time (``batch_size=1``: every prompt and every generation alone)
  vs the harness's shared batches (``batch_size=16``, left-padded batched generation with a KV cache);
* ``edited``: chapter 3's per-edit evaluation of a trained editor (:func:`~instructedit_utils.evaluation.
  evaluate_method`, 20-token Fluency) with each edited model generating alone vs the chunk's edited models
  generating in one batch (per-row weight deltas, ``batch_generation``);
* ``shared``: Base + that editor evaluated into one run folder without and with the unedited scores shared
  between them (``shared``; Base is never scored twice either way).

Each pair is checked for equal metrics (and generations). Prints one JSON object and a readable line per pair.
Not a test: run it by hand (alone on the machine)::

    python benchmarks/bench_scoring.py --editor runs/cpu/02_editor_training/mend --records 6
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

from common import add_model_arguments, load_frozen_model

KEYS = ("edit/acc", "gen/acc", "loc/acc", "port/acc", "sentiment/success", "fluency/empty", "fluency/entropy",
        "base/edit/acc")


def _compare(a: list[dict], b: list[dict]) -> dict[str, int]:
    mismatches = sum(1 for x, y in zip(a, b) for k in KEYS if k in x and abs((x[k] or 0) - (y.get(k) or 0)) > 1e-6)
    same_text = sum(x.get("generation") == y.get("generation") for x, y in zip(a, b))
    return {"metric_mismatches": mismatches, "identical_generations": same_text, "cases": len(a)}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ["counterfact", "recent", "convsent"], 6)
    parser.add_argument("--editor", required=True, help="folder of a trained editor (MEND, InstructEdit or KE)")
    parser.add_argument("--base-tokens", type=int, default=30, help="chapter 1's Fluency length")
    parser.add_argument("--edit-tokens", type=int, default=20, help="chapter 3's Fluency length")
    args = parser.parse_args()

    from instructedit_utils import methods as baselines
    from instructedit_utils.evaluation.harness import evaluate_method, evaluate_unedited
    from instructedit_utils.evaluation.requests import task_requests
    from instructedit_utils.util import RunFolder

    model, tok = load_frozen_model(args)
    kw = dict(max_rephrases=3, max_probes=3, max_aliases=1, sentiment_responses=4)
    plain = task_requests(args.tasks, "test", args.records, seed=args.seed, instructions=False)
    out: dict = {"model": args.model, "editor": args.editor, "threads": args.threads, "records": len(plain)}

    one, t_one = _timed(lambda: evaluate_unedited(model, tok, plain, batch_size=1,
                                                  fluency_max_new_tokens=args.base_tokens, **kw))
    many, t_many = _timed(lambda: evaluate_unedited(model, tok, plain, batch_size=16,
                                                    fluency_max_new_tokens=args.base_tokens, **kw))
    out["unedited"] = {"one_by_one_s": t_one, "batched_s": t_many, "speedup": t_one / t_many, **_compare(one, many)}

    method = baselines.build("mend", model, tok, editor_dir=args.editor)
    requests = task_requests(args.tasks, "test", args.records, seed=args.seed, instructions=method.use_instructions)
    ekw = dict(kw, fluency_max_new_tokens=args.edit_tokens, batch_size=16)
    alone, t_alone = _timed(lambda: evaluate_method(method, model, tok, requests, batch_generation=False, **ekw))
    batched, t_batched = _timed(lambda: evaluate_method(method, model, tok, requests, batch_generation=True, **ekw))
    out["edited"] = {"one_by_one_s": t_alone, "batched_s": t_batched, "speedup": t_alone / t_batched,
                     **_compare(alone, batched)}

    base = baselines.build("base", model, tok, use_instructions=method.use_instructions)
    times, editor_cases = {}, {}
    for shared in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            run = RunFolder(tmp)
            t0 = time.perf_counter()
            for m in (base, method):
                editor_cases[shared] = evaluate_method(m, model, tok, requests, run=run, shared=shared, **ekw)
            times[shared] = time.perf_counter() - t0
    out["shared"] = {"separate_s": times[False], "shared_s": times[True], "speedup": times[False] / times[True],
                     **_compare(editor_cases[False], editor_cases[True])}
    print(json.dumps(out))
    for name, r in out.items():
        if isinstance(r, dict):
            before, after = list(r.values())[:2]
            print(f"{name}: {before:.1f} s -> {after:.1f} s ({r['speedup']:.2f}x) on {r['cases']} cases; "
                  f"metric mismatches {r['metric_mismatches']}, identical generations {r['identical_generations']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
