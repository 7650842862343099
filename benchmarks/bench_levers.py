"""Benchmark of the levers on the book's cost (issue 27), each measured side by side in one process, one thread:

* ``lower`` — the frozen blocks below the edited ones. For chapter 2's editor configuration (``--profile``), one
  training step (forward, backward, optimizer step) is timed three ways on the same examples, interleaved: as the
  trainer runs it; with the lower pass alone; with the lower states handed in (what a cache hit costs). Then the
  trainer's own draws of every editor chapter 2 trains are replayed (tokenised, no model) and the lower-pass
  sequences counted: how many tokens a cache keyed by the tokens would serve again, within one editor and across
  editors. Projected speed-up of training = time as run / (time as run − hit share × lower time).
* ``cache`` — whether lower states can be shared across runs: the step's former batched lower pass against each
  sequence computed alone, as the trainer now does (bit-equal rows, largest difference, time of both), and the
  alone pass writing to a :class:`~instructedit_utils.models.states.LowerStates` store and reading back from it.
* ``bf16`` — the same lower pass with a bfloat16 copy of the model, and under bfloat16 autocast (the book's
  ``lower_dtype = "bfloat16"``), against float32: time, the states' relative error, and the step loss computed from
  either (the editor's upper blocks in float32 every time).
* ``baselines`` — FT-L, CaliNet and GRACE: seconds per edit and the edit's teacher-forced accuracy with their
  Table 3 settings and with fewer optimisation steps (``--fewer-steps``), the variants interleaved per edit, next to
  a plain forward pass over the same tokens.
* ``profile`` — torch's profiler over a few training steps of that editor: the operators that take the time.
* ``validation`` — one validation round of that editor (the trainer's validation edits): fresh, and with the lower
  states kept from an earlier round (what the trainer now does from its second round on).
* ``schedule`` — from a finished run folder (``--runs-dir``): chapter 2's wall time against its editors' training
  times divided by the workers, and the same jobs in one longest-first order (list scheduling of the recorded times;
  a computation from measured times, not a second run).

    python benchmarks/bench_levers.py                                  # every lever, cpu profile
    python benchmarks/bench_levers.py --levers lower bf16 --steps 12
    python benchmarks/bench_levers.py --levers schedule --runs-dir runs/cpu

Run it alone (no other torch process on the machine). Prints one JSON object per lever and a readable line.
Nothing here is a test.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import heapq
import json
import statistics
import sys
import time
from pathlib import Path

LEVERS = ("lower", "cache", "bf16", "baselines", "schedule", "profile", "validation")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ---- chapter 2's editor and its examples -------------------------------------------------------------------------

def book_config(profile: str):
    from instructedit_utils.config.parameters import notebook_config

    return notebook_config("02_editor_training", profile)


def lower_inputs(example):
    """What :func:`~instructedit_utils.training.step.edit_step` hands the lower pass: (sequences, header, rows)."""
    instructed = [example.edit] + example.likely + example.unlikely
    return [s.inputs for s in instructed] + [s.input_ids for s in example.loc], example.header, len(instructed)


def lower_each_inputs(example):
    """The same as (sequences, per-sequence headers), as the step's ``lower_each`` takes them."""
    seqs, header, rows = lower_inputs(example)
    return seqs, [header if i < rows else () for i in range(len(seqs))]


def book_editor(model, tokenizer, cfg, steps: int):
    """Chapter 2's editor as a training run starts it (:func:`~instructedit_utils.training.step.initial_editor`), in
    training mode with the trainer's optimizer, and the trainer's examples of its first ``steps`` steps."""
    import torch

    from instructedit_utils.data.instructions import load_pool
    from instructedit_utils.data.tasks import load_task
    from instructedit_utils.training.step import first_examples, initial_editor

    config = cfg.method
    records = {t: load_task(t, "train", cfg.data_dir) for t in config.tasks}
    editor = initial_editor(model, tokenizer, config, edit_layers=cfg.model.edit_layers, train_records=records)
    editor.train()
    optimizer = torch.optim.Adam([{"params": editor.network_parameters(), "lr": config.lr},
                                  {"params": editor.step_size_parameters(), "lr": config.lr_lr}], fused=True)
    examples = first_examples(config, tokenizer, records, load_pool(config.instructions_file), steps)
    return config, editor, optimizer, examples


@contextlib.contextmanager
def serving(runner, lowers):
    """Inside the block, ``runner``'s lower pass returns ``lowers`` (a cache hit); ``None``: it computes as usual."""
    if lowers is not None:
        runner.lower_each = lambda *args, **kwargs: lowers
    try:
        yield
    finally:
        runner.__dict__.pop("lower_each", None)


def train_step(editor, optimizer, model, example, config, pad_id, lowers=None) -> float:
    """One training step; with ``lowers`` the lower pass is served those states (a cache hit)."""
    from instructedit_utils.training.step import edit_step

    with serving(editor.runner(model), lowers):
        loss, _ = edit_step(editor, model, example, config, pad_id)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


# ---- lever: the frozen lower blocks ------------------------------------------------------------------------------

def lower_share(model, tok, cfg, args) -> dict:
    config, editor, optimizer, examples = book_editor(model, tok, cfg, args.warmup + args.steps)
    runner = editor.runner(model)
    as_run, lower_only, served = [], [], []
    for i, ex in enumerate(examples):
        t_lower, lowers = _timed(lambda: runner.lower_each(*lower_each_inputs(ex)))
        t_run, _ = _timed(lambda: train_step(editor, optimizer, model, ex, config, tok.pad_token_id))
        t_served, _ = _timed(lambda: train_step(editor, optimizer, model, ex, config, tok.pad_token_id, lowers))
        if i >= args.warmup:
            as_run.append(t_run), lower_only.append(t_lower), served.append(t_served)
    return {"editor": config.name, "steps_timed": len(as_run), "step_s": statistics.median(as_run),
            "lower_s": statistics.median(lower_only), "served_step_s": statistics.median(served)}


def plan_repeats(tok, cfg, limit: int | None) -> dict:
    """Lower-pass tokens of every editor chapter 2 trains (its draws replayed), and how many a cache would serve."""
    from instructedit_utils.data.instructions import load_pool
    from instructedit_utils.data.tasks import load_task
    from instructedit_utils.models.forward import common_prefix_len
    from instructedit_utils.training.plan import training_configs
    from instructedit_utils.training.step import first_examples

    seen_any: set = set()
    total = within = across = 0
    per_editor = {}
    for name, config in training_configs(cfg).items():
        records = {t: load_task(t, "train", cfg.data_dir) for t in config.tasks}
        steps = min(config.steps, limit) if limit else config.steps
        seen: set = set()
        tokens = hits = 0
        for ex in first_examples(config, tok, records, load_pool(config.instructions_file), steps):
            seqs, header, rows = lower_inputs(ex)
            for i, seq in enumerate(seqs):
                head = header if i < rows else ()
                key = (head, tuple(seq))
                n = len(seq) - (common_prefix_len(seq, head) if head else 0)  # the header comes from its own cache
                tokens += n
                hits += n if key in seen else 0
                across += n if key not in seen and key in seen_any else 0
                seen.add(key)
            seen_any |= seen
        total += tokens
        within += hits
        per_editor[name] = {"steps": steps, "tokens": tokens, "repeat_share": hits / max(tokens, 1)}
    return {"editors": per_editor, "tokens": total, "within_editor_share": within / max(total, 1),
            "across_editors_share": (within + across) / max(total, 1)}


def lever_lower(model, tok, cfg, args) -> dict:
    timing = lower_share(model, tok, cfg, args)
    repeats = plan_repeats(tok, cfg, args.plan_steps)
    share = repeats["across_editors_share"]
    step, lower = timing["step_s"], timing["lower_s"]
    return {**timing, "lower_fraction": lower / step, **{k: v for k, v in repeats.items() if k != "editors"},
            "projected_speedup": step / (step - share * (step - timing["served_step_s"])),
            "editors": repeats["editors"]}


def lever_cache(model, tok, cfg, args) -> dict:
    """Can lower states be cached across runs without changing training? A state served from a cache was computed
    in another batch than the one the step would build. Per example of chapter 2's editor, its lower pass as the step
    batches it against each sequence computed alone: how many states are bit-equal, the largest difference, and the
    time of both (computing every sequence alone is the one batch-independent, cacheable form)."""
    import torch

    import tempfile

    from instructedit_utils.models.states import LowerStates

    config, editor, _, examples = book_editor(model, tok, cfg, args.warmup + args.steps)
    runner = editor.runner(model)
    equal = rows_total = 0
    max_diff = 0.0
    batched_s, alone_s, stored_s, served_s = [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        store = LowerStates(folder, model, runner.start)
        for i, ex in enumerate(examples):
            seqs, header, rows = lower_inputs(ex)
            t_b, batched = _timed(lambda: runner.lower(seqs, header, header_rows=rows))
            t_a, alone = _timed(lambda: runner.lower_each(*lower_each_inputs(ex)))
            t_s, _ = _timed(lambda: runner.lower_each(*lower_each_inputs(ex), store))  # computed and written
            t_r, _ = _timed(lambda: runner.lower_each(*lower_each_inputs(ex), store))  # read back
            equal += sum(torch.equal(a, b) for a, b in zip(alone, batched))
            rows_total += len(seqs)
            max_diff = max([max_diff] + [float((a - b).abs().max()) for a, b in zip(alone, batched)])
            if i >= args.warmup:
                batched_s.append(t_b), alone_s.append(t_a), stored_s.append(t_s), served_s.append(t_r)
    return {"examples": len(examples), "rows": rows_total, "bit_equal_rows": equal, "max_abs_diff": max_diff,
            "batched_s": statistics.median(batched_s), "alone_s": statistics.median(alone_s),
            "alone_over_batched": statistics.median(alone_s) / statistics.median(batched_s),
            "alone_and_write_s": statistics.median(stored_s), "read_s": statistics.median(served_s)}


def lever_profile(model, tok, cfg, args) -> dict:
    """Where a training step's time goes: torch's profiler over ``--steps`` steps of chapter 2's editor, the
    operators with the most self CPU time (printed as a table to stderr) and the share of the ten largest."""
    from torch.profiler import ProfilerActivity, profile

    config, editor, optimizer, examples = book_editor(model, tok, cfg, args.warmup + args.steps)
    for ex in examples[:args.warmup]:
        train_step(editor, optimizer, model, ex, config, tok.pad_token_id)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for ex in examples[args.warmup:]:
            train_step(editor, optimizer, model, ex, config, tok.pad_token_id)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)
    shapes = sorted((e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::mm"),
                    key=lambda e: -e.self_cpu_time_total)
    return {"steps": len(examples) - args.warmup, "self_cpu_s": total / 1e6,
            "top": [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:10]],
            "mm_by_shape": [{"shapes": str(e.input_shapes), "share": e.self_cpu_time_total / total, "calls": e.count}
                            for e in shapes[:12]]}


def lever_validation(model, tok, cfg, args) -> dict:
    """One validation round of chapter 2's editor as the trainer runs it (its validation edits and scoring caps):
    fresh, then with a kept dict of lower states (its first fill, then served), then fresh again."""
    from instructedit_utils.evaluation.scoring import score_requests
    from instructedit_utils.training.trainer import VALIDATION_SCORING
    from instructedit_utils.training.validation import edit_and_score, validation_requests

    config, editor, _, _ = book_editor(model, tok, cfg, 0)
    requests = validation_requests(config, cfg.data_dir)
    caps = {k: v for k, v in VALIDATION_SCORING.items() if k != "fluency_max_new_tokens"}  # as the trainer's reference
    _, reference = score_requests(model, tok, requests, batch_size=16, **caps)
    kept: dict = {}
    out = {"requests": len(requests)}
    for label, states in (("fresh_s", None), ("kept_first_s", kept), ("kept_again_s", kept), ("fresh_again_s", None)):
        out[label], _ = _timed(lambda: edit_and_score(editor, model, tok, requests, reference, states=states,
                                                      **VALIDATION_SCORING))
    out["speedup_kept"] = (out["fresh_s"] + out["fresh_again_s"]) / 2 / out["kept_again_s"]
    return out


# ---- lever: bfloat16 lower blocks --------------------------------------------------------------------------------

def lever_bf16(model, tok, cfg, args) -> dict:
    import torch

    from instructedit_utils.models.forward import SplitForward

    config, editor, _, examples = book_editor(model, tok, cfg, args.warmup + args.steps)
    runner = editor.runner(model)
    half = SplitForward(copy.deepcopy(model).to(torch.bfloat16), runner.start)
    auto = SplitForward(model, runner.start)
    auto.lower_dtype = "bfloat16"  # what a model loaded with lower_dtype="bfloat16" (ModelConfig) runs
    variants = {
        "bf16_weights": lambda seqs, headers: [h.float() for h in half.lower_each(seqs, headers)],
        "autocast": lambda seqs, headers: auto.lower_each(seqs, headers),
    }
    times = {"fp32": [], **{k: [] for k in variants}}
    errors = {k: [] for k in variants}
    loss_diff = {k: [] for k in variants}
    for i, ex in enumerate(examples):
        seqs, headers = lower_each_inputs(ex)
        t, full = _timed(lambda: runner.lower_each(seqs, headers))
        times["fp32"].append(t)
        reference = _step_loss(editor, model, ex, config, tok, full)
        for key, fn in variants.items():
            t, low = _timed(lambda: fn(seqs, headers))
            times[key].append(t)
            errors[key].append(max(float((x - y).norm() / x.norm()) for x, y in zip(full, low)))
            loss_diff[key].append(abs(reference - _step_loss(editor, model, ex, config, tok, low)))
    n = args.warmup
    out = {"lower_fp32_s": statistics.median(times["fp32"][n:]), **bf16_steps(model, tok, cfg, args)}
    for key in variants:
        out[key] = {"lower_s": statistics.median(times[key][n:]),
                    "speedup": out["lower_fp32_s"] / statistics.median(times[key][n:]),
                    "state_rel_error_max": max(errors[key][n:]),
                    "step_loss_abs_diff_median": statistics.median(loss_diff[key][n:]),
                    "step_loss_abs_diff_max": max(loss_diff[key][n:])}
    return out


def bf16_steps(model, tok, cfg, args) -> dict:
    """Whole training steps as the trainer runs them, interleaved: chapter 2's editor on the float32 model and the
    same editor (same start, same examples) on a copy loaded with ``lower_dtype="bfloat16"``."""
    from instructedit_utils.models.loading import set_lower_dtype

    half = copy.deepcopy(model)
    set_lower_dtype(half, "bfloat16")
    runs = {"fp32": book_editor(model, tok, cfg, args.warmup + args.steps),
            "bf16_lower": book_editor(half, tok, cfg, args.warmup + args.steps)}
    times: dict = {k: [] for k in runs}
    for i in range(args.warmup + args.steps):
        for key, (config, editor, optimizer, examples) in runs.items():
            base = model if key == "fp32" else half
            t, _ = _timed(lambda: train_step(editor, optimizer, base, examples[i], config, tok.pad_token_id))
            if i >= args.warmup:
                times[key].append(t)
    step, step_half = statistics.median(times["fp32"]), statistics.median(times["bf16_lower"])
    return {"step_fp32_s": step, "step_bf16_lower_s": step_half, "step_speedup": step / step_half}


def _step_loss(editor, model, example, config, tok, lowers) -> float:
    from instructedit_utils.training.step import edit_step

    with serving(editor.runner(model), lowers):
        loss, _ = edit_step(editor, model, example, config, tok.pad_token_id)
    return float(loss.detach())


# ---- lever: cheaper optimisation baselines -----------------------------------------------------------------------

def lever_baselines(model, tok, cfg, args) -> dict:
    import torch

    from instructedit_utils import methods
    from instructedit_utils.data.tasks import load_task, sample
    from instructedit_utils.evaluation.requests import build_requests
    from instructedit_utils.models.batches import edit_batch
    from instructedit_utils.models.metrics import encode_pair

    records = [r for t in ("counterfact", "recent") for r in sample(load_task(t, "val", cfg.data_dir), args.edits, 0)]
    requests = build_requests(records, instructions=False, seed=0)
    layers = cfg.model.edit_layers
    out = {}
    for name in ("ft-l", "calinet", "grace"):
        default = methods.build(name, model, tok, default_layers=layers)
        variants = {"table3": default}
        if getattr(default.config, "plateau", None) is not None:  # the same steps without the plateau stop
            variants["no_plateau"] = methods.build(name, model, tok, default_layers=layers, plateau=None)
        for steps in args.fewer_steps:
            if steps < default.config.steps:
                variants[f"steps={steps}"] = methods.build(name, model, tok, default_layers=layers, steps=steps)
        times = {k: [] for k in variants}
        accs = {k: [] for k in variants}
        floor = []
        for req in requests:
            ids = torch.tensor([encode_pair(tok, req.prompt, req.target).input_ids])
            t, _ = _timed(lambda: model(input_ids=ids))
            floor.append(t)
            for key, method in variants.items():
                t, acc = _timed(lambda: _edit_accuracy(method, model, tok, req, edit_batch))
                times[key].append(t), accs[key].append(acc)
        out[name] = {key: {"edit_s": statistics.median(times[key]), "edit_acc": statistics.mean(accs[key]),
                           "x_plain_forward": statistics.median(times[key]) / statistics.median(floor)}
                     for key in variants}
    return {"edits": len(requests), **out}


def _edit_accuracy(method, model, tok, req, edit_batch) -> float:
    """Enter ``method.edited`` for ``req`` and return the teacher-forced token accuracy of its target there."""
    import torch

    with method.edited(model, tok, req) as edited, torch.no_grad():
        runner = method.runner(edited)
        eb = edit_batch(runner, tok, req.prompt, req.target, req.header)
        logits = runner.upper(eb.batch, eb.rows, eb.positions)
        return float((logits.argmax(-1) == eb.targets).float().mean())


# ---- lever: one schedule -----------------------------------------------------------------------------------------

def list_schedule(durations: list[float], workers: int) -> float:
    """Makespan of the jobs in the given order on ``workers`` identical workers (each job to the first free one)."""
    free = [0.0] * workers
    for d in durations:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def lever_schedule(runs_dir: Path, workers: int) -> dict:
    """Chapter 2's pool replayed with the recorded time of every run (training steps plus validation rounds): in
    the plan's order, in the pool's estimated longest-first order and in the true longest-first order."""
    from instructedit_utils.models.loading import load_model
    from instructedit_utils.training.plan import training_configs
    from instructedit_utils.training.pool import longest_first

    folder = runs_dir / "02_editor_training"
    cost = json.loads((folder / "cost.json").read_text())
    cfg = book_config(cost["profile"])
    configs = training_configs(cfg)
    times = {name: _run_time(folder / name) for name in configs}
    estimated = longest_first(configs, load_model(cfg.model.name)[1], cfg.data_dir)
    return {"chapter2_wall_s": cost["wall_s"], "resumed": cost.get("resumed"), "jobs": len(times),
            "run_s_sum": sum(times.values()), "ideal_s": sum(times.values()) / workers,
            "plan_order_s": list_schedule(list(times.values()), workers),
            "estimated_longest_first_s": list_schedule([times[n] for n in estimated], workers),
            "longest_first_s": list_schedule(sorted(times.values(), reverse=True), workers),
            "estimated_order": estimated}


def _run_time(directory: Path) -> float:
    """A finished run's seconds: its training steps (``done.json``) plus its validation rounds (``val_log``)."""
    done = directory / "done.json"
    if not done.is_file():
        raise FileNotFoundError(f"{done}: {directory.name} has not finished; the schedule needs every run's time")
    rounds = [json.loads(line) for line in (directory / "val_log.jsonl").read_text().splitlines() if line.strip()]
    return json.loads(done.read_text())["train_time_s"] + sum(r.get("time/val_s", 0.0) for r in rounds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levers", nargs="+", choices=LEVERS, default=list(LEVERS))
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--plan-steps", type=int, help="replay at most this many steps per editor (default: all)")
    parser.add_argument("--edits", type=int, default=6, help="validation records per task for the baselines")
    parser.add_argument("--fewer-steps", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/cpu"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from instructedit_utils import setup_torch
    from instructedit_utils.models.loading import load_model

    results = {}
    if "schedule" in args.levers:
        results["schedule"] = lever_schedule(args.runs_dir, args.workers)
    torch_levers = [lv for lv in args.levers if lv != "schedule"]
    if torch_levers:
        setup_torch(args.threads, 0)
        cfg = book_config(args.profile)
        model, tok = load_model(cfg.model.name)
        model.requires_grad_(False)
        for lever in torch_levers:
            fn = {"lower": lever_lower, "cache": lever_cache, "bf16": lever_bf16, "baselines": lever_baselines,
                  "profile": lever_profile, "validation": lever_validation}[lever]
            results[lever] = fn(model, tok, cfg, args)
    for lever, result in results.items():
        print(json.dumps({"lever": lever, **result}))
    print(summary(results), file=sys.stderr)
    return 0


def summary(results: dict) -> str:
    lines = []
    if "lower" in results:
        r = results["lower"]
        lines.append(f"lower: step {r['step_s']:.3f} s, lower pass {r['lower_s']:.3f} s "
                     f"({100 * r['lower_fraction']:.0f} %), step with served states {r['served_step_s']:.3f} s; "
                     f"chapter 2 repeats {100 * r['within_editor_share']:.0f} % of lower tokens within an editor, "
                     f"{100 * r['across_editors_share']:.0f} % across editors -> projected x{r['projected_speedup']:.2f}")
    if "cache" in results:
        r = results["cache"]
        lines.append(f"cache: {r['bit_equal_rows']} of {r['rows']} lower states bit-equal computed alone and in the "
                     f"step's batch (max |diff| {r['max_abs_diff']:.3g}); alone {r['alone_s']:.3f} s vs batched "
                     f"{r['batched_s']:.3f} s per example (x{r['alone_over_batched']:.2f}); with the store's write "
                     f"{r['alone_and_write_s']:.3f} s, served from it {r['read_s']:.4f} s")
    if "bf16" in results:
        r = results["bf16"]
        lines.append(f"bf16: training step {r['step_fp32_s']:.3f} s in float32, {r['step_bf16_lower_s']:.3f} s with "
                     f"lower_dtype=bfloat16 (x{r['step_speedup']:.2f})")
        for key in ("bf16_weights", "autocast"):
            v = r[key]
            lines.append(f"bf16 ({key}): lower pass x{v['speedup']:.2f} ({r['lower_fp32_s']:.3f} -> "
                         f"{v['lower_s']:.3f} s), state error <= {v['state_rel_error_max']:.2e}, step loss |diff| "
                         f"median {v['step_loss_abs_diff_median']:.2e}, max {v['step_loss_abs_diff_max']:.2e}")
    if "baselines" in results:
        for name, variants in results["baselines"].items():
            if name != "edits":
                lines.append(f"{name}: " + ", ".join(f"{k} {v['edit_s']:.3f} s ({v['x_plain_forward']:.0f}x fwd, "
                                                     f"acc {100 * v['edit_acc']:.0f} %)" for k, v in variants.items()))
    if "validation" in results:
        r = results["validation"]
        lines.append(f"validation ({r['requests']} edits): fresh {r['fresh_s']:.1f} s / {r['fresh_again_s']:.1f} s, with "
                     f"kept lower states {r['kept_again_s']:.1f} s -> x{r['speedup_kept']:.2f} from the second round on")
    if "schedule" in results:
        r = results["schedule"]
        lines.append(f"schedule: chapter 2 wall {r['chapter2_wall_s'] / 60:.1f} min; runs {r['run_s_sum'] / 60:.1f} "
                     f"core-min -> ideal {r['ideal_s'] / 60:.1f}, plan order {r['plan_order_s'] / 60:.1f}, estimated "
                     f"longest first {r['estimated_longest_first_s'] / 60:.1f}, true longest first "
                     f"{r['longest_first_s'] / 60:.1f} min")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
