"""Cross-encoder (reranker) training on a plain loop over the Hugging Face model.

sentence-transformers 6's ``CrossEncoderTrainer``, on a cross-encoder converted from a bi-encoder folder,
left rankings at chance in our runs while this loop learned (benchmarks/README.md); the loop also gives the
new classification head its own learning rate and trains a listwise loss over mined groups.

:func:`finetune_reranker` runs named steps: :func:`check_request`, :func:`build_groups` (each query with its
positive and negatives), :func:`training_units` (pairs for bce, groups for listwise), :func:`make_optimizer`
(two learning rates, warm-up then linear decay), :func:`train_loop` (one :func:`batch_loss` per step), and,
with an evaluation task, :func:`retrieve_candidates` and :func:`rerank_comparison`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, require
from ..evaluation.stats import Comparison
from .data import TrainingData
from .models import load_bi_encoder, model_folder
from .negatives import add_hard_negatives, random_documents
from .report import FinetuneReport, write_card

RERANKER_LOSSES = ("bce", "listwise")
#: the scores a reranker's report holds, first stage against reranked
RERANK_METRICS = ("ndcg_at_10", "mrr_at_10")

#: a (query, [positive, negatives...]) group
Group = tuple[str, list[str]]


def check_request(data: TrainingData, *, hard_negatives: str, loss: str, negatives_per_query: int,
                  random_negatives: int, batch_size: int, max_length: int, candidates: int, eval_task: Any) -> None:
    """Every check of :func:`finetune_reranker`'s arguments, before anything loads.

    Raises:
        InvalidInputError: naming the value that is wrong.
    """
    if data.scores is not None:
        raise InvalidInputError("a reranker trains on query/positive pairs, not scored pairs")
    if hard_negatives not in ("bm25", "dense", "none"):
        raise InvalidInputError(f"--hard-negatives must be bm25, dense or none (the data's own negatives), "
                                f"got {hard_negatives!r}")
    if hard_negatives == "none":
        for i, negs in enumerate(data.negatives):
            if not negs:
                raise InvalidInputError(
                    f"example {i + 1} ({data.anchors[i][:40]!r}) has no negative: with hard_negatives='none' "
                    "every example brings its own (e.g. from `embedsmith mine-negatives`); or mine with bm25/dense")
    if loss not in RERANKER_LOSSES:
        raise InvalidInputError(f"unknown reranker loss {loss!r}; expected one of {', '.join(RERANKER_LOSSES)}")
    if negatives_per_query < 1 or random_negatives < 0:
        raise InvalidInputError(f"negatives_per_query must be >= 1 and random_negatives >= 0, got "
                                f"{negatives_per_query} and {random_negatives}")
    if batch_size < 1 or max_length < 8:
        raise InvalidInputError(f"batch_size must be >= 1 and max_length >= 8, got {batch_size} and {max_length}")
    if candidates < 1:
        raise InvalidInputError(f"candidates must be >= 1, got {candidates}")
    if eval_task is not None and getattr(eval_task, "task_type", None) != "retrieval":
        raise InvalidInputError(f"a reranker is evaluated on a retrieval task (a BEIR folder), got "
                                f"{getattr(eval_task, 'task_type', type(eval_task).__name__)!r}")
    if not len(data):
        raise InvalidInputError("no training examples")


def retrieve_candidates(enc: Any, task: Any, k: int) -> dict[str, list[str]]:
    """Each query's top ``k`` document ids by the bi-encoder ``enc`` (exact cosine)."""

    def embed(texts: Sequence[str], kind: str | None = None) -> Any:
        return enc.encode(list(texts), kind=kind)

    return task.rank(*task.encode(embed), k=k)


def build_groups(data: TrainingData, mined: TrainingData, corpus: Sequence[str], random_negatives: int,
                 rng: random.Random) -> list[Group]:
    """Each mined example as (query, [positive, negatives..., random negatives...]). Easy random negatives
    keep the model from learning "sharing words with the query means irrelevant" from hard negatives alone."""
    docs = list(dict.fromkeys([*corpus, *data.positives]))
    own: dict[str, list[str]] = {}
    for a, pos in zip(data.anchors, data.positives, strict=True):
        own.setdefault(a, []).append(pos)
    return [(a, [pos, *negs, *random_documents(rng, docs, a, own[a], negs, random_negatives)])
            for a, pos, negs in zip(mined.anchors, mined.positives, mined.negatives, strict=True)]


def training_units(groups: list[Group], loss: str, batch_size: int) -> tuple[list[Any], int, int, list[Group]]:
    """What one step draws from: (query, text, label) pairs for bce, whole groups for listwise. Returns the
    units, units per batch, the group width, and the groups trained on (listwise drops short ones)."""
    width = max(len(g[1]) for g in groups)
    if loss == "listwise":  # one softmax per group needs equal groups; a tiny corpus may leave some short
        groups = [g for g in groups if len(g[1]) == width]
    if loss == "bce":
        return [(a, t, float(j == 0)) for a, texts in groups for j, t in enumerate(texts)], batch_size, width, groups
    return list(groups), max(1, batch_size // width), width, groups


def make_optimizer(net: Any, *, lr: float, head_lr: float, total: int) -> tuple[Any, Any]:
    """AdamW with the new head (classifier, pooler) at ``head_lr`` and the encoder at ``lr``; linear warm-up
    over the first tenth of ``total`` steps, then linear decay to zero."""
    import torch

    head = [p for n, p in net.named_parameters() if n.startswith(("classifier", "bert.pooler", "pooler"))]
    ids = {id(p) for p in head}
    body = [p for p in net.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": head_lr}])
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    return opt, sched


@dataclass
class LossSetting:
    """How :func:`batch_loss` scores a batch: the loss, group width, token limit, device, and bce's criterion."""

    loss: str
    width: int
    max_length: int
    device: str
    bce: Any


def batch_loss(net: Any, tok: Any, batch: list[Any], setting: LossSetting) -> Any:
    """The loss of one batch: binary cross-entropy per pair, or softmax cross-entropy over each group
    (the positive first)."""
    import torch

    if setting.loss == "bce":
        firsts, seconds = [u[0] for u in batch], [u[1] for u in batch]
    else:
        firsts = [a for a, texts in batch for _ in texts]
        seconds = [t for _, texts in batch for t in texts]
    enc = tok(firsts, seconds, padding=True, truncation=True, max_length=setting.max_length,
              return_tensors="pt").to(setting.device)
    logits = net(**enc).logits.view(-1)
    if setting.loss == "bce":
        return setting.bce(logits, torch.tensor([u[2] for u in batch], device=setting.device))
    return torch.nn.functional.cross_entropy(
        logits.view(len(batch), setting.width), torch.zeros(len(batch), dtype=torch.long, device=setting.device))


def train_loop(net: Any, tok: Any, units: list[Any], per_batch: int, total: int, setting: LossSetting, *,
               opt: Any, sched: Any, rng: random.Random, show_progress: bool) -> int:
    """``total`` optimiser steps over ``units``, reshuffled each pass; the steps taken."""
    from tqdm.auto import tqdm

    net.train()
    step = 0
    with tqdm(total=total, desc="training reranker", disable=not show_progress) as bar:
        while step < total:
            rng.shuffle(units)
            for i in range(0, len(units), per_batch):
                batch_loss(net, tok, units[i : i + per_batch], setting).backward()
                opt.step()
                sched.step()
                opt.zero_grad()
                step += 1
                bar.update(1)
                if step >= total:
                    break
    net.eval()
    return step


@dataclass
class RerankEvaluation:
    """The first stage's scores against the same candidates reranked, and per metric the significance of
    reranked - first stage over the task's queries."""

    before: dict[str, float]
    after: dict[str, float]
    significance: dict[str, Comparison]


def rerank_comparison(task: Any, first: dict[str, list[str]], reranker: Path, device: str) -> RerankEvaluation:
    """Score the first-stage ranking and the same candidates reordered by ``reranker``."""
    import numpy as np

    from ..evaluation.compare import compare_items
    from ..rerankers import Reranker

    ce = Reranker(reranker, backend="torch", device=device)
    reranked = {}
    for qid, ids in first.items():
        logits = ce.logits(task.queries[qid], [task.corpus[d] for d in ids])
        reranked[qid] = [ids[i] for i in np.argsort(-logits, kind="stable")]
    a, b = task.score_run(first), task.score_run(reranked)
    rows = compare_items(task.items_of_run(first), task.items_of_run(reranked), metrics=RERANK_METRICS) \
        if len(first) > 1 else []  # one query: nothing to resample
    return RerankEvaluation({k: a[k] for k in RERANK_METRICS if k in a}, {k: b[k] for k in RERANK_METRICS if k in b},
                            {c.metric: c for c in rows})


def finetune_reranker(
    model: str,
    data: TrainingData,
    output: str | Path,
    *,
    hard_negatives: str = "bm25",
    negatives_per_query: int = 5,
    random_negatives: int = 0,
    loss: str = "bce",
    corpus: Sequence[str] = (),
    epochs: float = 1.0,
    batch_size: int = 16,
    lr: float = 1e-4,
    head_lr: float = 1e-3,
    max_length: int = 256,
    seed: int = 42,
    max_steps: int | None = None,
    eval_task: Any = None,
    first_stage: str | None = None,
    candidates: int = 100,
    device: str = "auto",
    show_progress: bool = False,
) -> FinetuneReport:
    """Train a cross-encoder (one relevance logit) on positives, mined negatives and random negatives.

    Losses: ``bce`` (binary cross-entropy per pair, positives weighted by the negatives per positive) or
    ``listwise`` (softmax cross-entropy over each positive and its negatives, the "localised contrastive"
    loss of Gao et al. 2021; our best Cranfield runs used it, see benchmarks/README.md). The
    classification head is new, so it learns at ``head_lr`` while the encoder learns at ``lr``.
    ``hard_negatives="none"`` trains on the negatives the data brings (every example needs at least one,
    e.g. a file written by ``embedsmith mine-negatives``).
    ``batch_size`` counts (query, text) pairs. The result loads with :class:`embedsmith.Reranker` and
    sentence-transformers' ``CrossEncoder``.

    With ``eval_task`` (a :class:`~embedsmith.evaluation.RetrievalTask`), the ``first_stage`` bi-encoder
    (default: ``model``) retrieves each query's top ``candidates``; ``before`` scores that ranking and
    ``after`` the same candidates reordered by the trained reranker, and ``significance`` says per metric
    whether the difference is real. A reranker trained from a bi-encoder on little data can rank worse than
    its first stage (benchmarks/README.md), so check ``after`` before use.
    """
    require("sentence_transformers", extra="torch", what="fine-tuning")
    import torch
    from sentence_transformers import CrossEncoder

    from ..encoders.registry import resolve_device

    check_request(data, hard_negatives=hard_negatives, loss=loss, negatives_per_query=negatives_per_query,
                  random_negatives=random_negatives, batch_size=batch_size, max_length=max_length,
                  candidates=candidates, eval_task=eval_task)
    folder = model_folder(model)
    retriever = model_folder(first_stage) if first_stage else folder
    dev = resolve_device(device)
    miner = load_bi_encoder(folder, dev) if hard_negatives == "dense" else None
    # First-stage candidates, before any training; dense mining's encoder serves when it is the same model.
    first = None
    if eval_task is not None:
        same = miner is not None and retriever == folder
        first = retrieve_candidates(miner if same else load_bi_encoder(retriever, dev), eval_task, candidates)
    if hard_negatives == "none":
        mined = data
    else:
        mined = add_hard_negatives(data, method=hard_negatives, per_query=negatives_per_query, corpus=corpus,
                                   encoder=miner, seed=seed)
    rng = random.Random(seed)
    units, per_batch, width, groups = training_units(build_groups(data, mined, corpus, random_negatives, rng),
                                                     loss, batch_size)
    torch.manual_seed(seed)
    ce = CrossEncoder(str(folder), num_labels=1, device=dev, max_length=max_length, local_files_only=True)
    out = Path(output)
    total = max_steps or max(1, math.ceil(math.ceil(len(units) / per_batch) * epochs))
    opt, sched = make_optimizer(ce.model, lr=lr, head_lr=head_lr, total=total)
    setting = LossSetting(loss, width, max_length, dev,
                          torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(width - 1), device=dev)))
    start = time.perf_counter()
    step = train_loop(ce.model, ce.tokenizer, units, per_batch, total, setting, opt=opt, sched=sched, rng=rng,
                      show_progress=show_progress)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    ce.save(str(out))
    names = {"bce": "binary cross-entropy (cross-encoder)",
             "listwise": "listwise softmax cross-entropy (cross-encoder)"}
    evaluation = rerank_comparison(eval_task, first, out, dev) if first is not None else None
    report = FinetuneReport(
        output=str(out), base_model=str(model), kind="reranker", loss=names[loss],
        examples=sum(len(g[1]) for g in groups), steps=step, seconds=seconds,
        before=evaluation.before if evaluation else {}, after=evaluation.after if evaluation else {},
        significance=evaluation.significance if evaluation else {},
        hyperparameters={"epochs": epochs, "batch_size": batch_size, "lr": lr, "head_lr": head_lr, "seed": seed,
                         "hard_negatives": hard_negatives, "negatives_per_query": negatives_per_query,
                         "random_negatives": random_negatives, "max_length": max_length,
                         "max_steps": max_steps, "device": dev,
                         **({"first_stage": str(first_stage or model), "candidates": candidates}
                            if eval_task is not None else {})},
        data=mined.source + (f" + {random_negatives} random negatives" if random_negatives else ""))
    write_card(out, report)
    return report
