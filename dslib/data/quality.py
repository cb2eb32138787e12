"""Quality and outlier rules in the style of Gopher (Rae et al. 2021) and C4 (Raffel et al.
2020): cheap per-document statistics, each compared with a threshold from the config.

A document failing several rules is dropped with the name of the first one (rules are
checked in the order of ``RULES``); the detail column holds the measured value.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from dslib.data.config import QualityConfig
from dslib.data.pipeline import DocStep

_SYMBOL = re.compile(r"[^\w\s]")
_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[^\W\d_]")


def top_ngram_char_fraction(words: list[str], n: int) -> float:
    """Gopher: share of word characters covered by the most frequent word n-gram (0 if no
    n-gram repeats)."""
    if len(words) < n:
        return 0.0
    lowered = [w.lower() for w in words]
    counts = Counter(zip(*(lowered[i:] for i in range(n))))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(map(len, gram)) / max(1, sum(map(len, words)))


def duplicate_line_char_fraction(text: str) -> float:
    """Share of characters in lines that repeat an earlier line."""
    lines = [line for line in text.split("\n") if line.strip()]
    counts = Counter(lines)
    repeated = sum(len(line) * (c - 1) for line, c in counts.items() if c > 1)
    return repeated / max(1, sum(map(len, lines)))


def document_stats(text: str, ngram_sizes: list[int], repetition_min_words: int = 0) -> dict[str, float]:
    """The statistics the rules test; repetition statistics only for documents of at
    least ``repetition_min_words`` words (0 for shorter ones, which those rules skip)."""
    words = text.split()
    long_enough = len(words) >= repetition_min_words
    non_space = max(1, sum(map(len, words)))
    stats = {
        "chars": len(text),
        "words": len(words),
        "mean_word_length": non_space / max(1, len(words)),
        "symbol_ratio": len(_SYMBOL.findall(text)) / non_space,
        "digit_ratio": len(_DIGIT.findall(text)) / non_space,
        "alpha_word_fraction": sum(1 for w in words if _LETTER.search(w)) / max(1, len(words)),
        "duplicate_line_fraction": duplicate_line_char_fraction(text) if long_enough else 0.0,
    }
    for n in ngram_sizes:
        stats[f"top_{n}gram_fraction"] = top_ngram_char_fraction(words, n) if long_enough else 0.0
    return stats


Rule = Callable[[dict[str, float], QualityConfig], bool]  # True = the document fails
RULES: dict[str, tuple[str, Rule]] = {
    "too_long": ("chars", lambda s, c: s["chars"] > c.max_chars),
    "too_few_words": ("words", lambda s, c: s["words"] < c.min_words),
    "too_many_words": ("words", lambda s, c: s["words"] > c.max_words),
    "symbol_ratio": ("symbol_ratio", lambda s, c: s["symbol_ratio"] > c.max_symbol_ratio),
    "digit_ratio": ("digit_ratio", lambda s, c: s["digit_ratio"] > c.max_digit_ratio),
    "alpha_words": ("alpha_word_fraction", lambda s, c: s["alpha_word_fraction"] < c.min_alpha_word_fraction),
    "mean_word_length": ("mean_word_length",
                         lambda s, c: not c.min_mean_word_length <= s["mean_word_length"] <= c.max_mean_word_length),
    "repeated_lines": ("duplicate_line_fraction",
                       lambda s, c: s["duplicate_line_fraction"] > c.max_duplicate_line_fraction),
}


def failed_rule(stats: dict[str, float], config: QualityConfig) -> tuple[str, str]:
    """(rule name, detail) of the first failing rule, or ("", "")."""
    for name, (stat, fails) in RULES.items():
        if fails(stats, config):
            return name, f"{stat}={stats[stat]:.3g}"
    for n, limit in sorted(config.max_top_ngram_fraction.items()):
        if stats[f"top_{n}gram_fraction"] > limit:
            return f"repeated_{n}grams", f"top_{n}gram_fraction={stats[f'top_{n}gram_fraction']:.3g}"
    return "", ""


class Quality(DocStep):
    name = "quality"

    def __init__(self, config: QualityConfig) -> None:
        self.config = config

    def decide(self, texts: list[str]) -> tuple[list[str], list[str], list[str]]:
        sizes = sorted(self.config.max_top_ngram_fraction)
        min_words = self.config.repetition_min_words
        decisions = [failed_rule(document_stats(t, sizes, min_words), self.config) for t in texts]
        return texts, [d[0] for d in decisions], [d[1] for d in decisions]
