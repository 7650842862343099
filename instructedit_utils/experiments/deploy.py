"""Edited models people can deploy: apply edits in order with a registered method, check them, save the edited model.

``instructedit-edit EDITS.jsonl --method instructedit --output edited/`` (or :func:`edit_and_save`):

1. **Read the edits**: one JSON object per line with ``prompt`` and ``target``, and optionally ``task`` (one of the
   book's tasks: an instructed editor such as InstructEdit needs it to build the instruction), ``description`` (the
   instruction's description; default: the task's first seen description) and ``locality_prompt`` (a prompt whose
   continuation should not change). Every error names the file and the line.
2. **Apply them in order** (sequential editing): each edit is computed on the model the previous edits left and its
   weight change added to the model's weights, inside a context that restores them bit-exactly afterwards (the
   caller's model is unchanged once the edited model is saved). Only methods whose edits
   are weight changes (``weight_deltas``: MEND, InstructEdit, KE, FT-L, ROME, MEMIT, AlphaEdit; kept in order by the
   method's stream, so AlphaEdit's later edits preserve its earlier ones' keys) give a model that loads without project
   code; a method that adds modules (GRACE's codebook, CaliNet's slots) is refused with an error that says so.
3. **Check**: before and after each edit, the target's probability (teacher-forced, all its tokens) and the greedy
   continuation of the edit prompt, whether it starts with the target, and the continuation of the locality prompt;
   after the last edit every edit is checked again (``final/…``), so a later edit that undid an earlier one shows.
4. **Save**: ``save_pretrained`` of the edited model and its tokenizer and ``edit_report.json`` into a temporary
   folder beside the output, moved into place only when everything succeeded (nothing is left behind otherwise).
   ``AutoModelForCausalLM.from_pretrained(output)`` loads it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..data.tasks import TASKS
from ..data.instructions import EditRequest, InstructionPool, TASK_SLOTS, default_pool, make_edit_request
from ..models.metrics import generate, generation_success, score_targets
from ..data.records import EditRecord, iter_json_lines
from ..config.parameters import add_arguments, config_from_args as notebook_config_from_args, parse_cli
from ..methods.registry import EditingMethod
from ..util.runtime import setup_torch
from .settings import editors_dir, load_methods
import pandas as pd
import subprocess
import sys

REPORT = "edit_report.json"
FIELDS = {"prompt", "target", "task", "description", "locality_prompt"}


class NotSaveable(ValueError):
    """The editing method's edits are not weight changes: no plain Hugging Face folder can hold them."""


@dataclass(frozen=True)
class EditSpec:
    """One line of an edits file."""

    line: int
    prompt: str
    target: str
    task: str | None = None
    description: str | None = None
    locality_prompt: str | None = None


def read_edits(path: str | os.PathLike) -> list[EditSpec]:
    """The edits of a JSON-lines file, validated; every error names the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No edits file {path}")
    out = []
    for n, item in iter_json_lines(path):
        where = f"{path}:{n}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a JSON object with prompt and target, got {type(item).__name__}")
        unknown = set(item) - FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; fields: {sorted(FIELDS)}")
        for key in FIELDS & set(item):
            if not isinstance(item[key], str):
                raise ValueError(f"{where}: {key} must be a string, got {item[key]!r}")
        for key in ("prompt", "target"):
            if not item.get(key, "").strip():
                raise ValueError(f"{where}: empty or missing {key}")
        if item.get("task") is not None and item["task"] not in TASKS:
            raise ValueError(f"{where}: unknown task {item['task']!r}; tasks: {list(TASKS)}")
        out.append(EditSpec(n, item["prompt"], item["target"], item.get("task"), item.get("description"),
                            item.get("locality_prompt")))
    if not out:
        raise ValueError(f"{path}: no edits (one JSON object per line)")
    return out


def edit_request(spec: EditSpec, instructed: bool, source: str, pool: InstructionPool | None = None) -> EditRequest:
    """The request a method edits with: the bare prompt, or (``instructed``) the prompt wrapped in the instruction
    of the edit's task."""
    record = EditRecord(task=spec.task or "custom", split="user", source=source, index=spec.line, subject="",
                        prompt=spec.prompt, target_new=spec.target)
    if not instructed:
        return make_edit_request(record, instructions=False)
    where = f"{source}:{spec.line}"
    if spec.task is None:
        raise ValueError(f"{where}: the method reads instructions; give the edit's task ({list(TASKS)})")
    pool = pool or default_pool()
    description = spec.description or pool.seen(spec.task)[0]
    slots = [s for s in ("[LABEL]", "[TOPIC]") if s in description]
    if slots:
        raise ValueError(f"{where}: the description has slots {slots} (filled from dataset records, not here); give a "
                         f"description with the sentiment and topic written out"
                         + (" (ConvSent's descriptions all have them)" if spec.task in TASK_SLOTS else ""))
    return make_edit_request(record, description=description, pool=pool)


def check(model, tokenizer, spec: EditSpec, request: EditRequest, max_new_tokens: int) -> dict[str, Any]:
    """The target's probability and the greedy continuation of the edit prompt (and of the locality prompt)."""
    score = score_targets(model, tokenizer, [request.prompt], [spec.target])[0]
    continuation = generate(model, tokenizer, [request.prompt], max_new_tokens)[0]
    out = {"target_prob": math.exp(sum(score.logprobs)), "continuation": continuation.strip(),
           "success": generation_success(continuation, spec.target)}
    if spec.locality_prompt:
        out["locality"] = generate(model, tokenizer, [spec.locality_prompt], max_new_tokens)[0].strip()
    return out


@contextlib.contextmanager
def edits_applied(method, model, tokenizer, specs: Sequence[EditSpec], requests: Sequence[EditRequest],
                  max_new_tokens: int = 12) -> Iterator[list[dict[str, Any]]]:
    """Inside the block ``model`` holds every edit, applied in order (each computed on the model the previous ones
    left, with the method built for ``model``); yields one report row per edit (``before/…``, ``after/…`` and,
    after the last edit, ``final/…``). On exit the weights are restored bit-exactly, also after an error."""
    if type(method).weight_deltas is EditingMethod.weight_deltas:
        raise NotSaveable(f"{method.name} does not edit by changing weights (it adds modules to the model), so its "
                          "edited model cannot be saved as a plain Hugging Face folder; methods that can: MEND, "
                          "InstructEdit, KE, FT-L, ROME, MEMIT, AlphaEdit")
    rows = []
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(method.stream(model, tokenizer))  # AlphaEdit's keeps the earlier edits' keys
        for spec, request in zip(specs, requests):
            row = {"line": spec.line, "prompt": spec.prompt, "target": spec.target, "task": spec.task,
                   "input": request.prompt}
            row.update({f"before/{k}": v for k, v in check(model, tokenizer, spec, request, max_new_tokens).items()})
            stream.add(request)
            row.update({f"after/{k}": v for k, v in check(model, tokenizer, spec, request, max_new_tokens).items()})
            rows.append(row)
        for row, spec, request in zip(rows, specs, requests):
            row.update({f"final/{k}": v for k, v in check(model, tokenizer, spec, request, max_new_tokens).items()})
        yield rows


def save_atomically(model, tokenizer, output: str | os.PathLike, report: dict[str, Any],
                    overwrite: bool = False) -> Path:
    """``save_pretrained`` (weights, config, tokenizer) and the report into a temporary folder beside ``output``,
    then one rename; on any error the temporary folder is removed and ``output`` is as before."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's folder is private; the saved model is an ordinary folder
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if output.exists():
            old = output.with_name(f".{output.name}.replaced-{os.getpid()}")
            os.replace(output, old)
            os.replace(tmp, output)
            shutil.rmtree(old)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def edit_and_save(method, model, tokenizer, edits_file: str | os.PathLike, output: str | os.PathLike, *,
                  max_new_tokens: int = 12, overwrite: bool = False, pool: InstructionPool | None = None,
                  model_name: str = "") -> tuple[Path, list[dict[str, Any]]]:
    """Read, apply in order, check and save (see the module docstring); returns (output folder, report rows).
    Nothing is written unless every edit succeeded."""
    specs = read_edits(edits_file)
    source = Path(edits_file).name
    requests = [edit_request(s, method.use_instructions, source, pool) for s in specs]
    with edits_applied(method, model, tokenizer, specs, requests, max_new_tokens) as rows:
        report = {"model": model_name, "method": method.name, "editor": method.fingerprint, "edits": source,
                  "max_new_tokens": max_new_tokens, "rows": rows}
        return save_atomically(model, tokenizer, output, report, overwrite), rows


def report_table(rows: Sequence[dict[str, Any]]):
    """The report rows as a table: per edit, target probability and continuation before, after and at the end."""
    table = pd.DataFrame(rows).set_index("line")
    keep = ["target"] + [f"{when}/{what}" for when in ("before", "after", "final")
                         for what in ("target_prob", "success", "continuation") if f"{when}/{what}" in table]
    keep += [c for c in ("before/locality", "final/locality") if c in table]
    return table[keep]


def write_edits(path: str | os.PathLike, records: Sequence[EditRecord]) -> Path:
    """An edits file from dataset records: prompt, target, task and the record's first locality prompt."""
    rows = [{"prompt": r.prompt, "target": r.target_new, "task": r.task,
             **({"locality_prompt": r.locality[0].prompt} if r.locality else {})} for r in records]
    path = Path(path)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def command(edits: str | os.PathLike, method: str, output: str | os.PathLike, cfg, overwrite: bool = True
            ) -> list[str]:
    """The ``instructedit-edit`` command line (as ``python -m instructedit_utils.experiments.deploy``) for ``cfg``'s model,
    profile and trained editors."""

    return [sys.executable, "-m", "instructedit_utils.experiments.deploy", str(edits), "--method", method, "--output",
            str(output), "--profile", cfg.profile, "-p", f"model_name={cfg.model.name}", "-p",
            f"dtype={cfg.model.dtype}", "-p", f"lower_dtype={cfg.model.lower_dtype}", "-p",
            f"device={cfg.model.device}", "-p", f"editors_dir={editors_dir(cfg)}",
            *(["--overwrite"] if overwrite else [])]


#: what a user without this project runs: transformers alone loads the folder and continues each prompt greedily
RELOAD = """import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path, n = sys.argv[1], int(sys.argv[2])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path).eval()
out = []
for prompt in json.loads(sys.stdin.read()):
    ids = tok(prompt, return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    out.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
print(json.dumps(out))
"""


def reload_and_generate(output: str | os.PathLike, prompts: Sequence[str], max_new_tokens: int = 12) -> list[str]:
    """Load the saved folder in a fresh Python process with ``transformers`` only (:data:`RELOAD`) and return the
    greedy continuations of ``prompts``."""
    done = subprocess.run([sys.executable, "-c", RELOAD, str(output), str(max_new_tokens)], input=json.dumps(prompts),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"Reloading {output} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------

NOTEBOOK = "03_multitask_and_holdout"  # whose configuration (model, editors, method options) the command uses


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructedit-edit", formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__,
        epilog="Example:\n  instructedit-edit edits.jsonl --method instructedit --output runs/edited/smollm2 "
               "--profile cpu")
    parser.add_argument("edits", help="JSON-lines file: prompt, target; optional task, description, locality_prompt")
    parser.add_argument("--method", required=True,
                        help="a registered method (ft-l) or a trained editor of chapter 2 (instructedit, mend, ke)")
    parser.add_argument("--output", required=True, help="folder for the edited model (from_pretrained loads it)")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="greedy tokens of each check (default 12)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_arguments(parser, f"notebook {NOTEBOOK} (model, editors_dir, method_options)")
    return parser


def config_from_args(args: argparse.Namespace):
    """Notebook 03's configuration for the profile and overrides, with the one method named."""
    return notebook_config_from_args(NOTEBOOK, args, {"methods": [args.method]})


def main(argv: Sequence[str] | None = None) -> int:
    """Apply the edits of a file to a model with one method, check them, save the edited model."""

    parser = build_parser()
    args, cfg = parse_cli(parser, argv, config_from_args)
    try:
        specs = read_edits(args.edits)  # the file is checked before a model loads
        if Path(args.output).exists() and not args.overwrite:
            raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        parser.error(str(exc))
    setup_torch(cfg.model.num_threads, cfg.seed)
    model, tokenizer = cfg.model.load()
    model.requires_grad_(False)
    try:
        method = load_methods(cfg, model, tokenizer, [args.method])[args.method]
        out, rows = edit_and_save(method, model, tokenizer, args.edits, args.output,
                                  max_new_tokens=args.max_new_tokens, overwrite=args.overwrite, pool=cfg.pool(),
                                  model_name=cfg.model.name)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as exc:
        parser.exit(2, f"instructedit-edit: error: {exc}\n")
    with pd.option_context("display.max_colwidth", 40, "display.width", 200):
        print(report_table(rows).round(4).to_string())
    print(f"[instructedit-edit] {len(specs)} edit(s) with {args.method}; saved {out} (report: {out / REPORT})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
