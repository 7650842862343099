import math

import pytest

from instructedit_utils.models.metrics import (Encoded, TargetScore, bootstrap_ci, encode_pair, join_prompt_target,
                                               locality_agreement, ngram_entropy, score_encoded, score_targets,
                                               sentiment_edit_success, sentiment_success)
from conftest import NextTokenModel


def test_join_prompt_target():
    assert join_prompt_target("The capital is", "Paris") == ("The capital is Paris", 14)
    assert join_prompt_target("Q?\n", "Paris") == ("Q?\nParis", 3)
    assert join_prompt_target("Q:", " I like it") == ("Q: I like it", 2)
    with pytest.raises(ValueError, match="Empty target"):
        join_prompt_target("Q", "")


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_target_tokens_decode_to_target_with_and_without_bos(fixture, request):
    _, tok = request.getfixturevalue(fixture)
    for prompt, target in [("The gender of Ingrīda Amantova is", "female"), ("What do you think of tea?", "Tea is bland.")]:
        enc = encode_pair(tok, prompt, target)
        assert tok.decode([enc.input_ids[i] for i in enc.target_positions]) == " " + target
        assert tok.decode(enc.input_ids[:enc.target_positions[0]], skip_special_tokens=True) == prompt
    bos = tok("x")["input_ids"][0] == tok.bos_token_id
    assert bos == (fixture == "tiny_llama")  # one tokenizer adds BOS, the other does not


def test_token_accuracy_hand_computed():
    """The model predicts token + 1 after every token; targets 7, 9, 10 after 5, 6 (then 7, 9): the model says 7, 8
    and 10, so two of three target tokens are right."""
    model = NextTokenModel(20)
    (score,) = score_encoded(model, [Encoded((5, 6, 7, 9, 10), (2, 3, 4))], pad_id=0)
    assert score.targets == (7, 9, 10) and score.predictions == (7, 8, 10)
    assert score.acc == pytest.approx(2 / 3)
    assert score.logprobs[0] > -1e-6 and score.logprobs[1] < -30.0  # the predicted token has probability ~1


def test_the_first_target_token_follows_the_prompts_last_token(tiny_gpt2):
    _, tok = tiny_gpt2
    enc = encode_pair(tok, "Paris is", " the capital")
    assert enc.target_positions[0] == len(tok("Paris is", add_special_tokens=False)["input_ids"])


def test_batched_equals_one_by_one(tiny_llama):
    model, tok = tiny_llama
    prompts = ["The name of the country is", "A", "What do you think of Moscow? I mean really, what?"]
    targets = ["Syria", "very long answer with many tokens", "fine"]
    one = [score_targets(model, tok, [p], [t])[0] for p, t in zip(prompts, targets)]
    many = score_targets(model, tok, prompts, targets, batch_size=3)
    for a, b in zip(one, many):
        assert a.targets == b.targets and a.predictions == b.predictions
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_locality_agreement():
    pre = TargetScore((1, 2, 3, 4), (1, 9, 3, 7), (0.0,) * 4)
    post = TargetScore((1, 2, 3, 4), (1, 9, 5, 5), (0.0,) * 4)
    assert locality_agreement(pre, post) == 0.5
    assert locality_agreement(pre, pre) == 1.0
    with pytest.raises(ValueError, match="same answer tokens"):
        locality_agreement(pre, TargetScore((1,), (1,), (0.0,)))


def test_ngram_entropy_hand_computed():
    # words a b a b: bigrams ab, ba, ab -> H2 = H(2/3, 1/3); trigrams aba, bab -> H3 = 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("a a a a a") == 0.0  # one repeated bigram and trigram
    assert ngram_entropy("x") == 0.0
    assert ngram_entropy("the cat sat on a mat .") > ngram_entropy("the the the the the the")


def test_sentiment_success_hand_computed():
    assert sentiment_success([-1.0, -2.0], [-1.5, -3.0]) == 0.75
    assert sentiment_success([-1.0], [-1.0]) == 0.5
    with pytest.raises(ValueError, match="needs responses of both sentiments"):
        sentiment_success([], [-1.0])


def test_bootstrap_ci():
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5, 0.5)
    mean, lo, hi = bootstrap_ci([0, 1] * 50, seed=1)
    assert mean == 0.5 and lo < 0.5 < hi and hi - lo < 0.3
    assert math.isnan(bootstrap_ci([])[0])


@pytest.mark.parametrize("continuation, target, success", [
    (" Paris, France.", "Paris", 1.0),  # match, then punctuation
    ("paris", "Paris", 1.0),  # case
    ("   Paris\n is", " Paris ", 1.0),  # white space on both sides
    ('"Paris" is the answer', "Paris.", 1.0),  # quotes around, the target's full stop
    ("New  York City", "New York", 1.0),  # runs of spaces
    ("Parisian food", "Paris", 0.0),  # no word boundary after the target
    ("Par", "Paris", 0.0),  # partial: the continuation stopped short
    ("New Jersey", "New York", 0.0),  # partial: the first word only
    ("The answer is Paris", "Paris", 0.0),  # not at the start
    ("Output: Paris", "Paris", 1.0),  # the answer label the instruction format invites
    ("\nAnswer: 'Paris'", "Paris", 1.0),
    ("Output: Output: Paris", "Paris", 0.0),  # one label only
])
def test_generation_success_on_hand_made_continuations(continuation, target, success):
    from instructedit_utils.models.metrics import generation_success

    assert generation_success(continuation, target) == success


@pytest.mark.parametrize("continuation, target, em, contains", [
    (" Paris.\nThe city of light", "Paris", 1.0, 1.0),  # stops at the sentence end
    ("\n\nParis\nQuestion: next", "Paris", 1.0, 1.0),  # leading line breaks skipped, stops at the next one
    (" Paris, France is where", "Paris", 0.0, 1.0),  # said more than the target: contained, not exact
    (" The answer is Paris. It is", "Paris", 0.0, 1.0),
    (" Output: the Eiffel Tower!", "Eiffel Tower", 1.0, 1.0),  # label, article and punctuation normalised away
    (" 3.5 million people live there", "3.5 million", 0.0, 1.0),  # a decimal point does not end the answer
    (" U.S.A is", "U.S.A", 0.0, 1.0),
    (" Parisian food", "Paris", 0.0, 0.0),  # whole words only
    (" Germany\nParis", "Paris", 0.0, 0.0),  # what comes after the stop does not count
    ("", "Paris", 0.0, 0.0),  # said nothing
    (" New  York", "new york.", 1.0, 1.0),
])
def test_natural_stop_success_on_hand_made_continuations(continuation, target, em, contains):
    from instructedit_utils.models.metrics import natural_success

    assert natural_success(continuation, target) == {"em": em, "contains": contains}


def test_natural_answer_cuts_at_the_first_stop_and_refuses_an_empty_target():
    from instructedit_utils.models.metrics import natural_answer, natural_success

    assert natural_answer(" Rome. Then Paris.") == "Rome"
    assert natural_answer(" Rome?\n") == "Rome"
    assert natural_answer("no stop at all") == "no stop at all"
    with pytest.raises(ValueError, match="a word in it"):
        natural_success("x", " the . ")


def test_generation_success_refuses_an_empty_target():
    from instructedit_utils.models.metrics import generation_success

    with pytest.raises(ValueError, match="non-empty target"):
        generation_success("x", " . ")


def test_sentiment_edit_success_hand_computed():
    # token means: target after -1.0 (over 3 tokens of two responses), opposite after -3.0, target before -2.0
    after_t, after_o, before_t = [[-0.5, -1.5], [-1.0]], [[-3.0], [-2.0, -4.0]], [[-2.0], [-2.5, -1.5]]
    got = sentiment_edit_success(after_t, after_o, before_t)
    z_sent = 1 / (1 + math.exp(-2.0))  # sigmoid(-1 - (-3))
    assert got["sentiment/z_sent"] == pytest.approx(z_sent)
    assert got["sentiment/z_topic"] == 1.0  # exp(-1 - (-2)) = e > 1, capped at 1
    assert got["sentiment/es"] == pytest.approx(z_sent)
    # the edit made the topic's target responses less likely: z_topic = exp(-1.0 - (-0.5)) = exp(-0.5)
    lower = sentiment_edit_success(after_t, after_o, [[-0.5], [-0.5]])
    assert lower["sentiment/z_topic"] == pytest.approx(math.exp(-0.5))
    assert lower["sentiment/es"] == pytest.approx(z_sent * math.exp(-0.5))
    # token-level pooling, not a mean of per-response means: (-0.5 - 1.5 - 1.0) / 3 = -1.0, not (-1.0 - 1.0) / 2
    pooled = sentiment_edit_success([[-0.5, -1.5, -4.0], [-1.0]], [[-2.0]])
    assert pooled["sentiment/z_sent"] == pytest.approx(1 / (1 + math.exp(-(-7.0 / 4 + 2.0))))
    assert pooled["sentiment/z_topic"] == 1.0  # no reference: the unedited model itself
    with pytest.raises(ValueError, match="at least one response token"):
        sentiment_edit_success([], [[-1.0]])
