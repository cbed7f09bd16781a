"""What a training run did: :class:`FinetuneReport` (of an explicit kind) and the model card written from it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import InvalidInputError
from ..evaluation.stats import Comparison

ReportKind = Literal["bi-encoder", "reranker", "late-interaction"]
KINDS: tuple[ReportKind, ...] = ("bi-encoder", "reranker", "late-interaction")

#: what "before" and "after" are, by kind (the card's and the CLI's column heads)
STAGES: dict[str, tuple[str, str]] = {"bi-encoder": ("before", "after"), "reranker": ("first stage", "reranked"),
                                      "late-interaction": ("untrained > MaxSim", "trained > MaxSim")}


@dataclass
class FinetuneReport:
    """What a fine-tune did: the output folder, steps, seconds, and scores before and after.

    Attributes:
        kind: ``"bi-encoder"`` (``before``/``after``: the base and the trained model on the evaluation task)
            or ``"reranker"`` (``before``: the first stage's ranking; ``after``: the same candidates reranked), or
            ``"late-interaction"`` (the first stage's candidates reordered by MaxSim with the untrained start and
            with the trained multi-vector model: :class:`~embedsmith.training.LateInteractionReport`).
        significance: per metric of ``before``, the after - before difference with its paired-bootstrap 95%
            interval, permutation p-value and verdict over the evaluation's queries (or pairs, or texts);
            verdict "B better" means the trained model (or the reranked ranking) scores higher.
    """

    output: str
    base_model: str
    kind: ReportKind
    loss: str
    examples: int
    steps: int
    seconds: float
    hyperparameters: dict[str, Any]
    data: str
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    significance: dict[str, Comparison] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInputError(f"unknown report kind {self.kind!r}; expected one of {', '.join(KINDS)}")

    @property
    def stages(self) -> tuple[str, str]:
        """The names of ``before`` and ``after`` for this kind."""
        if self.kind == "reranker" and "candidates" in self.hyperparameters:
            return f"first stage (top {self.hyperparameters['candidates']})", "reranked"
        return STAGES[self.kind]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values; ``significance`` as ``eval compare --json`` gives it."""
        from ..evaluation.compare import significance_dict

        return {**asdict(self), "significance": significance_dict(list(self.significance.values()))}


def write_card(output: Path, report: FinetuneReport) -> None:
    """Prepend the training record to the folder's README.md (the model card) and write the report as
    ``embedsmith_training.json``."""
    lines = [
        "# Fine-tuned with embedsmith",
        "",
        f"- kind: {report.kind}",
        f"- base model: `{report.base_model}`",
        f"- data: {report.data} ({report.examples} examples)",
        f"- loss: `{report.loss}`",
        f"- steps: {report.steps}, training time {report.seconds:.0f} s",
        "- hyperparameters: " + ", ".join(f"{k}={v}" for k, v in report.hyperparameters.items()),
    ]
    if report.before or report.after:
        first, second = report.stages
        lines += ["", f"| metric | {first} | {second} | difference | 95% interval | p | verdict |",
                  "|---|---:|---:|---:|---|---:|---|"]
        for k in report.before:
            c = report.significance.get(k)
            judged = (f"{c.diff:+.4f} | [{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {c.p_value:.4f} | {c.verdict}"
                      if c is not None else "- | - | - | -")
            lines.append(f"| {k} | {report.before[k]:.4f} | {report.after.get(k, float('nan')):.4f} | {judged} |")
        if report.significance:
            lines += ["", f"Difference: {second} - {first}; interval and p-value from paired resampling of the "
                          f"evaluation's items (B better: {second} scores higher)."]
    card = output / "README.md"
    previous = card.read_text(encoding="utf-8") if card.is_file() else ""
    card.write_text("\n".join(lines) + "\n\n" + previous, encoding="utf-8")
    (output / "embedsmith_training.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n",
                                                     encoding="utf-8")
