"""Compatibility of OpenCompass 0.5.4 with transformers 5."""

from __future__ import annotations


def restore_batch_encode_plus() -> None:
    """Give tokenizers back the `batch_encode_plus` method that transformers 5 removed.

    OpenCompass's Hugging Face wrappers still call it; calling the tokenizer itself on a batch does
    the same job. Must run before OpenCompass builds a model. Downgrading transformers is no fix:
    4.x misreads models saved by 5.x (it ignores `rope_parameters`).
    """
    from transformers import PreTrainedTokenizerBase

    if hasattr(PreTrainedTokenizerBase, "batch_encode_plus"):
        return

    def batch_encode_plus(self, batch_text_or_text_pairs, **kwargs):
        return self(batch_text_or_text_pairs, **kwargs)

    PreTrainedTokenizerBase.batch_encode_plus = batch_encode_plus
