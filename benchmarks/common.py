"""What the benchmark scripts share: the model/task/thread options and loading a frozen model with them."""
from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser, tasks: list[str], records: int) -> argparse.ArgumentParser:
    """``--model``, ``--tasks``, ``--records`` (per task), ``--threads`` (torch intra-op threads), ``--seed``."""
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=tasks)
    parser.add_argument("--records", type=int, default=records, help="records per task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def load_frozen_model(args: argparse.Namespace):
    """Set threads and seeds, load ``args.model`` and freeze it; returns ``(model, tokenizer)``."""
    from instructedit_utils import setup_torch
    from instructedit_utils.models.loading import load_model

    setup_torch(args.threads, args.seed)
    model, tok = load_model(args.model)
    model.requires_grad_(False)
    return model, tok
