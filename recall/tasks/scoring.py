"""Pure scoring functions. Chat models answer verbosely ("The answer is B: ..."), so labels and
option letters are extracted from the reply before comparison; free-text answers use SQuAD's
normalisation. Every metric is on a 0-100 scale.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Sequence

from recall.errors import RecallError

UNANSWERABLE = "impossible to answer"
LETTERS = string.ascii_uppercase  # option letters, A to Z
CHOICES = LETTERS[:4]  # the paper's four options


@functools.cache
def _letter_patterns(letters: str) -> list[re.Pattern]:
    """Option-letter patterns, most specific first. Letters must be capitals standing alone, so words
    like "a", "I'd" or "Because" never count."""
    letter = f"[{letters}]"
    return [
        re.compile(rf"^\W*({letter})(?:\W*$|\s*[.:)\]]|\s+-)"),  # "B", "(B)", "B: text", "B. text", "B - text"
        re.compile(rf"(?i:answer|option|choice)(?:\s+(?i:is|would be))?\s*[:\-]?\s*\(?({letter})\b(?!['’])"),
        # Any lone capital; "A" or "I" followed by a lowercase word is the article or the pronoun.
        re.compile(rf"\b((?![AI]\s+[a-z]){letter})\b(?!['’])"),
    ]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | set("«»“”‘’…")


def extract_choice(reply: str, choices: Sequence[str] = CHOICES) -> str | None:
    """The option letter (one of `choices`) a reply picks, or None when it names none."""
    reply = reply.strip()
    for pattern in _letter_patterns("".join(choices)):
        match = pattern.search(reply)
        if match:
            return match.group(1)
    return None


def extract_label(reply: str, labels: Sequence[str]) -> str | None:
    """The label word that occurs first in the reply (case-insensitive, whole words), or None."""
    found = []
    for label in labels:
        match = re.search(rf"\b{re.escape(label)}\b", reply, re.IGNORECASE)
        if match:
            found.append((match.start(), label))
    return min(found)[1] if found else None


def normalize_text(text: str, drop_articles: bool = True) -> str:
    """SQuAD normalisation: lowercase, strip punctuation and (English) articles, collapse whitespace."""
    text = "".join(" " if ch in _PUNCT else ch for ch in text.lower())
    if drop_articles:
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def extract_answer_text(reply: str) -> str:
    """Drop a chat lead-in ("Answer:", "The answer is") so a correct verbose span still matches."""
    text = reply.strip()
    text = re.sub(r"^(?:the\s+)?answer\s*(?:is|:)\s*", "", text, flags=re.IGNORECASE)
    return text.strip()


def qa_match(prediction: str, reference: str) -> bool:
    """SQuAD exact match; for unanswerable questions any reply saying "impossible to answer" counts."""
    if normalize_text(reference) == normalize_text(UNANSWERABLE):
        return normalize_text(UNANSWERABLE) in normalize_text(prediction)
    return normalize_text(extract_answer_text(prediction)) == normalize_text(reference)


def qa_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 (0-100) of the normalised answers; unanswerable questions score as `qa_match`."""
    if normalize_text(reference) == normalize_text(UNANSWERABLE):
        return 100.0 * qa_match(prediction, reference)
    predicted, expected = normalize_text(extract_answer_text(prediction)).split(), normalize_text(reference).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 100.0 * (predicted == expected)
    return 100.0 * 2 * common / (len(predicted) + len(expected))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (0-100): the longest common subsequence of the normalised words (articles kept)."""
    predicted, expected = (normalize_text(t, drop_articles=False).split() for t in (prediction, reference))
    if not predicted or not expected:
        return 100.0 * (predicted == expected)
    previous = [0] * (len(expected) + 1)
    for word in predicted:
        current = [0]
        for j, other in enumerate(expected):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    return 100.0 * 2 * previous[-1] / (len(predicted) + len(expected))


def text_match(prediction: str, reference: str) -> bool:
    """Case-, punctuation- and whitespace-insensitive equality; no article stripping (French)."""
    return normalize_text(prediction, drop_articles=False) == normalize_text(reference, drop_articles=False)


def check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise RecallError(
            f"{len(predictions)} predictions for {len(references)} references; score one prediction per example"
        )
    if not references:
        raise RecallError("nothing to score: no predictions and no references")


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (13a tokenisation, one reference per segment)."""
    import sacrebleu  # here, not at the top: a third of a second that only BLEU scoring needs

    check_lengths(predictions, references)
    bleu = sacrebleu.corpus_bleu([p.strip() for p in predictions], [[r.strip() for r in references]])
    return round(float(bleu.score), 6)  # sacrebleu returns 100.00000000000004 for a perfect match


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (effective n-gram order, so a short sentence need not match 4-grams)."""
    import sacrebleu

    return round(float(sacrebleu.sentence_bleu(prediction.strip(), [reference.strip()]).score), 6)


@functools.cache
def _bleu():
    """corpus_bleu's settings (13a, exponential smoothing), so statistics summed over segments give its score."""
    from sacrebleu.metrics import BLEU

    return BLEU()


def bleu_stats(prediction: str, reference: str) -> list[int]:
    """sacrebleu's sufficient statistics of one segment: 4 n-gram match counts, 4 n-gram totals,
    hypothesis length, reference length. Corpus BLEU of any set of segments is `bleu_from_stats` of
    theirs, since sacrebleu itself sums these over segments."""
    score = _bleu().corpus_score([prediction.strip()], [[reference.strip()]])
    return [*score.counts, *score.totals, score.sys_len, score.ref_len]


def bleu_from_stats(stats: Sequence[Sequence[int]]) -> float:
    """Corpus BLEU (0-100) from per-segment `bleu_stats`, equal to `corpus_bleu` of those segments."""
    if not stats:
        raise RecallError("no segments to compute BLEU from")
    metric = _bleu()
    total = [sum(column) for column in zip(*stats, strict=True)]
    order = metric.max_ngram_order
    bleu = metric.compute_bleu(
        correct=total[:order],
        total=total[order : 2 * order],
        sys_len=total[2 * order],
        ref_len=total[2 * order + 1],
        smooth_method=metric.smooth_method,
        smooth_value=metric.smooth_value,
        effective_order=metric.effective_order,
        max_ngram_order=order,
    )
    return round(float(bleu.score), 6)
