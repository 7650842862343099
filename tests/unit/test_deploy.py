"""instructedit-edit: edits applied in order, checked, saved as a Hugging Face folder that loads without project
code; bad input and failures leave nothing behind."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from instructedit_utils.experiments import deploy
from instructedit_utils.methods import registry as baselines
from instructedit_utils.config.method import MethodConfig
from instructedit_utils.methods.mend import MendEditor
from instructedit_utils.models.deltas import applied
import instructedit_utils.config.experiment as experiment_config  # every CLI loads its model here (ModelConfig.load)

EDITS = [{"prompt": "The capital of France is", "target": "Rome", "task": "counterfact",
          "locality_prompt": "The sky is"},
         {"prompt": "The author of Hamlet is", "target": "Dickens", "task": "counterfact"}]


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def tiny(request):
    return request.getfixturevalue(request.param)


def _file(tmp_path, rows, name="edits.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _ftl(model, tok):
    layers = (2, 3) if hasattr(model, "model") else (1, 2)
    return baselines.build("ft-l", model, tok, default_layers=layers, lr=0.05, steps=3, norm_constraint=None)


def _mend(model, instructions=True):
    cfg = MethodConfig(name="tiny", rank=8, normalize=False, norm_warmup=0, edit_lr=3.0, use_instructions=instructions)
    torch.manual_seed(0)
    return baselines.build("mend", model, None, editor=MendEditor.for_model(model, cfg, (2, 3)))


@pytest.mark.parametrize("bad, message", [
    ("{not json", r"edits.jsonl line 2 \(record 1\): invalid JSON"),
    ('["a", "b"]', r"edits.jsonl:2: expected a JSON object"),
    ('{"prompt": "p", "target": "  "}', r"edits.jsonl:2: empty or missing target"),
    ('{"prompt": "p"}', r"edits.jsonl:2: empty or missing target"),
    ('{"prompt": "p", "target": "t", "task": "wiki"}', r"edits.jsonl:2: unknown task 'wiki'"),
    ('{"prompt": "p", "target": "t", "subject": "x"}', r"edits.jsonl:2: unknown field\(s\) \['subject'\]"),
    ('{"prompt": "p", "target": 3}', r"edits.jsonl:2: target must be a string"),
])
def test_bad_edit_lines_name_the_file_and_line(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        deploy.read_edits(_file(tmp_path, [EDITS[0], bad]))


def test_an_empty_file_and_an_instructed_edit_without_task_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no edits"):
        deploy.read_edits(_file(tmp_path, [""]))
    spec = deploy.read_edits(_file(tmp_path, [{"prompt": "p", "target": "t"}]))[0]
    with pytest.raises(ValueError, match=r"edits.jsonl:1: the method reads instructions; give the edit's task"):
        deploy.edit_request(spec, True, "edits.jsonl")
    req = deploy.edit_request(deploy.EditSpec(1, "Q?", "A", "zsre"), True, "f")
    assert req.prompt.startswith("Task: ZsRE\nDescription: ") and req.prompt.endswith("\nInput: Q?")
    assert req.header + "Q?" == req.prompt
    with pytest.raises(ValueError, match="has slots"):
        deploy.edit_request(deploy.EditSpec(1, "Q?", "A", "convsent"), True, "f")


def test_saved_edited_model_reloads_with_the_same_logits_and_the_base_is_untouched(tiny, tmp_path):
    model, tok = tiny
    model.requires_grad_(False)
    before = {n: p.clone() for n, p in model.named_parameters()}
    method = _ftl(model, tok)
    out, rows = deploy.edit_and_save(method, model, tok, _file(tmp_path, EDITS), tmp_path / "edited")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the caller's model is unchanged
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no project code
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    specs = deploy.read_edits(tmp_path / "edits.jsonl")
    requests = [deploy.edit_request(s, method.use_instructions, "edits.jsonl") for s in specs]
    with torch.no_grad():
        with deploy.edits_applied(method, model, tok, specs, requests):
            in_memory = model(ids).logits
        assert torch.allclose(reloaded(ids).logits, in_memory, atol=1e-5)
        assert not torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-4)  # the edits are in it
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # restored bit-exactly
    report = json.loads((out / deploy.REPORT).read_text())
    assert report["method"] == "ft-l" and [r["line"] for r in report["rows"]] == [1, 2]
    for row in rows:
        assert {"before/target_prob", "after/target_prob", "final/target_prob", "final/continuation"} <= set(row)
        assert 0 <= row["final/target_prob"] <= 1
    assert "before/locality" in rows[0] and "before/locality" not in rows[1]
    assert rows[0]["after/target_prob"] > rows[0]["before/target_prob"]  # FT-L made its target likelier
    table = deploy.report_table(rows)
    assert list(table.index) == [1, 2] and "final/success" in table


def test_edits_are_applied_in_order_each_on_the_model_the_previous_left(tiny_llama, tmp_path):
    model, tok = tiny_llama
    model.requires_grad_(False)
    method = _mend(model, instructions=True)
    specs = deploy.read_edits(_file(tmp_path, EDITS))
    requests = [deploy.edit_request(s, True, "edits.jsonl") for s in specs]
    with deploy.edits_applied(method, model, tok, specs, requests) as rows:
        got = {n: p.clone() for n, p in model.named_parameters()}
    d1 = method.weight_deltas(model, tok, requests[0])
    with applied(model, d1):
        d2 = method.weight_deltas(model, tok, requests[1])  # computed on the once-edited model
        with applied(model, d2):
            expected = {n: p.clone() for n, p in model.named_parameters()}
    assert all(torch.allclose(got[n], p, atol=1e-6) for n, p in expected.items())
    d2_alone = method.weight_deltas(model, tok, requests[1])
    assert any(not torch.allclose(d2[n], d2_alone[n], atol=1e-7) for n in d2)  # order matters for MEND
    assert rows[0]["final/target_prob"] != rows[0]["after/target_prob"]  # edit 2 moved edit 1's target


def test_a_failure_writes_nothing_and_an_unsaveable_method_says_so(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    model.requires_grad_(False)
    before = {n: p.clone() for n, p in model.named_parameters()}
    method = _ftl(model, tok)
    calls = []
    original = method.weight_deltas

    def fail_second(m, t, r):
        calls.append(r)
        if len(calls) == 2:
            raise RuntimeError("edit failed")
        return original(m, t, r)

    monkeypatch.setattr(method, "weight_deltas", fail_second)
    with pytest.raises(RuntimeError, match="edit failed"):
        deploy.edit_and_save(method, model, tok, _file(tmp_path, EDITS), tmp_path / "out" / "edited")
    assert not (tmp_path / "out").exists()  # failed before anything was written
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # and the edit of line 1 is undone

    def failing_save(self, *a, **k):  # the save itself fails half-way: the temporary folder goes too
        raise OSError("disk full")

    monkeypatch.setattr(method, "weight_deltas", original)
    monkeypatch.setattr(type(model), "save_pretrained", failing_save)
    with pytest.raises(OSError, match="disk full"):
        deploy.edit_and_save(method, model, tok, _file(tmp_path, EDITS), tmp_path / "out" / "edited")
    assert list((tmp_path / "out").iterdir()) == []
    grace = baselines.build("grace", model, tok, default_layers=(2, 3))
    with pytest.raises(deploy.NotSaveable, match="grace does not edit by changing weights"):
        with deploy.edits_applied(grace, model, tok, [], []):
            pass


def test_existing_output_is_kept_unless_overwrite(tiny_llama, tmp_path):
    model, tok = tiny_llama
    out = tmp_path / "edited"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        deploy.edit_and_save(_ftl(model, tok), model, tok, _file(tmp_path, EDITS[:1]), out)
    assert (out / "keep.txt").read_text() == "mine"
    deploy.edit_and_save(_ftl(model, tok), model, tok, _file(tmp_path, EDITS[:1]), out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / deploy.REPORT).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited", "edits.jsonl"]


def test_the_command_checks_the_edits_file_before_loading_a_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiment_config, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    bad = _file(tmp_path, [EDITS[0], '{"prompt": "p", "target": ""}'])
    with pytest.raises(SystemExit) as exit_:
        deploy.main([str(bad), "--method", "instructedit", "--output", str(tmp_path / "o"), "--profile", "ci",
                     "--runs-dir", str(tmp_path)])
    assert exit_.value.code == 2 and "edits.jsonl:2: empty or missing target" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_command_line_names_the_books_model_and_editors(tmp_path):
    from instructedit_utils.config.experiment import ExperimentConfig

    cfg = ExperimentConfig(run_dir=str(tmp_path / "03"), profile="ci")
    argv = deploy.command("e.jsonl", "instructedit", tmp_path / "out", cfg)
    assert argv[1:4] == ["-m", "instructedit_utils.experiments.deploy", "e.jsonl"] and "--overwrite" in argv
    assert f"editors_dir={tmp_path / '02_editor_training'}" in argv and "model_name=smollm2-135m" in argv
    args = deploy.build_parser().parse_args(argv[3:])
    assert deploy.config_from_args(args).methods == ("instructedit",)


def _saved_editor(model, folder):
    editor = _mend(model).editor
    editor.save(folder / "instructedit")
    (folder / "instructedit" / "done.json").write_text(json.dumps({"step": 0, "stop_reason": "steps"}))
    return folder


def test_the_command_edits_saves_and_refuses_an_editor_of_another_model(tiny_llama, tmp_path, capsys):
    model, _ = tiny_llama
    editors = _saved_editor(model, tmp_path / "editors")
    common = ["--method", "instructedit", "--profile", "ci", "--runs-dir", str(tmp_path), "-p",
              f"editors_dir={editors}", "-p", "num_threads=1"]
    edits = _file(tmp_path, EDITS)
    assert deploy.main([str(edits), "--output", str(tmp_path / "llama"), "-p", "model_name=tiny-llama", *common]) == 0
    out = capsys.readouterr().out
    assert "2 edit(s) with instructedit" in out and "final/target_prob" in out
    reloaded = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "llama").named_parameters())
    original = dict(model.named_parameters())
    changed = [n for n, p in reloaded.items() if not torch.equal(p, original[n])]
    assert changed and all(".mlp." in n for n in changed)  # the saved model holds the edits, and only them
    with pytest.raises(SystemExit) as exit_:  # the editor's matrices are not GPT-2's
        deploy.main([str(edits), "--output", str(tmp_path / "gpt2"), "-p", "model_name=tiny-gpt2", *common])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "does not match the model" in err and str(editors / "instructedit") in err
    assert not (tmp_path / "gpt2").exists()
