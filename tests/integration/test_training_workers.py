"""The multi-task trainer on a tiny model with hand-made records: resume, guards, sampling, validation metrics."""
import dataclasses
import json
import random

import pytest
import torch

from instructedit_utils.methods import mend
from instructedit_utils.models import forward
from instructedit_utils.training import pool
from instructedit_utils.training import step
from instructedit_utils.training import trainer
from instructedit_utils.training import trainer as training
from instructedit_utils.training import validation
from instructedit_utils.training import plan
from instructedit_utils.config.experiment import ExperimentConfig
from instructedit_utils.config.method import MethodConfig
from instructedit_utils.data.tasks import parse_records
from instructedit_utils.methods.mend import MendEditor
from instructedit_utils.evaluation.requests import build_requests

from conftest import cf_row
from helpers import tiny_method_config, editor_state


def test_parallel_workers_train_the_same_editors_as_one_process(tiny_llama, tmp_path, shared_data):
    """Two editors trained in two spawned worker processes (1 thread each) equal the same editors trained here one
    after the other (up to float rounding of other thread counts)."""
    from instructedit_utils.config.experiment import ModelConfig

    model, tok = tiny_llama
    configs = {n: tiny_method_config(name=n, use_instructions=n == "ie", tasks=("counterfact",), steps=2, val_every=2,
                          val_records_per_task=2, norm_warmup=2) for n in ("ie", "me")}
    assert pool.worker_threads(2, 2) == 1 and pool.worker_threads(2, 3) == 1
    assert pool.worker_threads(4, 2) == 2
    seq = ExperimentConfig(run_dir=str(tmp_path / "seq"), model=ModelConfig(name="tiny-llama"))
    one = pool.train_editors(seq, model, tok, configs, workers=1, log=None)
    par = ExperimentConfig(run_dir=str(tmp_path / "par"), model=ModelConfig(name="tiny-llama", num_threads=2),
                           workers=2)
    both = pool.train_editors(par, model, tok, configs, log=None)
    for name in configs:
        assert both[name].summary["step"] == 2
        a, b = editor_state(one[name].editor), editor_state(both[name].editor)
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k].double(), b[k].double(), rtol=1e-4, atol=1e-6) for k in a), name
    with pytest.raises(ValueError, match="workers must be >= 1 or None"):
        ExperimentConfig(run_dir="runs/x", workers=0)


def test_workers_resume_an_interrupted_run(tiny_llama, tmp_path, shared_data):
    """An editor killed mid-run (last checkpoint at step 2, step 3 lost) resumes in a worker process and ends as an
    uninterrupted run; the other editor starts fresh in the second worker."""
    from instructedit_utils.config.experiment import ModelConfig

    model, tok = tiny_llama
    configs = {n: tiny_method_config(name=n, use_instructions=n == "ie", tasks=("counterfact",), steps=4, val_every=2,
                          val_records_per_task=2, norm_warmup=2) for n in ("ie", "me")}
    straight = ExperimentConfig(run_dir=str(tmp_path / "a"), model=ModelConfig(name="tiny-llama"), workers=1)
    one = pool.train_editors(straight, model, tok, configs, log=None)
    killed = trainer.train_editor(model, tok, configs["ie"], tmp_path / "b" / "ie", edit_layers=(2, 3),
                                   progress=False, log=None, stop_after=3)
    assert killed.summary["stop_reason"] == "interrupted"
    par = ExperimentConfig(run_dir=str(tmp_path / "b"), model=ModelConfig(name="tiny-llama", num_threads=2), workers=2)
    both = pool.train_editors(par, model, tok, configs, log=None)
    for name in configs:
        assert both[name].summary["step"] == 4
        a, b = editor_state(one[name].editor), editor_state(both[name].editor)
        assert all(torch.allclose(a[k].double(), b[k].double(), rtol=1e-4, atol=1e-6) for k in a), name
    assert list(both["ie"].train_log()["step"]) == [1, 2, 3, 4]  # the lost step 3 was redone once
