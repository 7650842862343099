"""Benchmark of the MEND/InstructEdit editor: seconds per training step, ms per edit, peak RSS, checkpoint size.

Default setup (issue 3): SmolLM2-135M, layers 27-29 ``up_proj``/``down_proj``, rank 1920, one edit per step,
instructed CounterFact/Recent edits (≈40-50 tokens with the instruction, locality ≈16 tokens), one thread.
Targets: ≤ 0.65 s/step, ≤ 150 ms/edit, ≤ 1.5 GB peak RSS, ≤ 140 MB checkpoint
(EasyEdit's MEND in the same setup: 1.33 s, 312 ms, 2.7 GB, 390 MB).

    python benchmarks/bench_editor.py                      # the issue's setup
    python benchmarks/bench_editor.py --rank 256 --tasks counterfact recent convsent

Prints one JSON object (and a readable summary). Nothing here is a test: run it by hand or in a sweep.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, nargs="+", default=[27, 28, 29])
    parser.add_argument("--rank", type=int, default=1920)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks", nargs="+", default=["counterfact", "recent"])
    parser.add_argument("--steps", type=int, default=30, help="timed training steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--edits", type=int, default=30, help="timed edits")
    parser.add_argument("--no-instructions", action="store_true")
    parser.add_argument("--editor", help="folder of a trained editor to time edits with (default: the benchmark's)")
    parser.add_argument("--book", metavar="PROFILE",
                        help="time the editor configuration chapter 2 trains with this profile (its rank, locality "
                             "probes, tasks incl. ConvSent, loss weights) instead of --rank/--tasks")
    args = parser.parse_args()

    import torch

    from instructedit_utils import setup_torch
    from instructedit_utils.config.method import MethodConfig
    from instructedit_utils.data.tasks import load_task
    from instructedit_utils.methods import MendEditor
    from instructedit_utils.data.instructions import make_edit_request
    from instructedit_utils.models.loading import load_model
    from instructedit_utils.training.step import TaskSampler, edit_step, make_example, warm_up_normalization

    setup_torch(args.threads, 0)
    model, tok = load_model(args.model)
    model.requires_grad_(False)
    instructions = not args.no_instructions
    cfg = MethodConfig(name="bench", tasks=tuple(args.tasks), rank=args.rank, use_instructions=instructions)
    if args.book:
        import dataclasses

        from instructedit_utils.config.parameters import notebook_config

        cfg = dataclasses.replace(notebook_config("02_editor_training", args.book).method, name="bench",
                                  use_instructions=instructions)
        args.rank, args.tasks = cfg.rank, list(cfg.tasks)
    editor = MendEditor.for_model(model, cfg, args.layers)
    records = {t: load_task(t, "train") for t in cfg.tasks}
    warm_up_normalization(editor, model, tok, records, cfg)
    editor.train()
    opt = torch.optim.Adam([{"params": editor.network_parameters(), "lr": cfg.lr},
                            {"params": editor.step_size_parameters(), "lr": cfg.lr_lr}], fused=True)
    sampler = TaskSampler(records, cfg.weights(), 0)

    step_times, edit_tokens, loc_tokens = [], [], []
    for step in range(args.warmup + args.steps):
        rng = random.Random(f"bench/{step}")
        req = make_edit_request(sampler.draw(rng), instructions=instructions, rng=rng)
        ex = make_example(req, tok, rng, cfg)
        t0 = time.perf_counter()
        loss, _ = edit_step(editor, model, ex, cfg, tok.pad_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(editor.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            step_times.append(time.perf_counter() - t0)
            edit_tokens.append(len(ex.edit.input_ids))
            loc_tokens.append(sum(len(s.input_ids) for s in ex.loc) / len(ex.loc))
    del opt

    edit_editor = MendEditor.load(args.editor, model) if args.editor else editor.eval()
    test = [r for t in cfg.tasks for r in load_task(t, "test")[: args.edits]]
    random.Random(0).shuffle(test)
    # two rounds over the same edits; only the second is timed, so instruction headers (a handful of descriptions
    # per task, reused across a whole evaluation) are already cached, as in any real evaluation
    reqs = [make_edit_request(rec, instructions=instructions, rng=random.Random(i))
            for i, rec in enumerate(test[: args.edits])]
    edit_times, forward_times = [], []
    for timed in (False, True):
        for req in reqs:
            t0 = time.perf_counter()
            edit_editor.edit(model, tok, req.prompt, req.target, header=req.header)
            t1 = time.perf_counter()
            plain_forward(model, tok, req)
            if timed:
                edit_times.append(t1 - t0)
                forward_times.append(time.perf_counter() - t1)

    with tempfile.TemporaryDirectory() as tmp:
        editor.save(tmp)
        ckpt = sum(f.stat().st_size for f in Path(tmp).iterdir())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "model": args.model, "layers": args.layers, "rank": args.rank, "threads": args.threads,
        "tasks": args.tasks, "instructions": instructions,
        "edit_tokens_mean": statistics.mean(edit_tokens), "loc_tokens_mean": statistics.mean(loc_tokens),
        "train_step_s_median": statistics.median(step_times),
        "edit_ms_median": 1000 * statistics.median(edit_times),
        "plain_forward_ms_median": 1000 * statistics.median(forward_times),
        "peak_rss_mb": rss_mb, "checkpoint_mb": ckpt / 2**20,
        "editor_params": sum(p.numel() for p in editor.parameters()),
    }
    print(json.dumps(out))
    print(f"train step {out['train_step_s_median']:.3f} s (target ≤ 0.65) | edit {out['edit_ms_median']:.0f} ms "
          f"(≤ 150; one plain forward of its tokens: {out['plain_forward_ms_median']:.0f} ms) | peak RSS {rss_mb:.0f} MB (≤ 1536) | checkpoint {out['checkpoint_mb']:.1f} MB (≤ 140) | "
          f"edit input {out['edit_tokens_mean']:.0f} tok, locality {out['loc_tokens_mean']:.0f} tok")
    return 0


_HEADERS: dict = {}


def plain_forward(model, tok, req) -> None:
    """A lower bound for one edit: a plain Hugging Face forward (no grad, no editor) over the edit's tokens after its
    instruction header (header key/values cached, as the editor caches them), logits only at the target positions.
    Any MEND edit needs at least this forward plus a backward through the edited blocks and the LM head."""
    import copy

    import torch
    from transformers import DynamicCache

    from instructedit_utils.models.forward import common_prefix_len
    from instructedit_utils.models.metrics import encode_pair

    enc = encode_pair(tok, req.prompt, req.target)
    header = tuple(tok(req.header)["input_ids"]) if req.header else ()
    p = min(common_prefix_len(header, enc.input_ids), len(enc.input_ids) - 1)
    with torch.no_grad():
        cache = None
        if p:
            if header[:p] not in _HEADERS:
                _HEADERS[header[:p]] = DynamicCache(config=model.config)
                model(input_ids=torch.tensor([header[:p]]), cache=_HEADERS[header[:p]], use_cache=True)
            cache = copy.deepcopy(_HEADERS[header[:p]])
        model(input_ids=torch.tensor([enc.inputs[p:]]), cache=cache, use_cache=cache is not None,
              logits_to_keep=len(enc.target_positions))


if __name__ == "__main__":
    raise SystemExit(main())
