"""Cheap guesses at what texts are (English prose, another language, source code), to warn about encoders
that were not trained for them. Heuristics, not language identification: they look at scripts, common
function words and code punctuation, and only ever produce a warning."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence

FUNCTION_WORDS = {
    "en": {"the", "and", "of", "to", "is", "in", "that", "it", "for", "with", "was", "on", "are", "this", "be",
           "what", "how", "my", "i", "you", "a", "an", "can", "do", "not"},
    "de": {"der", "die", "und", "das", "ist", "nicht", "ich", "sie", "es", "ein", "eine", "zu", "mit", "den",
           "auf", "wie", "was", "wir", "du", "sich", "dem", "auch", "hat"},
    "fr": {"le", "la", "les", "et", "est", "un", "une", "des", "pas", "je", "vous", "il", "que", "qui", "du",
           "dans", "pour", "ce", "sur", "au", "avec", "elle", "nous"},
    "es": {"el", "la", "los", "las", "y", "es", "un", "una", "que", "de", "no", "en", "por", "con", "para",
           "se", "lo", "del", "al", "como", "yo", "está", "tiene"},
    "it": {"il", "la", "e", "di", "che", "non", "un", "una", "per", "sono", "con", "del", "della", "gli", "ho"},
    "pt": {"o", "a", "os", "as", "e", "de", "que", "não", "um", "uma", "para", "com", "do", "da", "em", "é"},
    "nl": {"de", "het", "een", "en", "van", "ik", "niet", "is", "dat", "op", "te", "zijn", "je", "met", "voor"},
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_CODE_LINE = re.compile(r"(;\s*$|\{\s*$|^\s*\}|^\s*(def|class|import|from|return|public|private|function|const|"
                        r"let|var|#include|package|fn|func|SELECT|if\s*\(|for\s*\())", re.MULTILINE)
_CODE_CHARS = set("{}[]();=<>_/*&|$#\\")


class ModalityWarning(UserWarning):
    """Texts look unlike what the encoder was trained on (another language, or source code)."""


def guess(text: str) -> str:
    """'code', 'en', another ISO code from :data:`FUNCTION_WORDS`, 'non-latin', or 'unknown'."""
    stripped = text.strip()
    if not stripped:
        return "unknown"
    code_chars = sum(ch in _CODE_CHARS for ch in stripped) / len(stripped)
    lines = stripped.count("\n") + 1
    if code_chars > 0.06 and len(_CODE_LINE.findall(stripped)) >= max(1, lines // 4):
        return "code"
    letters = [ch for ch in stripped if ch.isalpha()]
    if letters and sum(ord(ch) > 0x24F for ch in letters) / len(letters) > 0.5:
        return "non-latin"
    words = [w.lower() for w in _WORD.findall(stripped)]
    if not words:
        return "unknown"
    hits = {lang: sum(w in fw for w in words) for lang, fw in FUNCTION_WORDS.items()}
    best = max(hits, key=lambda lang: (hits[lang], lang == "en"))
    if hits[best] == 0:
        return "unknown"
    return best if hits[best] > hits["en"] else "en"


def profile(texts: Sequence[str], *, sample: int = 64) -> Counter[str]:
    """Counts of :func:`guess` over an evenly spaced sample of ``texts``."""
    if not texts:
        return Counter()
    step = max(1, len(texts) // sample)
    return Counter(guess(t) for t in list(texts)[::step][:sample])


def mismatch(texts: Sequence[str], *, english_only: bool, prose_only: bool = True) -> str | None:
    """A warning message when most sampled texts are another language (for an English-only encoder) or
    source code (for a prose encoder); None otherwise."""
    counts = profile(texts)
    known = sum(n for lang, n in counts.items() if lang != "unknown")
    if not known:
        return None
    top, n = max(counts.items(), key=lambda kv: (kv[0] != "unknown", kv[1]))
    if n / known < 0.5:
        return None
    if prose_only and top == "code":
        return ("these texts look like source code, and this encoder was trained on prose: expect weak "
                "retrieval; pick a code embedding model and measure it with `embedsmith eval` on your data")
    if english_only and top not in ("en", "code", "unknown"):
        what = "a non-Latin script" if top == "non-latin" else f"language '{top}'"
        return (f"these texts look like {what}, and this encoder was trained on English only: pick a "
                "multilingual encoder (e5-small-multilingual, use-multilingual) and compare with "
                "`embedsmith eval` on your data")
    return None


def warn_if_mismatched(texts: Sequence[str], *, english_only: bool, name: str, seen: set[str]) -> None:
    """Warn once per ``seen`` set and kind of mismatch."""
    message = mismatch(texts, english_only=english_only)
    if message is not None and message not in seen:
        seen.add(message)
        warnings.warn(f"{name}: {message}", ModalityWarning, stacklevel=4)
