"""Training/probe records from JSONL, and their rendering with a model's chat template.

A line holds either `text` (used verbatim) or `prompt` with an optional `response` (rendered as a
user turn and an assistant turn of the model's chat template).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recall.errors import RecallError


@dataclass(frozen=True)
class Record:
    prompt: str | None = None
    response: str | None = None
    text: str | None = None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise RecallError(f"data file {path} does not exist; give a JSONL file path")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecallError(f"{path}:{lineno}: not valid JSON ({err.msg}); fix or remove the line") from None
            if not isinstance(obj, dict):
                raise RecallError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_records(path: str | os.PathLike) -> list[Record]:
    """Read and validate every line before any model work starts."""
    records = []
    for lineno, obj in iter_jsonl(path):
        if isinstance(obj.get("text"), str):
            records.append(Record(text=obj["text"]))
        elif isinstance(obj.get("prompt"), str):
            response = obj.get("response")
            if response is not None and not isinstance(response, str):
                raise RecallError(f"{path}:{lineno}: field 'response' must be a string")
            records.append(Record(prompt=obj["prompt"], response=response))
        else:
            raise RecallError(
                f"{path}:{lineno}: missing field 'text' or 'prompt' (a string); each line needs one of them"
            )
    if not records:
        raise RecallError(f"data file {path} has no records; it must hold at least one JSONL line")
    return records


def chat_prompt(tokenizer, prompt: str) -> str:
    """The prompt as a user turn, ending where the assistant's answer begins."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt + "\n"


def render(tokenizer, record: Record) -> str:
    """The full text a model sees for a record: verbatim text, or chat prompt + response."""
    if record.text is not None:
        return record.text
    text = chat_prompt(tokenizer, record.prompt)
    if record.response:
        text += record.response + (tokenizer.eos_token or "")
    return text
