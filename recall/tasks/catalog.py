"""The built-in tasks: the paper's five datasets (appendix A) and the generated suite of the same
formats, each a spec like any task.yaml (`recall tasks show sst2` prints one to copy).

The templates are the QA format of the paper's appendix C (Table 6), quirks included ("What’s
sentiment", "Choose an correct answer", curly quotes), so results stay comparable with the paper.
Table 6 elides RACE's options (shown as "...") and gives no IWSLT example; the RACE options follow
the MedMCQA layout, and the translation prompt is ours, in the same style. Every field a template
shows is stripped of surrounding whitespace.
"""

from __future__ import annotations

from recall.tasks.base import TaskSpec
from recall.tasks.formats import HubSource, make_task

SENTIMENT = TaskSpec(
    "classification",
    "Statement: {sentence} What’s sentiment should the above sentence be? OPTIONS: - negative.- positive. Answer:",
    answer="label",
    labels=((0, "negative"), (1, "positive")),
)
EXTRACTIVE_QA = TaskSpec(
    "qa",
    "{context} According to the above passage, answer the following question. If it is impossible to answer "
    "according to the passage, answer ‘impossible to answer’: Question:{question}",
    answer="answers",
)
KNOWLEDGE_MCQ = TaskSpec(
    "multiple_choice",
    "Question: {question} Options: {options} Choose an correct answer from A/B/C/D.Answer:",
    answer="cop",
    options=("opa", "opb", "opc", "opd"),
)
READING_MCQ = TaskSpec(
    "multiple_choice",
    "Read the article, and answer the question by replying A, B, C or D. Article: {article} Q:{question} "
    "Options: {options}",
    answer="answer",
    options=("options.0", "options.1", "options.2", "options.3"),
)
TRANSLATION = TaskSpec(
    "generation",
    "Translate the following sentence from English to French. Sentence: {translation.en} French:",
    answer="translation.fr",
)

# Hub test splits: GLUE hides SST-2 test labels and MedMCQA hides its test answers, so (like the
# paper's Table 4 sizes) the labelled validation split is the test set. The registry
# (`recall.tasks.registry`) holds these first: a declared task cannot take their names.
BUILTIN = (
    make_task("sst2", SENTIMENT, HubSource("stanfordnlp/sst2")),
    make_task("squad_v2", EXTRACTIVE_QA, HubSource("rajpurkar/squad_v2")),
    make_task("medmcqa", KNOWLEDGE_MCQ, HubSource("openlifescienceai/medmcqa")),
    make_task("race", READING_MCQ, HubSource("ehovy/race", "all", test_split="test")),
    make_task("iwslt2017_en_fr", TRANSLATION, HubSource("IWSLT/iwslt2017", "iwslt2017-en-fr", test_split="test")),
    make_task("gen_sentiment", SENTIMENT),
    make_task("gen_squad", EXTRACTIVE_QA),
    make_task("gen_knowledge", KNOWLEDGE_MCQ),
    make_task("gen_reading", READING_MCQ),
    make_task("gen_translation", TRANSLATION),
)
