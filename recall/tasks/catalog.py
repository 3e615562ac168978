"""The built-in tasks: the paper's five datasets (appendix A) and the generated suite of the same formats."""

from __future__ import annotations

from recall.tasks.base import register
from recall.tasks.formats import (
    ExtractiveQATask,
    HubSource,
    KnowledgeMCQTask,
    ReadingMCQTask,
    SentimentTask,
    TranslationTask,
)

# Hub test splits: GLUE hides SST-2 test labels and MedMCQA hides its test answers, so (like the
# paper's Table 4 sizes) the labelled validation split is the test set.
register(SentimentTask("sst2", HubSource("stanfordnlp/sst2")))
register(ExtractiveQATask("squad_v2", HubSource("rajpurkar/squad_v2")))
register(KnowledgeMCQTask("medmcqa", HubSource("openlifescienceai/medmcqa")))
register(ReadingMCQTask("race", HubSource("ehovy/race", "all", test_split="test")))
register(TranslationTask("iwslt2017_en_fr", HubSource("IWSLT/iwslt2017", "iwslt2017-en-fr", test_split="test")))

register(SentimentTask("gen_sentiment"))
register(ExtractiveQATask("gen_squad"))
register(KnowledgeMCQTask("gen_knowledge"))
register(ReadingMCQTask("gen_reading"))
register(TranslationTask("gen_translation"))
