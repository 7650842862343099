import json

import pytest

from instructedit_utils.data.records import RecordError
from instructedit_utils.data.tasks import (SplitSpec, TASK_SPECS, balanced_subset, convsent_both_sentiments,
                                           load_split, load_task, parse_records, sample, split_indices, with_sentiment)
from instructedit_utils.util.paths import DATA_ENV, DataNotFoundError, data_dir
from conftest import cf_row


def test_validation_is_not_the_training_tail():
    idx_val = split_indices(1428, SplitSpec("train", 0, 100))
    assert idx_val != list(range(1328, 1428))
    assert idx_val == sorted(idx_val)
    assert split_indices(1428, SplitSpec("train", 0, 100)) == idx_val  # deterministic


def test_answers_formats_are_flattened():
    rows = [cf_row(ground_truth="France"),
            cf_row(ground_truth=["France", "FR"]),
            cf_row(ground_truth=[["France", "French Republic"], ["Gaul"]])]
    recs = parse_records("counterfact", rows, "f.json").records
    assert recs[0].ground_truth == ("France",)
    assert recs[1].ground_truth == ("France", "FR")
    assert recs[2].ground_truth == ("France", "French Republic", "Gaul")
    assert recs[0].portability[0].answers == ("Damascus", "Sham city")
    assert recs[0].locality[0].kind == "Relation_Specificity"


@pytest.mark.parametrize("bad,message", [
    ({"target_new": ""}, "field 'target_new' is empty"),
    ({"target_new": 3}, "field 'target_new' must be a string"),
    ({"prompt": None}, "field 'prompt' must be a string"),
    ({"locality": {"Relation_Specificity": [{"prompt": "x"}]}}, "needs 'prompt' and 'ground_truth'"),
    ({"portability": {"Reasoning": [{"prompt": "x", "ground_truth": [3]}]}}, "answers must be strings or lists"),
    ({"locality": []}, "field 'locality' must be a dict"),
])
def test_malformed_records_name_file_and_index(bad, message):
    rows = [cf_row(), cf_row(**bad)]
    with pytest.raises(RecordError, match=rf"bad\.json record 1: .*{message}"):
        parse_records("counterfact", rows, "bad.json")


def test_missing_field_is_an_error():
    row = cf_row()
    del row["subject"]
    with pytest.raises(RecordError, match=r"x\.json record 0: missing field 'subject'"):
        parse_records("counterfact", [row], "x.json")


def test_empty_answer_items_are_dropped_and_counted():
    row = cf_row(locality={"Relation_Specificity": [{"prompt": "a", "ground_truth": ""},
                                                    {"prompt": "b", "ground_truth": "B"}]})
    split = parse_records("counterfact", [row], "f.json")
    assert [p.prompt for p in split.records[0].locality] == ["b"]
    assert split.report["dropped_items"] == 1


def test_records_without_locality_borrow_and_report():
    rows = [cf_row(locality={}), cf_row(subject="X", locality={"Forgetfulness": [{"prompt": "f", "ground_truth": "F"}]}),
            cf_row(subject="Y")]
    split = parse_records("recent", rows, "r.json")
    borrowed = split.records[0].locality
    assert [p.kind for p in borrowed] == ["Borrowed_Relation_Specificity"]
    assert borrowed[0].prompt == "The name of the father of Leonardo DiCaprio is"  # from record 2 (1 has none)
    assert split.records[1].locality[0].kind == "Forgetfulness"  # own locality kept
    assert split.report["borrowed_locality"] == 1


def test_paraphrase_cleaning():
    row = cf_row(generate_prompt=["1. Which country is he from?", "2. He holds a passport from [", "", "(Note: x)",
                                  "10. Where is he a citizen?"])
    split = parse_records("counterfact", [row], "t.jsonl")
    assert split.records[0].rephrases == ("Which country is he from?", "Where is he a citizen?")
    assert split.report["dropped_rephrases"] == 3


def test_convsent_records(convsent_records):
    a, b = convsent_records
    assert a.prompt == "What do you think of Moscow?" and a.topic == "Moscow"
    assert a.target_sentiment == "positive" and a.target_new == "I love it."
    assert b.target_sentiment == "negative" and b.target_new == "Tea is bland."
    assert a.locality[0].prompt == "What do you think of tea?"
    assert a.target_responses == ("I love it.", "Great city.") and a.opposite_responses == ("I hate it.", "Too cold.")
    flipped = with_sentiment(a, "negative")
    assert flipped.target_new == "I hate it." and flipped.record_id.endswith("/negative")
    assert len(convsent_both_sentiments(convsent_records)) == 4


def test_convsent_needs_both_sentiments():
    with pytest.raises(RecordError, match=r"c\.json record 0: field 'neg' has no non-empty response"):
        parse_records("convsent", [{"ent": "x", "pos": ["good"], "neg": [" "]}], "c.json")


def test_balanced_subset(convsent_records):
    both = convsent_both_sentiments(convsent_records * 3)
    sub = balanced_subset(both, 6, key=lambda r: r.target_sentiment, seed=1)
    assert len(sub) == 6
    assert sum(r.target_sentiment == "positive" for r in sub) == 3
    assert balanced_subset(both, 6, key=lambda r: r.target_sentiment, seed=1) == sub
    with pytest.raises(ValueError, match="Asked for 100 records but only"):
        balanced_subset(both, 100)


def test_sample_is_deterministic_and_ordered(cf_records):
    recs = cf_records * 5
    s = sample(recs, 4, seed=3)
    assert s == sample(recs, 4, seed=3) and len(s) == 4
    assert sample(recs, None) == recs


def test_missing_data_dir_error_mentions_knowedit(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="KnowEdit"):
        data_dir()


def test_env_override_reads_other_folder(monkeypatch, tmp_path):
    (tmp_path / "zsre").mkdir()
    rows = [{"subject": "S", "src": "Q?", "pred": "p", "rephrase": "Q2?", "alt": "A", "answers": ["old"],
             "loc": "nq question: x", "loc_ans": "y", "cond": "",
             "portability": {"New Question": "PQ?", "New Answer": "PA"}}] * 3
    (tmp_path / "zsre" / "zsre_mend_eval_portability_gpt4.json").write_text(json.dumps(rows))
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    recs = load_task("zsre", "all")
    assert len(recs) == 3 and recs[0].target_new == "A" and recs[0].portability[0].answers == ("PA",)


ZSRE_MEND = {"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?", "pred": "x",
             "rephrase": "What university did Watts Humphrey take part in?", "alt": "University of Michigan",
             "answers": ["Illinois Institute of Technology"], "loc": "nq question: who wrote the iliad",
             "loc_ans": "Homer", "cond": "",
             "portability": {"New Question": "In which state is the university Watts Humphrey attended?",
                             "New Answer": "Michigan"}}
ZSRE_KNOWEDIT = {
    "subject": "Epaspidoceras", "target_new": "Noctuidae", "prompt": "Which family does Epaspidoceras belong to?",
    "ground_truth": ["Aspidoceratidae"], "rephrase_prompt": "What family are Epaspidoceras?", "cond": "",
    "locality": {"Relation_Specificity": [{"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]},
                                          {"prompt": "Epaspidoceras taxon rank", "ground_truth": ["genus"]}]},
    "portability": {"Reasoning": [{"prompt": "What is the common name for the family Epaspidoceras belongs to?",
                                   "ground_truth": "Owlet moths"}],
                    "Subject_Aliasing": [{"prompt": "Which family does Epaspidoceras (genus) belong to?",
                                          "ground_truth": [["Noctuidae", "owlet moths"]]}]},
}


def test_zsre_layouts_are_detected_per_file_and_keep_every_probe():
    mend = parse_records("zsre", [ZSRE_MEND], "zsre/mend.json").records[0]
    assert (mend.prompt, mend.target_new, mend.rephrases) == (ZSRE_MEND["src"], ZSRE_MEND["alt"],
                                                              (ZSRE_MEND["rephrase"],))
    assert [(p.prompt, p.answers) for p in mend.locality] == [("nq question: who wrote the iliad", ("Homer",))]
    assert mend.portability[0].answers == ("Michigan",)
    ke = parse_records("zsre", [ZSRE_KNOWEDIT], "zsre/ZsRE-test-all.json").records[0]
    assert (ke.prompt, ke.target_new, ke.ground_truth) == (ZSRE_KNOWEDIT["prompt"], "Noctuidae", ("Aspidoceratidae",))
    assert ke.rephrases == ("What family are Epaspidoceras?",)
    assert [p.prompt for p in ke.locality] == ["The taxon rank of Epaspidoceras is", "Epaspidoceras taxon rank"]
    assert [(p.kind, p.answers) for p in ke.portability] == [("Reasoning", ("Owlet moths",)),
                                                             ("Subject_Aliasing", ("Noctuidae", "owlet moths"))]


def test_zsre_layout_errors_name_file_and_record():
    with pytest.raises(RecordError, match=r"zsre/mixed\.json record 1: missing field 'src'"):
        parse_records("zsre", [ZSRE_MEND, ZSRE_KNOWEDIT], "zsre/mixed.json")
    with pytest.raises(RecordError, match=r"z\.json record 0: fields \['a'\] match no zsre layout"):
        parse_records("zsre", [{"a": 1}], "z.json")


def test_knowedit_zsre_file_is_found_and_loaded(monkeypatch, tmp_path):
    from instructedit_utils.data.tasks import data_fingerprint, task_file

    (tmp_path / "zsre").mkdir()
    (tmp_path / "zsre" / "ZsRE-test-all.json").write_text(json.dumps([ZSRE_KNOWEDIT] * 4))
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert task_file("zsre", "eval") == "zsre/ZsRE-test-all.json"
    recs = load_task("zsre", "all")
    assert len(recs) == 4 and len(recs[0].locality) == 2 and recs[0].source == "zsre/ZsRE-test-all.json"
    assert list(data_fingerprint({"zsre": "all"})) == ["zsre/ZsRE-test-all.json"]
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "zsre"))  # a folder without the layout
    with pytest.raises(FileNotFoundError, match="No zsre file .*zsre_mend_eval_portability_gpt4.json"):
        load_task("zsre", "all")


@pytest.mark.parametrize("name,text,message", [
    ("wiki_recent/recent_train.json", '[{"subject": "a",}]', r"recent_train\.json: invalid JSON at line 1 column"),
    ("wiki_recent/recent_train.json", '{"subject": "a"}', r"recent_train\.json: expected a JSON array"),
    ("wiki_recent/recent_train.json", '[{"subject": "a"}, 3]', r"recent_train\.json record 1: expected an object"),
    ("wiki_counterfact/DERIVED_wiki_counterfact_test_cf-generate-10.jsonl", '{"a": 1}\n{"a": \n',
     r"generate-10\.jsonl line 2 \(record 1\): invalid JSON"),
])
def test_data_file_parse_errors_name_the_file(monkeypatch, tmp_path, name, text, message):
    path = tmp_path / name
    path.parent.mkdir(parents=True)
    path.write_text(text)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    task = "recent" if "recent" in name else "counterfact"
    with pytest.raises(RecordError, match=message):
        load_task(task, "test")


def test_data_fingerprint_follows_file_contents(monkeypatch, tmp_path):
    from instructedit_utils.data.tasks import data_fingerprint

    (tmp_path / "wiki_recent").mkdir()
    path = tmp_path / "wiki_recent" / "recent_train.json"
    path.write_text(json.dumps([cf_row()]))
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    first = data_fingerprint({"recent": "test"})
    assert first == data_fingerprint({"recent": "val"}) and list(first) == ["wiki_recent/recent_train.json"]
    path.write_text(json.dumps([cf_row(target_new="Peru")]))
    assert data_fingerprint({"recent": "test"}) != first
