"""Chapter 8's records and jobs on the task data: one stream order for every method, interleaved tasks, probes,
workers giving the rows of one process."""
import pytest

from helpers import tiny_editor
from instructedit_utils.config.experiment import ExperimentConfig
from instructedit_utils.experiments import sequential
from instructedit_utils.methods import registry


def _cfg(tmp_path, **over):
    base = dict(run_dir=str(tmp_path / "run"), stream_lengths=(1, 2, 6), paired_records=2, stream_points=(1, 3),
                batch_sizes=(1, 2), probe_records=1, max_rephrases=1, max_probes=1, natural_max_new_tokens=3,
                methods=("mend", "ft-l"), batch_methods=("mend",), workers=1, num_threads=1)
    return ExperimentConfig.from_parameters(**{**base, **over})


def test_every_method_gets_the_same_records_in_the_same_interleaved_order(tiny_llama, shared_data, tmp_path):
    model, tok = tiny_llama
    cfg = _cfg(tmp_path)
    instructed = registry.build("mend", model, tok, editor=tiny_editor(model, True))
    bare = registry.build("ft-l", model, tok, default_layers=(2, 3))
    a = sequential.stream_requests(cfg, instructed, "training", 0)
    b = sequential.stream_requests(cfg, bare, "training", 0)
    assert [r.case_id for r in a] == [r.case_id for r in b] and len(a) == 6
    assert a[0].prompt != b[0].prompt and a[0].prompt.endswith(b[0].record.prompt)  # the instruction, then the same
    assert len({r.task for r in a}) > 1  # the training tasks interleaved
    assert [r.case_id for r in sequential.stream_requests(cfg, bare, "training", 1)] != [r.case_id for r in b]
    assert {r.task for r in sequential.stream_requests(cfg, bare, "holdout", 0)} == {"zsre"}
    prompts, answers = sequential.probe_texts(cfg)
    assert len(prompts) == 3 and all(a.startswith(" ") and a.strip() for a in answers)
    with pytest.raises(ValueError, match="need 100000 records"):
        sequential.stream_requests(_cfg(tmp_path, stream_lengths=(100000,), paired_records=None, batch_sizes=()),
                                   bare, "holdout", 0)


def test_jobs_cover_every_stream_and_batch_and_read_back_what_they_wrote(tiny_llama, shared_data, tmp_path):
    model, tok = tiny_llama
    cfg = _cfg(tmp_path, holdout_methods=("mend",))
    methods = {"mend": registry.build("mend", model, tok, editor=tiny_editor(model, False), name="mend"),
               "ft-l": registry.build("ft-l", model, tok, default_layers=(2, 3), steps=2)}
    jobs = sequential.jobs(cfg, list(methods))
    described = [(j.name, getattr(j, "setting", "batch")) for j in jobs]
    assert described == [("mend", "training"), ("mend", "holdout"), ("ft-l", "training"), ("mend", "batch")]
    names = [j.name for j in sequential.jobs(cfg, ["ft-l", "grace", "mend", "calinet", "base"])]
    assert names[:2] == ["calinet", "grace"] and names[-1] == "mend" and "base" not in names
    streams, batches = sequential.evaluate(cfg, model, tok, methods)
    ended = [r for r in streams if r["when"] == "retention" and r["after"] == r["stream/length"]]
    counts = {(r["method"], r["setting"], r["stream/length"]) for r in ended}
    assert ("mend", "holdout", 2) in counts and ("ft-l", "training", 1) in counts
    assert sum(1 for r in ended if (r["method"], r["setting"], r["stream/length"]) == ("mend", "training", 6)) == 6
    assert sum(1 for r in ended if (r["method"], r["setting"], r["stream/length"]) == ("mend", "training", 1)) == 2
    assert all("edit/natural_em" in r for r in ended if r["task"] != "convsent")
    assert {r["batch/size"] for r in batches} == {1, 2} and len(batches) == 4
    assert all(j.finished() for j in jobs)
    timed = sequential.job_seconds(cfg)
    assert [t["job"] for t in timed] == [j.label for j in jobs] and all(t["seconds"] > 0 for t in timed)
    again, _ = sequential.evaluate(cfg, model, tok, methods)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "settings"} for r in rows]
    assert strip(again) == strip(streams)
    assert len(sequential.job_seconds(cfg)) == len(jobs)  # read back: nothing ran again
