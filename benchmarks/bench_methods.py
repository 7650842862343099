"""Benchmark of Table 3's editing methods: ms per edit and peak RSS per method, next to the floor (a plain forward
pass of the model over the same tokens), at a given thread count.

Each method runs in its own process (so its peak RSS is its own): the model, the method, ``--warmup`` untimed edits,
then ``--edits`` timed edits of CounterFact and ZsRE validation records (entering and leaving ``method.edited``: the
edit is computed, applied and removed; nothing is scored). The trained editors (``mend``, ``instructedit``, ``ke``)
are read from ``--editors-dir`` when it holds them (default: the ``cpu`` profile's chapter 2 run folder), else an
untrained editor of the same architecture is timed (an edit costs the same).

Targets (issue 12): FT-L and CaliNet within 25 optimisation steps' cost; KE and GRACE ≤ 2× MEND's edit time; peak
RSS ≤ 1.5 GB for every method.

    python benchmarks/bench_methods.py --threads 1
    python benchmarks/bench_methods.py --threads 2 --methods grace mend

Prints one JSON line per method and a table. Nothing here is a test.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("ft-l", "calinet", "ke", "mend", "grace", "instructedit")
ROOT = Path(__file__).resolve().parent.parent


def _method(name: str, model, tok, editors_dir: Path):
    from instructedit_utils import methods as baselines
    from instructedit_utils.config.method import MethodConfig
    from instructedit_utils.methods import make_editor
    from instructedit_utils.models.loading import MODEL_PRESETS
    from instructedit_utils.training.trainer import is_trained

    layers = MODEL_PRESETS["smollm2-135m"].edit_layers
    if name in baselines.CONFIGS:
        return baselines.build(name, model, tok, default_layers=layers), "defaults"
    if is_trained(editors_dir / name):
        return baselines.build("mend", model, tok, editor_dir=editors_dir / name, name=name), "trained"
    kind = "ke" if name == "ke" else "mend"
    cfg = MethodConfig(name=name, method=kind, rank=256, use_instructions=name == "instructedit",
                       normalize=kind == "mend")
    editor = make_editor(model, cfg, layers)
    for norm in editor.norms.values():  # statistics of an untrained editor: any non-degenerate values
        norm.update(__import__("torch").randn(4, norm.mean.shape[0]))
    return baselines.build("mend", model, tok, editor=editor, name=name), "untrained"


def run_one(args) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import load_frozen_model

    from instructedit_utils.data.tasks import load_task, sample
    from instructedit_utils.evaluation.requests import build_requests
    from instructedit_utils.models.metrics import encode_pair

    model, tok = load_frozen_model(args)
    method, state = _method(args.method, model, tok, Path(args.editors_dir))
    loops = _time_loops()
    records = (sample(load_task("counterfact", "val"), args.edits, args.seed)
               + sample(load_task("zsre", "all"), args.edits, args.seed))
    requests = build_requests(records, instructions=method.use_instructions, seed=args.seed)
    requests = requests[:args.warmup] + requests  # the first ones again, untimed, as warm-up
    edit_ms, floor_ms, tokens = [], [], []
    for i, req in enumerate(requests):
        ids = torch.tensor([encode_pair(tok, req.prompt, req.target).input_ids])
        t0 = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids)
        t1 = time.perf_counter()
        with method.edited(model, tok, req):
            pass
        t2 = time.perf_counter()
        if i < args.warmup:
            loops.clear()
        else:
            floor_ms.append((t1 - t0) * 1e3)
            edit_ms.append((t2 - t1) * 1e3)
            tokens.append(ids.shape[1])
    return {"method": args.method, "state": state, "threads": args.threads, "edits": len(edit_ms),
            "tokens_mean": statistics.mean(tokens), "edit_ms_median": statistics.median(edit_ms),
            "edit_ms_mean": statistics.mean(edit_ms), "floor_ms_median": statistics.median(floor_ms),
            "edit_over_floor": statistics.median(edit_ms) / statistics.median(floor_ms),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            **_loop_summary(loops, statistics.mean(edit_ms))}


def _time_loops() -> list[tuple[int, float]]:
    """Record (steps, seconds) of every optimisation loop the optimisation-based methods run."""
    from instructedit_utils.methods import calinet, ft, grace

    log: list[tuple[int, float]] = []
    original = ft.optimize

    def timed(*a, **k):
        t = time.perf_counter()
        result = original(*a, **k)
        log.append((result.steps, time.perf_counter() - t))
        return result

    for module in (ft, calinet, grace):
        module.optimize = timed
    return log


def _loop_summary(loops: list[tuple[int, float]], edit_ms_mean: float) -> dict:
    """Optimisation steps per edit, ms per step (the loop's time over its steps + 1 final loss), and the whole edit
    in units of one step ("step equivalents": what "within 25 steps' cost" is checked against)."""
    if not loops:
        return {}
    steps = sum(s for s, _ in loops)
    step_ms = sum(t for _, t in loops) * 1e3 / max(steps + len(loops), 1)
    return {"opt_steps_mean": steps / len(loops), "step_ms": step_ms, "edit_in_steps": edit_ms_mean / step_ms}


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import add_model_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ["counterfact", "zsre"], 10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--method", help=argparse.SUPPRESS)  # one method in this process (internal)
    parser.add_argument("--edits", type=int, default=10, help="timed edits (of each of CounterFact and ZsRE)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--editors-dir", default=str(ROOT / "runs" / "cpu" / "02_editor_training"))
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_one(args)))
        return 0
    rows = []
    for name in args.methods:
        cmd = [sys.executable, __file__, "--method", name, "--threads", str(args.threads), "--edits",
               str(args.edits), "--warmup", str(args.warmup), "--editors-dir", args.editors_dir, "--model",
               args.model, "--seed", str(args.seed)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(out, flush=True)
    mend = next((r for r in rows if r["method"] == "mend"), None)
    print(f"\n{'method':<13}{'state':<10}{'ms/edit':>9}{'floor ms':>10}{'x floor':>9}{'x MEND':>8}{'RSS GB':>8}"
          f"{'steps':>7}{'ms/step':>9}{'edit in steps':>15}")
    for r in rows:
        rel = r["edit_ms_median"] / mend["edit_ms_median"] if mend else float("nan")
        loop = (f"{r['opt_steps_mean']:>7.1f}{r['step_ms']:>9.1f}{r['edit_in_steps']:>15.1f}" if "step_ms" in r
                else f"{'—':>7}{'—':>9}{'—':>15}")
        print(f"{r['method']:<13}{r['state']:<10}{r['edit_ms_median']:>9.0f}{r['floor_ms_median']:>10.0f}"
              f"{r['edit_over_floor']:>9.2f}{rel:>8.2f}{r['peak_rss_gb']:>8.2f}" + loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
