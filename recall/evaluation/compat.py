"""Compatibility of OpenCompass 0.5.4 with transformers 5, and a quicker import of the parts of it
that recall's evaluations use."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from types import ModuleType


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


# The OpenCompass release whose layout LEAN_PACKAGES describes (tests/test_evaluation.py checks both).
LEAN_VERSION = "0.5.4"
# In OpenCompass 0.5.4 each of these packages' __init__ imports every module it holds: some 600 dataset
# loaders (with openai, scipy, nltk, ...), every evaluator, retriever, inferencer, API model and task.
# That is about 6 of the 10 seconds `from opencompass.cli.main import main` takes, for the handful of
# classes an evaluation by recall uses: the config's (`recall.evaluation.config.IMPORTS`), the base
# classes of `recall.evaluation.{model,inferencer,evaluator}` and the two tasks `opencompass_main` runs.
# `lean_opencompass` registers these packages without running their __init__, each name below imported
# from its own module when first asked for; any other name imports the packages whole (with a warning),
# so what OpenCompass does never depends on this list, only how long its imports take.
LEAN_PACKAGES: dict[str, dict[str, str]] = {  # package -> {name: the module of the package defining it}
    "opencompass.datasets": {"JsonlDataset": "jsonl"},
    "opencompass.models": {
        "BaseModel": "base",
        "HuggingFacewithChatTemplate": "huggingface_above_v4_33",
        "TurboMindModelwithChatTemplate": "turbomind_with_tf_above_v4_33",
        "VLLMwithChatTemplate": "vllm_with_tf_above_v4_33",
    },
    "opencompass.openicl": {"DatasetReader": "icl_dataset_reader", "PromptTemplate": "icl_prompt_template"},
    "opencompass.openicl.icl_evaluator": {"BaseEvaluator": "icl_base_evaluator"},
    "opencompass.openicl.icl_inferencer": {
        "BaseInferencer": "icl_base_inferencer",
        "GenInferencer": "icl_gen_inferencer",
    },
    "opencompass.openicl.icl_retriever": {"BaseRetriever": "icl_base_retriever", "ZeroRetriever": "icl_zero_retriever"},
    "opencompass.tasks": {"OpenICLEvalTask": "openicl_eval", "OpenICLInferTask": "openicl_infer"},
}
# Packages imported whole because a name outside LEAN_PACKAGES was asked for (empty on recall's runs).
whole_imports: list[str] = []


def lean_opencompass() -> bool:
    """Register `LEAN_PACKAGES` without running their __init__ (see there); True if done. Does nothing
    (False) under another OpenCompass release or once any of them is imported."""
    import opencompass

    if opencompass.__version__ != LEAN_VERSION or any(name in sys.modules for name in LEAN_PACKAGES):
        return False
    for package, names in LEAN_PACKAGES.items():  # parents before their subpackages
        _register(package, names)
    return True


def _register(package: str, names: dict[str, str]) -> None:
    spec = importlib.util.find_spec(package)
    module = importlib.util.module_from_spec(spec)  # its __path__ set: submodules import as usual

    def __getattr__(name: str):  # only for names not yet in the module (PEP 562)
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        if name.startswith("__"):
            raise AttributeError(name)
        _import_whole(f"{package}.{name}")
        return getattr(module, name)

    module.__getattr__ = __getattr__
    module.__lean_spec__ = spec
    sys.modules[package] = module
    parent, _, child = package.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def _import_whole(wanted: str) -> None:
    """Run the __init__ of every registered package, subpackages first (their parents' __init__
    star-import them), as a plain import would have."""
    warnings.warn(f"{wanted} is not in recall's LEAN_PACKAGES: importing OpenCompass's packages whole", stacklevel=3)
    for package in sorted(LEAN_PACKAGES, key=lambda p: -p.count(".")):
        module: ModuleType = sys.modules[package]
        spec = module.__dict__.pop("__lean_spec__", None)
        if spec is not None:
            del module.__dict__["__getattr__"]
            whole_imports.append(package)
            spec.loader.exec_module(module)
