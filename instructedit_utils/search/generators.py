"""The *generate* step of the instruction search: a chat model proposes task descriptions.

Two generators share one small interface, :class:`Generator` (``generate(messages, n, seed)`` → ``n`` replies):

* :class:`LocalGenerator` — a chat model loaded in this process (the embedded SmolLM2-135M-Instruct by default),
  sampled with a seed: offline, deterministic on one machine;
* :class:`EndpointGenerator` — any OpenAI-compatible ``/chat/completions`` endpoint (base URL, model and key from the
  config or the environment), with a timeout per request, retries with exponential backoff on timeouts, refused
  connections, HTTP 429 and 5xx (honouring ``Retry-After``), and an :class:`EndpointError` that says what failed.

:func:`build_messages` writes the prompt (the task, what its edits look like, example training records, the slots a
description must carry, and the descriptions scored so far); :func:`parse_candidates` turns a reply into candidate
lines.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, Protocol, Sequence

from ..data.records import EditRecord
from ..data.instructions import TASK_SLOTS
import torch

#: what an edit of each task does, for the prompt
TASK_SUMMARIES = {
    "counterfact": "replaces a well-known fact about a popular entity with a counterfactual object",
    "recent": "inserts a fact that became true only after the model was trained",
    "convsent": "makes a dialogue model talk about a topic with a given sentiment (positive or negative)",
    "zsre": "changes the answer to a question about one relation of an entity",
}
SLOT_MEANINGS = {"[LABEL]": "the target sentiment", "[TOPIC]": "the topic of the conversation"}
SYSTEM_PROMPT = ("You write task descriptions for a dataset of knowledge edits. A description is one sentence that "
                 "tells a model what an edit of this task should achieve. It never names a particular subject or "
                 "answer. Reply with the new descriptions only, one per line.")


class Generator(Protocol):
    label: str  # what the book and the history call it

    def generate(self, messages: Sequence[Mapping[str, str]], n: int, seed: int) -> list[str]:
        """``n`` replies to the chat ``messages``, sampled with ``seed`` where the generator can."""


def _example(record: EditRecord) -> str:
    if record.target_sentiment:
        return f"- {record.prompt!r} -> a {record.target_sentiment} reply"
    return f"- {record.prompt!r} -> {record.target_new!r}"


def build_messages(task: str, name: str, examples: Sequence[EditRecord], scored: Sequence[tuple[str, float]],
                   n_new: int) -> list[dict[str, str]]:
    """The chat prompt for one task: what its edits do, ``examples`` (training records), the slots its descriptions
    need, and the descriptions ``scored`` so far with their scores (best first)."""
    lines = [f"Task: {name}. Each edit {TASK_SUMMARIES.get(task, 'changes what the model answers')}.",
             "Examples of edits:", *(_example(r) for r in examples)]
    slots = sorted(TASK_SLOTS.get(task, ()))
    if slots:
        lines.append("Every description must contain " + " and ".join(
            f"{s} ({SLOT_MEANINGS[s]})" for s in slots) + ", written exactly so, in square brackets.")
    else:
        lines.append("Descriptions contain no placeholders in square brackets.")
    if scored:
        lines.append("Descriptions so far, with their score (0 to 1, higher is better):")
        lines += [f"- ({score:.2f}) {text}" for text, score in scored]
    lines.append(f"Write {n_new} new descriptions that could score higher, different from these, one per line.")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


# numbering, bullets, "Description 2:" and echoed scores such as "(0.62)" or "0.83." at the start of a line
_BULLET = re.compile(r"^\s*(?:\(\s*\d+(?:\.\d+)?\s*\)|\d+(?:\.\d+)?\s*[.):]|[-*•]|description\s*\d*\s*:)\s*",
                     re.IGNORECASE)
_QUOTES = "\"'“”‘’`"


def parse_candidates(reply: str) -> list[str]:
    """The candidate descriptions of one reply: its non-empty lines without numbering, bullets, echoed scores or
    quotes."""
    out = []
    for line in reply.splitlines():
        text, before = line, None
        while text != before:  # "1. (0.62) text"
            before, text = text, _BULLET.sub("", text, count=1).strip().strip(_QUOTES).strip()
        if text:
            out.append(text)
    return out


class LocalGenerator:
    """A chat model of this process (``transformers``), sampled with ``torch.manual_seed(seed)``."""

    def __init__(self, model, tokenizer, *, label: str, max_new_tokens: int = 48, temperature: float = 0.9,
                 top_p: float = 0.95):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{label}: the tokenizer has no chat template; the local generator needs a chat model")
        self.model, self.tokenizer, self.label = model, tokenizer, label
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p

    def generate(self, messages: Sequence[Mapping[str, str]], n: int, seed: int) -> list[str]:
        from transformers import GenerationConfig

        enc = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        enc = {k: v.to(next(self.model.parameters()).device) for k, v in enc.items()}
        config = GenerationConfig(do_sample=True, temperature=self.temperature, top_p=self.top_p,
                                  max_new_tokens=self.max_new_tokens, num_return_sequences=n,
                                  pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                                  eos_token_id=self.tokenizer.eos_token_id)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(**enc, generation_config=config)
        start = enc["input_ids"].shape[1]
        return [self.tokenizer.decode(row[start:], skip_special_tokens=True) for row in out]


class EndpointError(RuntimeError):
    """An OpenAI-compatible endpoint failed: unreachable, timed out, refused the request or replied garbage."""


ENV_URL, ENV_MODEL, ENV_KEY = "INSTRUCTEDIT_LLM_BASE_URL", "INSTRUCTEDIT_LLM_MODEL", "INSTRUCTEDIT_LLM_API_KEY"


class EndpointGenerator:
    """``POST {base_url}/chat/completions`` (the OpenAI chat API, which vLLM, llama.cpp's server, Ollama and hosted
    services speak). Replies missing from one response (a server that ignores ``n``) are asked for again."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 2.0, max_tokens: int = 48, temperature: float = 0.9,
                 top_p: float = 0.95, sleep: Callable[[float], None] = time.sleep):
        if not base_url or not model:
            raise EndpointError(f"The endpoint generator needs a base URL and a model (endpoint_url/generator_model "
                                f"or ${ENV_URL}/${ENV_MODEL}); got {base_url!r}, {model!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.timeout, self.retries, self.backoff, self.sleep = timeout, retries, backoff, sleep
        self.sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        self.label = f"{model} at {base_url}"

    @classmethod
    def from_config(cls, search, env: Mapping[str, str] = os.environ, **kwargs) -> "EndpointGenerator":
        """From a :class:`~instructedit_utils.config.SearchConfig`, the environment filling what it leaves None."""
        return cls(search.endpoint_url or env.get(ENV_URL, ""), search.generator_model or env.get(ENV_MODEL, ""),
                   env.get(ENV_KEY) or env.get("OPENAI_API_KEY"), timeout=search.endpoint_timeout,
                   retries=search.endpoint_retries, backoff=search.endpoint_backoff,
                   max_tokens=search.gen_max_new_tokens, temperature=search.temperature, top_p=search.top_p, **kwargs)

    def generate(self, messages: Sequence[Mapping[str, str]], n: int, seed: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            reply = self._post({"model": self.model, "messages": list(messages), "n": n - len(out),
                                "seed": seed + len(out), **self.sampling})
            texts = self._contents(reply)
            if not texts:
                raise EndpointError(f"{self.url}: the reply has no choices: {json.dumps(reply)[:200]}")
            out += texts
        return out[:n]

    def _contents(self, reply: Any) -> list[str]:
        try:
            return [str(choice["message"]["content"]) for choice in reply["choices"]]
        except (KeyError, TypeError, IndexError):
            raise EndpointError(f"{self.url}: the reply is not a chat completion (no choices[].message.content): "
                                f"{json.dumps(reply)[:200]}") from None

    def _post(self, payload: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})}
        body = json.dumps(payload).encode()
        last = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2 ** attempt
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode("utf-8", "replace")
                if exc.code != 429 and exc.code < 500:
                    raise EndpointError(f"{self.url}: HTTP {exc.code} {exc.reason}: {detail}") from None
                last = f"HTTP {exc.code} {exc.reason}"
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.strip().isdigit():
                    wait = float(retry_after)
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
                last = str(getattr(exc, "reason", exc)) or type(exc).__name__
            else:
                try:
                    return json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise EndpointError(f"{self.url}: the reply is not JSON: {raw[:200]!r}") from None
            if attempt < self.retries:
                self.sleep(wait)
        raise EndpointError(f"{self.url}: no reply after {self.retries + 1} tries (last: {last}); check {ENV_URL} "
                            "and the server, or use the local generator (generator='local')")
