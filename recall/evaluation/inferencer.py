"""An OpenCompass inferencer that ranks answers by likelihood: PPL scoring with the prompt masked.

OpenCompass's `PPLInferencer` scores the whole prompt + label text unless given a `normalizing_str`,
and then subtracts the label's likelihood after that string (a calibration, not the answer's own
perplexity). Here every candidate answer is scored alone after the prompt: the mean negative
log-likelihood per answer token (`ChatModel.get_answer_nll`), and the prediction is the candidate
with the lowest, i.e. the lowest perplexity. The name ends in "PPLInferencer" so that OpenCompass's
summary lists these datasets as PPL ones.
"""

from __future__ import annotations

from pathlib import Path

from opencompass.openicl.icl_inferencer.icl_base_inferencer import BaseInferencer
from opencompass.openicl.icl_retriever import BaseRetriever

from recall.atomic import write_json


class AnswerPPLInferencer(BaseInferencer):
    """Per test example: the mean NLL of each candidate answer after the prompt, and the lowest one.
    A batch is `batch_size` examples, each prompt run once for all its candidates.

    `candidates`: the dataset column holding each example's closed answer set (label words, its
    option letters); None scores each example's own reference only, which gives the `nll` metric of
    generated tasks. The prompt is the dataset's first input column, verbatim: it is already rendered
    for the model, and reading it directly keeps OpenCompass's template substitution away from braces
    in the text. Predictions file, one entry per example:
    `{"origin_prompt", "prediction", "gold", "answer_nll": {candidate: mean NLL per token}}`.
    """

    def __init__(self, model, candidates: str | None = None, batch_size: int | None = 1, **kwargs) -> None:
        super().__init__(model=model, batch_size=batch_size, **kwargs)
        self.candidates = candidates

    def inference(
        self,
        retriever: BaseRetriever,
        ice_template=None,
        prompt_template=None,
        output_json_filepath: str | None = None,
        output_json_filename: str | None = None,
    ) -> list[str]:
        reader = retriever.dataset_reader
        prompts = list(retriever.test_ds[reader.input_columns[0]])
        golds = list(retriever.test_ds[reader.output_column])
        options = list(retriever.test_ds[self.candidates]) if self.candidates else [[gold] for gold in golds]
        nll = self._score(prompts, options)
        results = {}
        for i, answers in enumerate(options):
            scores = dict(zip(answers, nll[i], strict=True))
            best = min(answers, key=scores.__getitem__)  # ties: the first candidate
            results[str(i)] = {"origin_prompt": prompts[i], "prediction": best, "gold": golds[i], "answer_nll": scores}
        # Atomic: OpenCompass reuses any predictions file it finds, so a killed run must leave none.
        folder = Path(output_json_filepath or self.output_json_filepath)
        write_json(folder / (output_json_filename or self.output_json_filename), results)
        return [entry["prediction"] for entry in results.values()]

    def _score(self, prompts: list[str], options: list[list[str]]) -> list[list[float]]:
        """Mean NLL of each example's answers, in the order of `options`."""
        nll: list[list[float]] = [[] for _ in prompts]
        for batch in length_sorted_batches(prompts, self.batch_size or 1):
            values = self.model.get_answer_nll([prompts[i] for i in batch], [options[i] for i in batch])
            for i, scores in zip(batch, values, strict=True):
                nll[i] = scores
        return nll


def length_sorted_batches(prompts: list[str], size: int) -> list[list[int]]:
    """Example indices in batches of `size`, longest prompt first, so a batch pads little."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    return [order[start : start + size] for start in range(0, len(order), size)]
