"""Bi-encoder fine-tuning on sentence-transformers' trainer.

:func:`finetune` runs named steps: :func:`prepare_data` (checks, hard negatives), :func:`build_dataset` and
:func:`build_loss` (what the trainer consumes), :func:`train` (the trainer itself), and
:func:`evaluate_model` before and after, compared with :func:`~embedsmith.evaluation.compare.compare_results`.
A new training objective (another model type or loss family) replaces the dataset/loss/train steps and keeps
the rest.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, require
from ..evaluation.results import TaskResult
from ..evaluation.stats import Comparison
from .data import TrainingData
from .models import load_bi_encoder, model_folder
from .negatives import add_hard_negatives
from .report import FinetuneReport, write_card

LOSSES = ("mnrl", "cached-mnrl", "infonce", "triplet", "cosent", "cosine", "contrastive")
HARD_NEGATIVES = ("none", "bm25", "dense")


def build_dataset(data: TrainingData, loss: str) -> Any:
    """The ``datasets.Dataset`` that ``loss`` trains on: scored pairs, labelled pairs, or anchor/positive
    (and negative) columns.

    Raises:
        InvalidInputError: the data does not fit the loss (e.g. triplet without negatives).
    """
    from datasets import Dataset

    if loss in ("cosent", "cosine"):
        if data.scores is None:
            raise InvalidInputError(f"{loss} needs scored pairs (sentence1,sentence2,score)")
        return Dataset.from_dict({"sentence1": data.anchors, "sentence2": data.positives, "score": data.scores})
    if loss == "contrastive":
        s1, s2, lab = [], [], []
        for i, (a, p) in enumerate(zip(data.anchors, data.positives, strict=True)):
            s1.append(a)
            s2.append(p)
            lab.append(float(data.scores[i] >= 0.5) if data.scores is not None else 1.0)
            for n in data.negatives[i]:
                s1.append(a)
                s2.append(n)
                lab.append(0.0)
        if len(set(lab)) < 2:
            raise InvalidInputError("contrastive loss needs negative pairs: use --hard-negatives or scored pairs")
        return Dataset.from_dict({"sentence1": s1, "sentence2": s2, "label": lab})
    if data.scores is not None:
        raise InvalidInputError(
            f"{loss} needs anchor/positive pairs; scored pairs train with cosent, cosine or contrastive")
    cols: dict[str, list[str]] = {"anchor": data.anchors, "positive": data.positives}
    n_neg = min((len(n) for n in data.negatives), default=0)
    if loss == "triplet":
        if n_neg == 0:
            raise InvalidInputError("triplet loss needs a negative per example: use --hard-negatives bm25|dense")
        n_neg = 1
    for j in range(n_neg):
        cols[f"negative_{j + 1}"] = [n[j] for n in data.negatives]
    return Dataset.from_dict(cols)


def build_loss(model: Any, loss: str, matryoshka: Sequence[int] | None, temperature: float) -> Any:
    """The sentence-transformers loss named ``loss``, wrapped in MatryoshkaLoss when ``matryoshka`` has dims."""
    from sentence_transformers.sentence_transformer import losses

    inner = {
        "mnrl": lambda: losses.MultipleNegativesRankingLoss(model),
        "infonce": lambda: losses.MultipleNegativesRankingLoss(model, scale=1.0 / temperature),
        "cached-mnrl": lambda: losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=16),
        "triplet": lambda: losses.TripletLoss(model),
        "cosent": lambda: losses.CoSENTLoss(model),
        "cosine": lambda: losses.CosineSimilarityLoss(model),
        "contrastive": lambda: losses.ContrastiveLoss(model),
    }[loss]()
    if matryoshka:
        return losses.MatryoshkaLoss(model, inner, matryoshka_dims=list(matryoshka))
    return inner


@dataclass
class Evaluation:
    """A model's scores on the evaluation task: ``main_score`` and, per Matryoshka cut, ``main_score@D``,
    with the task results that hold their per-item data."""

    scores: dict[str, float]
    results: dict[str, TaskResult]


def evaluate_model(folder: str | Path, task: Any, device: str, dims: Sequence[int] = ()) -> Evaluation:
    """Score the model in ``folder`` on ``task`` at full size and at each of ``dims`` below it."""
    enc = load_bi_encoder(folder, device)
    results = {"main_score": task.evaluate(enc)}
    for d in dims:
        if d < enc.dim:
            results[f"main_score@{d}"] = task.evaluate(enc, dims=d)
    return Evaluation({k: r.main_score for k, r in results.items()}, results)


def compare_evaluations(before: Evaluation, after: Evaluation) -> dict[str, Comparison]:
    """After (B) against before (A) on each headline score (``main_score``, ``main_score@D``), over the task's
    items (queries, pairs or texts)."""
    from dataclasses import replace

    from ..evaluation.compare import compare_results

    out = {}
    for name, base in before.results.items():
        trained = after.results.get(name)
        if trained is None or base.items is None or trained.items is None or len(base.items.ids) < 2:
            continue  # a task without per-item data, or a single item: nothing to resample
        for c in compare_results(base, trained, metrics=["main_score"]):
            out[name] = replace(c, metric=name)
    return out


def prepare_data(data: TrainingData, *, hard_negatives: str, negatives_per_query: int, skip_top: int,
                 corpus: Sequence[str], miner: Any, seed: int) -> TrainingData:
    """The training data with ``negatives_per_query`` mined hard negatives added (``hard_negatives`` bm25 or
    dense; ``miner``: the encoder dense mining ranks with), or as it is (``none``)."""
    if hard_negatives == "none":
        return data
    if data.scores is not None:
        raise InvalidInputError("hard negatives are mined for anchor/positive pairs, not scored pairs")
    return add_hard_negatives(data, method=hard_negatives, per_query=negatives_per_query, corpus=corpus,
                              encoder=miner, skip_top=skip_top, seed=seed)


def _quiet(trainer: Any, show_progress: bool) -> Any:
    """Library calls stay quiet: no per-step log lines unless progress is wanted."""
    if not show_progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def train(model: Any, dataset: Any, loss: Any, output: Path, *, in_batch_negatives: bool, epochs: float,
          batch_size: int, lr: float, seed: int, max_steps: int | None, show_progress: bool, device: str) -> int:
    """Run sentence-transformers' trainer on ``model`` (checkpoints under ``output/checkpoints``); the steps
    taken. ``in_batch_negatives`` keeps duplicate texts out of a batch (they would be false negatives)."""
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    args = SentenceTransformerTrainingArguments(
        output_dir=str(output / "checkpoints"), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        learning_rate=lr, warmup_steps=0.1, seed=seed, data_seed=seed, save_strategy="epoch", save_total_limit=1,
        logging_steps=50, report_to="none", disable_tqdm=not show_progress, max_steps=max_steps or -1,
        use_cpu=device == "cpu", dataloader_num_workers=0,
        batch_sampler=BatchSamplers.NO_DUPLICATES if in_batch_negatives else BatchSamplers.BATCH_SAMPLER)
    trainer = _quiet(SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss),
                     show_progress)
    return int(trainer.train().global_step)


def finetune(
    model: str,
    data: TrainingData,
    output: str | Path,
    *,
    loss: str = "mnrl",
    matryoshka: Sequence[int] | None = None,
    hard_negatives: str = "none",
    negatives_per_query: int = 5,
    skip_top: int = 0,
    corpus: Sequence[str] = (),
    epochs: float = 1.0,
    batch_size: int = 32,
    lr: float = 2e-5,
    temperature: float = 0.05,
    seed: int = 42,
    max_steps: int | None = None,
    max_seq_length: int | None = None,
    eval_task: Any = None,
    device: str = "auto",
    show_progress: bool = False,
) -> FinetuneReport:
    """Fine-tune a bi-encoder and save it to ``output`` (a normal sentence-transformers folder).

    Args:
        model: alias (minilm, mpnet) or sentence-transformers folder.
        data: training pairs (see :func:`~embedsmith.training.load_training_data`).
        loss: mnrl (multiple negatives ranking: InfoNCE with in-batch negatives, the usual choice),
            cached-mnrl (the same with gradient caching, for large batches), infonce (mnrl with an explicit
            ``temperature``), triplet (needs negatives), cosent or cosine (scored pairs, 0..1), contrastive.
        matryoshka: dimensions to train for truncation, e.g. (384, 256, 128, 64).
        hard_negatives: none | bm25 | dense (the base model) mined from the positives plus ``corpus``.
        skip_top: ignore each anchor's top mining candidates (the likeliest unjudged positives).
        max_steps: stop after this many optimiser steps (overrides ``epochs``).
        max_seq_length: tokens per text while training (shorter trains faster; the saved model keeps its own).
        eval_task: an :mod:`embedsmith.evaluation` task scored before and after (with ``matryoshka``, also at
            each of its dimensions); the report's ``significance`` says per score whether the change is real.
    """
    require("sentence_transformers", extra="torch", what="fine-tuning")
    import torch
    from sentence_transformers import SentenceTransformer

    from ..encoders.registry import resolve_device

    if loss not in LOSSES:
        raise InvalidInputError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    if hard_negatives not in HARD_NEGATIVES:
        raise InvalidInputError(f"--hard-negatives must be none, bm25 or dense, got {hard_negatives!r}")
    if not len(data):
        raise InvalidInputError("no training examples")
    folder = model_folder(model)
    out = Path(output)
    dev = resolve_device(device)
    dims = sorted(set(matryoshka or ()), reverse=True)
    before = evaluate_model(folder, eval_task, dev, dims) if eval_task is not None else None
    miner = load_bi_encoder(folder, dev) if hard_negatives == "dense" else None
    data = prepare_data(data, hard_negatives=hard_negatives, negatives_per_query=negatives_per_query,
                        skip_top=skip_top, corpus=corpus, miner=miner, seed=seed)
    torch.manual_seed(seed)
    random.seed(seed)
    st = SentenceTransformer(str(folder), device=dev, local_files_only=True)
    own_length = st.max_seq_length
    if max_seq_length:
        st.max_seq_length = min(max_seq_length, own_length or max_seq_length)
    dataset = build_dataset(data, loss)
    start = time.perf_counter()
    steps = train(st, dataset, build_loss(st, loss, dims, temperature), out,
                  in_batch_negatives=loss in ("mnrl", "cached-mnrl", "infonce"), epochs=epochs,
                  batch_size=batch_size, lr=lr, seed=seed, max_steps=max_steps, show_progress=show_progress,
                  device=dev)
    seconds = time.perf_counter() - start
    st.max_seq_length = own_length
    st.save(str(out))
    after = evaluate_model(out, eval_task, dev, dims) if eval_task is not None else None
    report = FinetuneReport(
        output=str(out), base_model=str(model), kind="bi-encoder",
        loss=loss + (f" + matryoshka {dims}" if dims else ""), examples=len(dataset), steps=steps, seconds=seconds,
        hyperparameters={"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                         "hard_negatives": hard_negatives, "negatives_per_query": negatives_per_query,
                         "skip_top": skip_top, "max_steps": max_steps, "max_seq_length": max_seq_length, "device": dev},
        data=data.source, before=before.scores if before else {}, after=after.scores if after else {},
        significance=compare_evaluations(before, after) if before and after else {})
    write_card(out, report)
    return report
