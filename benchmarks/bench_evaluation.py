"""Benchmark of the evaluation harness: records per second, batched (the harness) vs one record at a time.

Three ways to get the same per-case metrics for ``--records`` test records per task with a trained editor:

* ``loop``: one record at a time, one forward pass per scored prompt (``batch_size=1``), the unedited reference
  scored per record too — how a straightforward evaluation loop (EasyEdit-style) works;
* ``batched``: :func:`~instructedit_utils.evaluation.evaluate_method` with ``split=False`` — unedited scores in
  shared batches per chunk, every prompt of one edited model in one batch;
* ``harness``: the default (``split=True``) — additionally the blocks below the first edited one run once per
  distinct prompt per chunk (edits never change them), only the edited blocks are replayed per edit.

Every way includes computing the edits. The script checks that all three give the same metrics and prints
records/s and the speed-up over ``loop`` (target ≥ 5×). Not a test: run it by hand or in a sweep::

    python benchmarks/bench_evaluation.py --editor runs/cpu/02_editor_training/instructedit
"""
from __future__ import annotations

import argparse
import json
import time

from common import add_model_arguments, load_frozen_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ["counterfact", "recent", "convsent"], 8)
    parser.add_argument("--editor", required=True, help="folder of a trained editor")
    args = parser.parse_args()

    import torch

    from instructedit_utils import methods as baselines
    from instructedit_utils.evaluation.harness import evaluate_method
    from instructedit_utils.evaluation.scoring import score_requests
    from instructedit_utils.evaluation.requests import task_requests

    model, tok = load_frozen_model(args)
    method = baselines.build("mend", model, tok, editor_dir=args.editor)
    requests = task_requests(args.tasks, "test", args.records, seed=args.seed,
                             instructions=method.use_instructions)
    kw = dict(max_rephrases=3, max_probes=3, max_aliases=1, sentiment_responses=4, fluency_max_new_tokens=0)

    def loop():
        cases = []
        for req in requests:
            base, reference = score_requests(model, tok, [req], batch_size=1, **kw)
            with method.edited(model, tok, req) as edited:
                case = score_requests(edited, tok, [req], reference=reference, batch_size=1, **kw)[0][0]
            cases.append({**case, **{f"base/{k}": v for k, v in base[0].items() if "/" in k}})
        return cases

    runs = {
        "loop": loop,
        "batched": lambda: evaluate_method(method, model, tok, requests, split=False, batch_size=16, **kw),
        "harness": lambda: evaluate_method(method, model, tok, requests, split=True, batch_size=16, **kw),
    }
    results, cases = {}, {}
    for name, fn in runs.items():
        with torch.no_grad():
            t0 = time.perf_counter()
            cases[name] = fn()
            results[name] = time.perf_counter() - t0
    keys = ("edit/acc", "gen/acc", "loc/acc", "port/acc", "sentiment/success", "base/edit/acc")
    mismatches = sum(1 for name in ("batched", "harness") for a, b in zip(cases["loop"], cases[name])
                     for k in keys if k in a and abs((a[k] or 0) - (b.get(k) or 0)) > 1e-6)
    n = len(requests)
    out = {"model": args.model, "editor": args.editor, "threads": args.threads, "records": n, "tasks": args.tasks,
           **{f"{k}_records_per_s": n / v for k, v in results.items()},
           **{f"{k}_s": v for k, v in results.items()},
           "speedup_harness_vs_loop": results["loop"] / results["harness"],
           "speedup_batched_vs_loop": results["loop"] / results["batched"],
           "metric_mismatches": mismatches}
    print(json.dumps(out))
    print(f"{n} records: loop {n / results['loop']:.2f} rec/s | batched {n / results['batched']:.2f} rec/s | "
          f"harness {n / results['harness']:.2f} rec/s -> {out['speedup_harness_vs_loop']:.1f}x over the loop "
          f"(target >= 5x); metric mismatches: {mismatches}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
