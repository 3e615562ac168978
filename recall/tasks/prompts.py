"""Instruction prompts in the QA format of the paper's appendix C (Table 6).

The wording is copied from Table 6, quirks included ("What’s sentiment", "Choose an correct answer",
curly quotes), so results stay comparable with the paper. Table 6 elides RACE's options (shown as
"...") and gives no IWSLT example; the RACE options follow the MedMCQA layout, and the translation
prompt is ours, in the same style.
"""

from __future__ import annotations

from collections.abc import Sequence

from recall.tasks.scoring import CHOICES


def options_text(options: Sequence[str]) -> str:
    """ "A: first B: second C: third D: fourth", as in Table 6's MedMCQA row."""
    return " ".join(f"{letter}: {option.strip()}" for letter, option in zip(CHOICES, options, strict=True))


def sentiment_prompt(sentence: str) -> str:
    return (
        f"Statement: {sentence.strip()} What’s sentiment should the above sentence be? "
        "OPTIONS: - negative.- positive. Answer:"
    )


def extractive_qa_prompt(context: str, question: str) -> str:
    return (
        f"{context.strip()} According to the above passage, answer the following question. "
        "If it is impossible to answer according to the passage, answer ‘impossible to answer’: "
        f"Question:{question.strip()}"
    )


def knowledge_mcq_prompt(question: str, options: Sequence[str]) -> str:
    return f"Question: {question.strip()} Options: {options_text(options)} Choose an correct answer from A/B/C/D.Answer:"


def reading_mcq_prompt(article: str, question: str, options: Sequence[str]) -> str:
    return (
        "Read the article, and answer the question by replying A, B, C or D. "
        f"Article: {article.strip()} Q:{question.strip()} Options: {options_text(options)}"
    )


def translation_prompt(english: str) -> str:
    return f"Translate the following sentence from English to French. Sentence: {english.strip()} French:"
