import os

import pytest
import torch

from instructedit_utils.data.tasks import parse_records
from instructedit_utils.models.loading import load_model
from instructedit_utils.util.paths import DataNotFoundError, data_dir


@pytest.fixture(scope="session")
def tiny_llama():
    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    return load_model("tiny-gpt2")


def require_shared(what: str, error: str) -> None:
    """A test that needs ``../shared`` (the task data, the paper's text) skips without it on a developer's machine and
    fails in CI (``$CI`` set), where a missing file means a broken set-up, never a test to leave out."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} must be available in CI: {error}")
    pytest.skip(f"{what} not available: {error}")


@pytest.fixture(scope="session")
def shared_data():
    try:
        return data_dir()
    except DataNotFoundError as exc:
        require_shared("the task data", str(exc))


def cf_row(**over):
    row = {
        "subject": "Leonardo DiCaprio",
        "prompt": "The name of the country of citizenship of Leonardo DiCaprio is",
        "target_new": "Syria",
        "ground_truth": "United States of America",
        "portability": {"Reasoning": [{"prompt": "The capital of the country of citizenship of Leonardo DiCaprio is",
                                       "ground_truth": [["Damascus", "Sham city"]]}]},
        "locality": {"Relation_Specificity": [{"prompt": "The name of the father of Leonardo DiCaprio is",
                                               "ground_truth": "George DiCaprio"}]},
    }
    row.update(over)
    return row


@pytest.fixture
def cf_records():
    rows = [cf_row(), cf_row(subject="Paris", prompt="Paris is the capital of", target_new="Germany",
                             ground_truth="France")]
    return parse_records("counterfact", rows, "hand.json").records


@pytest.fixture
def convsent_records():
    rows = [{"ent": "Moscow", "pos": [" I love it. ", "Great city."], "neg": ["I hate it.", "Too cold."]},
            {"ent": "tea", "pos": ["Tea is lovely.", "I like a cup."], "neg": ["Tea is bland.", "Not my drink."]}]
    return parse_records("convsent", rows, "hand_convsent.json").records


class NextTokenModel(torch.nn.Module):
    """A hand-computable 'language model': always predicts token (current + 1) mod V with probability ~1."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.full((*input_ids.shape, self.vocab), -20.0)
        logits.scatter_(-1, ((input_ids + 1) % self.vocab)[..., None], 20.0)

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out
