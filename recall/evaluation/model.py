"""The OpenCompass model of every evaluation: OpenCompass's Hugging Face chat model, plus answer
likelihoods for `recall.evaluation.inferencer.AnswerPPLInferencer`.

Generation is OpenCompass's own (`HuggingFacewithChatTemplate.generate`). Likelihood is added here
because OpenCompass 0.5.4 has no correct answer-only likelihood for batches: `HuggingFaceBaseModel.get_ppl`
masks the first `mask_length` positions of the *padded* row, but its tokenizer pads on the left, so
every shorter row of a batch is scored on part of its prompt too; and `get_loglikelihood` masks as
many leading tokens as the continuation has, not the context.
"""

from __future__ import annotations

import torch
from opencompass.models import HuggingFacewithChatTemplate


class ChatModel(HuggingFacewithChatTemplate):
    def get_answer_nll(self, prompts: list[str], answers: list[str]) -> list[float]:
        """Mean negative log-likelihood per token of each answer right after its prompt.

        Prompts arrive chat-rendered (`recall.data.chat_prompt`). Prompt and answer are tokenised apart
        and without added special tokens, as fine-tuning tokenises them (`recall.finetune`), so the
        answer tokens scored are the ones a fine-tuned model was trained to produce. A prompt too long
        for the context loses its start, as in generation.
        """
        rows = [self._encode(prompt, answer) for prompt, answer in zip(prompts, answers, strict=True)]
        width = max(len(ids) for ids, _ in rows)
        longest = max(n for _, n in rows)
        pad = self.tokenizer.pad_token_id
        # Left padding ends every row with its answer, so the logits needed are the last few positions.
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in rows])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in rows])
        # Positions counted from each row's first real token: models with absolute position embeddings
        # (GPT-2) then score a row in a batch exactly as alone.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        device = self.model.device
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device), logits_to_keep=longest + 1, use_cache=False,
            ).logits[:, :-1].float()
        targets = input_ids[:, -longest:].to(device)
        nll = -torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return [nll[i, longest - n :].mean().item() for i, (_, n) in enumerate(rows)]

    def _encode(self, prompt: str, answer: str) -> tuple[list[int], int]:
        """(prompt + answer token ids, number of answer tokens), cut to the model's context."""
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not prompt_ids or not answer_ids:
            raise ValueError(f"empty prompt or answer (prompt {prompt[:80]!r}, answer {answer!r}); nothing to score")
        room = self.max_seq_len - len(answer_ids)
        if room < 1:
            raise ValueError(
                f"an answer of {len(answer_ids)} tokens does not fit in the {self.max_seq_len}-token "
                f"context beside any prompt: {answer[:80]!r}"
            )
        return prompt_ids[-room:] + answer_ids, len(answer_ids)
