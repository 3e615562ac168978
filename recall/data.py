"""Examples from JSONL, and how a model sees them.

An `Example` is the one record type: a task's example (prompt, answer and, for a closed set of
answers, its choices), a training/probe line of a JSONL file, or verbatim text. A JSONL line holds
either `text` (used verbatim) or `prompt` with an optional `response` (the example's answer). A
model with a chat template sees them as a user turn and an assistant turn ("chat" rendering); a
model without one, like most pre-trained checkpoints, sees the prompt, a newline, then the answer ("plain"
rendering, as OpenCompass prompts base models). `rendering` decides, for fine-tuning, features,
merge data and evaluation alike, and `encode` is the one way an example becomes labelled tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from recall.errors import RecallError, read_text


@dataclass(frozen=True)
class Example:
    prompt: str | None = None  # e.g. an instruction in the paper's appendix-C QA format
    # The reference answer (label word, letter, answer text, French sentence): a JSONL line's `response`
    answer: str | None = None
    choices: tuple[str, ...] = ()  # the answers it can have, when a closed set: label words, its option letters
    text: str | None = None  # verbatim text, instead of a prompt and answer


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise RecallError(f"data file {path} does not exist; give a JSONL file path")
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecallError(f"{path}:{lineno}: not valid JSON ({err.msg}); fix or remove the line") from None
        if not isinstance(obj, dict):
            raise RecallError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Read and validate every line before any model work starts."""
    records = []
    for lineno, obj in iter_jsonl(path):
        if isinstance(obj.get("text"), str):
            records.append(Example(text=obj["text"]))
        elif isinstance(obj.get("prompt"), str):
            response = obj.get("response")
            if response is not None and not isinstance(response, str):
                raise RecallError(f"{path}:{lineno}: field 'response' must be a string")
            records.append(Example(prompt=obj["prompt"], answer=response))
        else:
            raise RecallError(
                f"{path}:{lineno}: missing field 'text' or 'prompt' (a string); each line needs one of them"
            )
    if not records:
        raise RecallError(f"data file {path} has no records; it must hold at least one JSONL line")
    return records


Rendering = Literal["chat", "plain"]


def rendering(tokenizer) -> Rendering:
    """ "chat" for a tokenizer with a chat template, else "plain"."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "plain"


def chat_prompt(tokenizer, prompt: str) -> str:
    """The prompt as the model sees it, ending where its answer begins: a user turn of its chat
    template, or (plain) the prompt and a newline. Every caller tokenises without special tokens, so
    a plain prompt starts with those the tokenizer itself would put first (Llama's BOS)."""
    if rendering(tokenizer) == "chat":
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _leading_special_tokens(tokenizer) + prompt + "\n"


def _leading_special_tokens(tokenizer) -> str:
    ids = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    start = next((i for i in range(len(ids)) if ids[i : i + len(bare)] == bare), 0)
    return tokenizer.decode(ids[:start])


def render(tokenizer, example: Example) -> str:
    """The full text a model sees for an example: verbatim text, or its prompt + answer + EOS."""
    if example.text is not None:
        return example.text
    text = chat_prompt(tokenizer, example.prompt)
    if example.answer:
        text += example.answer + (tokenizer.eos_token or "")
    return text


IGNORE_INDEX = -100  # the label a causal-LM loss skips: prompt tokens and padding


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt
    prompt_tokens: int  # tokens before the answer (all of them for an example without one)


def encode(tokenizer, example: Example, max_length: int) -> Encoded:
    """An example's tokens as the model sees them (`render`), cut to `max_length`, labelled on the answer.

    Prompt and answer are tokenised separately, the prompt exactly as generation sees it (a rendered
    prompt ends at a token boundary: the chat turn's end or a plain prompt's newline). An example with no
    answer token left to learn (text, a prompt alone, or an answer cut off by `max_length`) is labelled
    on every token, so its loss is the plain language-model loss rather than undefined.
    """

    def tokens(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    if example.text is not None or not example.answer:
        ids = tokens(render(tokenizer, example))[:max_length]
        return Encoded(ids, list(ids), len(ids))
    prompt_text = chat_prompt(tokenizer, example.prompt)
    prompt, answer = tokens(prompt_text), tokens(render(tokenizer, example)[len(prompt_text) :])
    ids = (prompt + answer)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
    return Encoded(ids, labels if len(prompt) < max_length else list(ids), len(prompt))
