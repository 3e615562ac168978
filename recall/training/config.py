"""A fine-tune's settings (`recall finetune`'s flags, params.yaml's `finetune` section), kept apart from
the torch loop in `recall.training.finetune` so that reading or describing them imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from recall.errors import RecallError
from recall.settings import FRACTION, POSITIVE, Settings, at_least, one_of, setting

DTYPES = ("float32", "bfloat16", "float16")
EWC_LAMBDA = 1000.0  # the EWC strength of the pipeline's `ewc` method when params.yaml gives none (0 here: off)


@dataclass(frozen=True)
class FinetuneConfig(Settings):
    """Defaults follow the paper's Table 5 where a CPU allows (LoRA 8/32/0.1, lr 5e-5, max len 2048)."""

    FLAGS = True  # errors name `recall finetune`'s flags

    max_steps: int | None = setting(None, POSITIVE)  # overrides epochs when given
    epochs: float = setting(1.0, POSITIVE)
    lr: float = setting(5e-5, POSITIVE)
    batch_size: int = setting(8, POSITIVE)
    max_length: int = setting(2048, POSITIVE)
    limit: int | None = setting(None, POSITIVE)  # use only the first N training examples
    lora_r: int = setting(8, POSITIVE)
    lora_alpha: int = setting(32, POSITIVE)
    lora_dropout: float = setting(0.1, FRACTION)
    target_modules: str | tuple[str, ...] = "all-linear"  # every linear layer of the blocks, not lm_head
    ewc_lambda: float = setting(0.0, at_least(0))
    ewc_from: str | None = None  # previous task name, or a prompt/response JSONL file
    ewc_samples: int = setting(64, POSITIVE)  # examples of the previous task used to estimate the Fisher
    seed: int = 0
    # None: float32 on the CPU, bfloat16 on a GPU that supports it (`recall.models.default_dtype`)
    dtype: str | None = setting(None, one_of(*DTYPES))
    # optimizer steps between resumable checkpoints; 0: none
    checkpoint_every: int = setting(25, at_least(0, " (0: no checkpoints)"))

    def check(self) -> None:
        if (self.ewc_lambda > 0) != (self.ewc_from is not None):
            raise RecallError("EWC needs both --ewc-lambda (> 0) and --ewc-from (the previous task or its JSONL data)")
