"""The OpenCompass model of every evaluation: OpenCompass's Hugging Face chat model fed prompts that
recall has rendered, plus answer likelihoods for `recall.evaluation.inferencer.AnswerPPLInferencer`.

Generation is OpenCompass's own (`HuggingFacewithChatTemplate.generate`), with a chat template that
passes the rendered prompt through unchanged: recall renders every prompt as fine-tuning does
(`recall.data.chat_prompt`), with the model's own chat template or, for a model without one, plain,
so the model's template must not apply a second time. Likelihood is added here
because OpenCompass 0.5.4 has no correct answer-only likelihood for batches: `HuggingFaceBaseModel.get_ppl`
masks the first `mask_length` positions of the *padded* row, but its tokenizer pads on the left, so
every shorter row of a batch is scored on part of its prompt too; and `get_loglikelihood` masks as
many leading tokens as the continuation has, not the context. It also runs the prompt once per
candidate answer; here each prompt runs once for all its candidates.

`VLLMChatModel` and `TurboMindChatModel` are OpenCompass's vLLM and LMDeploy chat models given the
same pass-through template, for `evaluate.backend: vllm | lmdeploy` on a GPU. They generate only
(no likelihoods) and were not run here: this project's machine has neither a GPU nor those packages.
"""

from __future__ import annotations

import torch
from opencompass.models import HuggingFacewithChatTemplate, TurboMindModelwithChatTemplate, VLLMwithChatTemplate
from transformers import Cache

Tail = tuple[int, list[int]]  # (prompt row in the batch, token ids of an answer of 2+ tokens)
VERBATIM = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


class ChatModel(HuggingFacewithChatTemplate):
    def _load_tokenizer(self, path: str, kwargs: dict, pad_token_id: int | None = None) -> None:
        super()._load_tokenizer(path, kwargs, pad_token_id)
        self.tokenizer.chat_template = VERBATIM

    def get_answer_nll(self, prompts: list[str], candidates: list[list[str]]) -> list[list[float]]:
        """Mean negative log-likelihood per token of each candidate answer right after its prompt:
        `candidates[i]` are prompt i's answers, and the result has their values in the same order.

        Prompts arrive rendered (`recall.data.chat_prompt`). Prompt and answer are tokenised apart
        and without added special tokens, as fine-tuning tokenises them (`recall.training.finetune`), so the
        answer tokens scored are the ones a fine-tuned model was trained to produce, and they do not
        depend on the prompt. Hence one forward pass per prompt: its last position scores every
        answer's first token, and answers of several tokens continue from the prompt's key/value cache
        with their remaining tokens. A prompt too long for the context loses its start, as in
        generation, leaving room for its longest answer (so all its answers follow the same context).
        """
        answers = [[self._answer_ids(answer) for answer in group] for group in candidates]
        contexts = [
            self._prompt_ids(prompt, max(map(len, group))) for prompt, group in zip(prompts, answers, strict=True)
        ]
        tails = [(row, ids) for row, group in enumerate(answers) for ids in group if len(ids) > 1]
        width = max(map(len, contexts))
        pad = self.tokenizer.pad_token_id
        # Left padding ends every row with its prompt's last token, whose logits score the first answer tokens.
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in contexts])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in contexts])
        device = self.model.device
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                position_ids=positions(attention_mask).to(device),
                logits_to_keep=1,
                use_cache=bool(tails),
            )
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()
            rest = iter(self._tail_nll(out.past_key_values, attention_mask, tails) if tails else [])
        return [
            [(-first[row, ids[0]].item() + (next(rest) if len(ids) > 1 else 0.0)) / len(ids) for ids in group]
            for row, group in enumerate(answers)
        ]

    def _tail_nll(self, cache: Cache, prompt_mask: torch.Tensor, tails: list[Tail]) -> list[float]:
        """Summed NLL of each answer's tokens after its first, run on its prompt's cached keys and values."""
        rows = torch.tensor([row for row, _ in tails])
        device = self.model.device
        cache.reorder_cache(rows.to(device))  # a copy of the prompt's cache per answer (index_select)
        width = max(len(ids) for _, ids in tails) - 1
        pad = self.tokenizer.pad_token_id
        # Right padding: every answer starts right after its prompt; the pads after it are not scored.
        inputs = torch.tensor([ids[:-1] + [pad] * (width + 1 - len(ids)) for _, ids in tails])
        targets = torch.tensor([ids[1:] + [pad] * (width + 1 - len(ids)) for _, ids in tails])
        answer_mask = torch.tensor([[1] * (len(ids) - 1) + [0] * (width + 1 - len(ids)) for _, ids in tails])
        context_mask = prompt_mask[rows]
        position_ids = context_mask.sum(-1, keepdim=True) + torch.arange(width)
        logits = self.model(
            input_ids=inputs.to(device),
            attention_mask=torch.cat([context_mask, answer_mask], dim=1).to(device),
            position_ids=position_ids.to(device),
            past_key_values=cache,
            use_cache=True,
        ).logits.float()
        nll = -torch.log_softmax(logits, dim=-1).gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1)
        return (nll.cpu() * answer_mask).sum(-1).tolist()

    def _answer_ids(self, answer: str) -> list[int]:
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"empty answer {answer!r}; nothing to score")
        if len(ids) >= self.max_seq_len:
            raise ValueError(
                f"an answer of {len(ids)} tokens does not fit in the {self.max_seq_len}-token "
                f"context beside any prompt: {answer[:80]!r}"
            )
        return ids

    def _prompt_ids(self, prompt: str, answer_tokens: int) -> list[int]:
        """The prompt's token ids, cut at the start to leave `answer_tokens` of the context free."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"empty prompt {prompt[:80]!r}; nothing to score")
        return ids[-(self.max_seq_len - answer_tokens) :]


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token: models with absolute position embeddings
    (GPT-2) then score a row in a left-padded batch exactly as alone."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class VLLMChatModel(VLLMwithChatTemplate):
    """OpenCompass's vLLM chat model reading recall's rendered prompts verbatim (not run here: no GPU)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tokenizer.chat_template = VERBATIM


class TurboMindChatModel(TurboMindModelwithChatTemplate):
    """OpenCompass's LMDeploy (TurboMind) chat model reading recall's rendered prompts verbatim (not run
    here: no GPU)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tokenizer.chat_template = VERBATIM
