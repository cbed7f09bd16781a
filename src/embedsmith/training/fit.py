"""Fine-tuning: bi-encoders on sentence-transformers' trainer, cross-encoders on a plain loop.

:func:`finetune` trains a bi-encoder with ``SentenceTransformerTrainer``. :func:`finetune_reranker` trains a
cross-encoder with a short loop over the Hugging Face model, because it needs a separate learning rate for
the new head and a listwise loss over mined groups (see its docstring). Both mine hard negatives and
write a normal sentence-transformers folder with a model card recording data, loss and hyperparameters;
:func:`finetune` also evaluates before and after when given a task, and the card records both.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, require
from .data import TrainingData
from .mining import mine_hard_negatives

LOSSES = ("mnrl", "cached-mnrl", "infonce", "triplet", "cosent", "cosine", "contrastive")


@dataclass
class FinetuneReport:
    """What a fine-tune did: the output folder, steps, seconds, and scores before and after."""

    output: str
    base_model: str
    loss: str
    examples: int
    steps: int
    seconds: float
    hyperparameters: dict[str, Any]
    data: str
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)


def model_folder(model: str) -> Path:
    """The local folder of an alias (minilm, mpnet) or a path; the multilingual engines cannot be trained."""
    from ..encoders.registry import MODELS

    info = MODELS.get(model.lower())
    if info is not None:
        if info.folder is None:
            raise InvalidInputError(f"{model} runs on a fixed inference engine and cannot be fine-tuned; "
                                    "fine-tune a sentence-transformers folder (minilm, mpnet or your own)")
        return Path(info.folder())
    p = Path(model).expanduser()
    if not (p / "config.json").is_file():
        raise InvalidInputError(f"model {model!r} is neither an alias nor a sentence-transformers folder")
    return p


def _same_document(candidate: str, anchor: str, positives: Sequence[str]) -> bool:
    """True when the candidate holds the anchor or a positive verbatim, or a positive holds it."""
    c = " ".join(candidate.split())
    if " ".join(anchor.split()) in c:
        return True
    return any((q := " ".join(p.split())) in c or c in q for p in positives)


def _random_documents(rng: random.Random, docs: Sequence[str], anchor: str, positives: Sequence[str],
                      taken: Sequence[str], n: int) -> list[str]:
    """Up to ``n`` random documents that are not a positive of ``anchor``, not in ``taken``, and not the
    document the anchor or a positive was cut from."""
    out: list[str] = []
    for _ in range(20 * n):
        if len(out) >= n:
            break
        cand = docs[rng.randrange(len(docs))]
        if cand not in positives and cand not in taken and cand not in out \
                and not _same_document(cand, anchor, positives):
            out.append(cand)
    return out


def add_hard_negatives(data: TrainingData, *, method: str, per_query: int, corpus: Sequence[str] = (),
                       encoder: Any = None, skip_top: int = 0, margin: float | None = None,
                       seed: int = 42) -> TrainingData:
    """Mine ``per_query`` negatives for every anchor from its positives plus ``corpus``; rows that get
    fewer are topped up with random documents. Never a positive of that anchor, nor a document holding the
    anchor or a positive verbatim (the source of an inverse-cloze sentence or of a title). ``skip_top``
    and ``margin`` are :func:`mine_hard_negatives`' false-negative guards."""
    if per_query < 1:
        raise InvalidInputError(f"negatives per query must be >= 1, got {per_query}")
    docs = list(dict.fromkeys([*corpus, *data.positives]))
    index = {d: i for i, d in enumerate(docs)}
    groups: dict[str, set[int]] = {}
    for a, p in zip(data.anchors, data.positives, strict=True):
        groups.setdefault(a, set()).add(index[p])
    anchors = list(groups)
    # Mine more than needed: candidates that contain the anchor or a positive verbatim (the full document
    # an inverse-cloze sentence or a title was cut from) are the same document, not negatives.
    mined = mine_hard_negatives(anchors, docs, [sorted(groups[a]) for a in anchors], method=method,
                                k=per_query * 3 + 5, skip_top=skip_top, margin=margin, encoder=encoder)
    by_anchor = {}
    for a, cands in zip(anchors, mined, strict=True):
        own = [docs[i] for i in groups[a]]
        keep = [i for i in cands if not _same_document(docs[i], a, own)]
        by_anchor[a] = keep[:per_query]
    rng = random.Random(seed)
    out = TrainingData(source=f"{data.source} + {method} negatives")
    for a, p in zip(data.anchors, data.positives, strict=True):
        negs = [docs[i] for i in by_anchor[a]]
        own = [docs[i] for i in groups[a]]  # top up with random documents that are not this one's
        negs += _random_documents(rng, docs, a, own, negs, per_query - len(negs))
        out.add(a, p, negs[:per_query])
    return out


def _miner(method: str, folder: Path, device: str) -> Any:
    """The base model as an encoder, for dense mining; None for BM25."""
    if method != "dense":
        return None
    from ..encoders import load_encoder

    return load_encoder(str(folder), backend="torch", device=device)


def _dataset(data: TrainingData, loss: str) -> Any:
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


def _loss(model: Any, loss: str, matryoshka: Sequence[int] | None, temperature: float) -> Any:
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


def _evaluate(folder: str | Path, task: Any, device: str, dims: Sequence[int] = ()) -> dict[str, float]:
    from ..encoders import load_encoder

    enc = load_encoder(str(folder), backend="torch", device=device)
    out = {"main_score": task.evaluate(enc).main_score}
    for d in dims:
        if d < enc.dim:
            out[f"main_score@{d}"] = task.evaluate(enc, dims=d).main_score
    return out


def _first_stage(enc: Any, task: Any, k: int) -> dict[str, list[str]]:
    """Each query's top ``k`` document ids by the bi-encoder ``enc`` (exact cosine)."""

    def embed(texts: Sequence[str], kind: str | None = None) -> Any:
        return enc.encode(list(texts), kind=kind)

    return task.rank(*task.encode(embed), k=k)


def _rerank_scores(task: Any, first: dict[str, list[str]], reranker: Path,
                   device: str) -> tuple[dict[str, float], dict[str, float]]:
    """Scores of the first-stage ranking and of the same candidates reordered by ``reranker``."""
    import numpy as np

    from ..rerankers import Reranker

    ce = Reranker(reranker, backend="torch", device=device)
    reranked = {}
    for qid, ids in first.items():
        logits = ce.logits(task.queries[qid], [task.corpus[d] for d in ids])
        reranked[qid] = [ids[i] for i in np.argsort(-logits, kind="stable")]
    keys = ("ndcg_at_10", "mrr_at_10")
    a, b = task.score_run(first), task.score_run(reranked)
    return {k: a[k] for k in keys if k in a}, {k: b[k] for k in keys if k in b}


def _write_card(output: Path, report: FinetuneReport) -> None:
    lines = [
        "# Fine-tuned with embedsmith",
        "",
        f"- base model: `{report.base_model}`",
        f"- data: {report.data} ({report.examples} examples)",
        f"- loss: `{report.loss}`",
        f"- steps: {report.steps}, training time {report.seconds:.0f} s",
        "- hyperparameters: " + ", ".join(f"{k}={v}" for k, v in report.hyperparameters.items()),
    ]
    if report.before or report.after:
        reranker = "candidates" in report.hyperparameters
        head = (f"| metric | first stage (top {report.hyperparameters['candidates']}) | reranked |" if reranker
                else "| metric | before | after |")
        lines += ["", head, "|---|---:|---:|"]
        for k in report.before:
            lines.append(f"| {k} | {report.before[k]:.4f} | {report.after.get(k, float('nan')):.4f} |")
    card = output / "README.md"
    previous = card.read_text(encoding="utf-8") if card.is_file() else ""
    card.write_text("\n".join(lines) + "\n\n" + previous, encoding="utf-8")
    (output / "embedsmith_training.json").write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")


def _quiet(trainer: Any, show_progress: bool) -> Any:
    """Library calls stay quiet: no per-step log lines unless progress is wanted."""
    if not show_progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def _args(cls: Any, output: Path, *, epochs: float, batch_size: int, lr: float, seed: int, max_steps: int | None,
          show_progress: bool, device: str, **extra: Any) -> Any:
    return cls(
        output_dir=str(output / "checkpoints"), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        learning_rate=lr, warmup_steps=0.1, seed=seed, data_seed=seed, save_strategy="epoch", save_total_limit=1,
        logging_steps=50, report_to="none", disable_tqdm=not show_progress, max_steps=max_steps or -1,
        use_cpu=device == "cpu", dataloader_num_workers=0, **extra)


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
            each of its dimensions).
    """
    require("sentence_transformers", extra="torch", what="fine-tuning")
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from ..encoders.registry import resolve_device

    if loss not in LOSSES:
        raise InvalidInputError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    if hard_negatives not in ("none", "bm25", "dense"):
        raise InvalidInputError(f"--hard-negatives must be none, bm25 or dense, got {hard_negatives!r}")
    if not len(data):
        raise InvalidInputError("no training examples")
    folder = model_folder(model)
    out = Path(output)
    dev = resolve_device(device)
    dims = sorted(set(matryoshka or ()), reverse=True)
    before = _evaluate(folder, eval_task, dev, dims) if eval_task is not None else {}
    if hard_negatives != "none":
        if data.scores is not None:
            raise InvalidInputError("hard negatives are mined for anchor/positive pairs, not scored pairs")
        data = add_hard_negatives(data, method=hard_negatives, per_query=negatives_per_query, corpus=corpus,
                                  encoder=_miner(hard_negatives, folder, dev), skip_top=skip_top, seed=seed)
    torch.manual_seed(seed)
    random.seed(seed)
    st = SentenceTransformer(str(folder), device=dev, local_files_only=True)
    own_length = st.max_seq_length
    if max_seq_length:
        st.max_seq_length = min(max_seq_length, own_length or max_seq_length)
    dataset = _dataset(data, loss)
    in_batch = loss in ("mnrl", "cached-mnrl", "infonce")
    args = _args(SentenceTransformerTrainingArguments, out, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                 max_steps=max_steps, show_progress=show_progress, device=dev,
                 batch_sampler=BatchSamplers.NO_DUPLICATES if in_batch else BatchSamplers.BATCH_SAMPLER)
    trainer = _quiet(SentenceTransformerTrainer(model=st, args=args, train_dataset=dataset,
                                                loss=_loss(st, loss, dims, temperature)), show_progress)
    start = time.perf_counter()
    state = trainer.train()
    seconds = time.perf_counter() - start
    st.max_seq_length = own_length
    st.save(str(out))
    after = _evaluate(out, eval_task, dev, dims) if eval_task is not None else {}
    report = FinetuneReport(
        output=str(out), base_model=str(model), loss=loss + (f" + matryoshka {dims}" if dims else ""),
        examples=len(dataset), steps=int(state.global_step), seconds=seconds,
        hyperparameters={"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                         "hard_negatives": hard_negatives, "negatives_per_query": negatives_per_query,
                         "skip_top": skip_top, "max_steps": max_steps, "max_seq_length": max_seq_length, "device": dev},
        data=data.source, before=before, after=after)
    _write_card(out, report)
    return report


RERANKER_LOSSES = ("bce", "listwise")


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
    ``after`` the same candidates reordered by the trained reranker. A reranker trained from a bi-encoder on
    little data can rank worse than its first stage (benchmarks/README.md), so check ``after`` before use.
    """
    require("sentence_transformers", extra="torch", what="fine-tuning")
    import torch
    from sentence_transformers import CrossEncoder

    from ..encoders.registry import resolve_device

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
    folder = model_folder(model)
    retriever = model_folder(first_stage) if first_stage else folder
    dev = resolve_device(device)
    miner = _miner(hard_negatives, folder, dev)  # None unless mining is dense
    # First-stage candidates, before any training; dense mining's encoder serves when it is the same model.
    first = None
    if eval_task is not None:
        same = miner is not None and retriever == folder
        first = _first_stage(miner if same else _miner("dense", retriever, dev), eval_task, candidates)
    if hard_negatives == "none":
        mined = data
    else:
        mined = add_hard_negatives(data, method=hard_negatives, per_query=negatives_per_query, corpus=corpus,
                                   encoder=miner, seed=seed)
    rng = random.Random(seed)
    docs = list(dict.fromkeys([*corpus, *data.positives]))
    own: dict[str, list[str]] = {}
    for a, pos in zip(data.anchors, data.positives, strict=True):
        own.setdefault(a, []).append(pos)
    # Each group: (query, [positive, negatives...]); easy random negatives keep the model from learning
    # "sharing words with the query means irrelevant" from hard negatives alone.
    groups = [(a, [pos, *negs, *_random_documents(rng, docs, a, own[a], negs, random_negatives)])
              for a, pos, negs in zip(mined.anchors, mined.positives, mined.negatives, strict=True)]
    width = max(len(g[1]) for g in groups)
    if loss == "listwise":  # one softmax per group needs equal groups; a tiny corpus may leave some short
        groups = [g for g in groups if len(g[1]) == width]
    if loss == "bce":
        units: list[Any] = [(a, t, float(j == 0)) for a, texts in groups for j, t in enumerate(texts)]
        per_batch = batch_size
    else:
        units = groups
        per_batch = max(1, batch_size // width)
    torch.manual_seed(seed)
    ce = CrossEncoder(str(folder), num_labels=1, device=dev, max_length=max_length, local_files_only=True)
    out = Path(output)
    # A plain loop over the Hugging Face model: sentence-transformers 6's CrossEncoderTrainer, on a
    # cross-encoder converted from a bi-encoder folder, left rankings at chance in our runs while this
    # loop learned (benchmarks/README.md).
    net, tok = ce.model, ce.tokenizer
    head = [p for n, p in net.named_parameters() if n.startswith(("classifier", "bert.pooler", "pooler"))]
    ids = {id(p) for p in head}
    body = [p for p in net.parameters() if id(p) not in ids]
    per_epoch = math.ceil(len(units) / per_batch)
    total = max_steps or max(1, math.ceil(per_epoch * epochs))
    opt = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": head_lr}])
    warm = max(1, total // 10)
    # Linear warm-up over the first tenth, then linear decay to zero.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(width - 1), device=dev))
    net.train()
    start = time.perf_counter()
    step = 0
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="training reranker", disable=not show_progress) as bar:
        while step < total:
            rng.shuffle(units)
            for i in range(0, len(units), per_batch):
                batch = units[i : i + per_batch]
                if loss == "bce":
                    firsts, seconds_ = [u[0] for u in batch], [u[1] for u in batch]
                else:
                    firsts = [a for a, texts in batch for _ in texts]
                    seconds_ = [t for _, texts in batch for t in texts]
                enc = tok(firsts, seconds_, padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(dev)
                logits = net(**enc).logits.view(-1)
                if loss == "bce":
                    value = bce(logits, torch.tensor([u[2] for u in batch], device=dev))
                else:
                    value = torch.nn.functional.cross_entropy(
                        logits.view(len(batch), width), torch.zeros(len(batch), dtype=torch.long, device=dev))
                value.backward()
                opt.step()
                sched.step()
                opt.zero_grad()
                step += 1
                bar.update(1)
                if step >= total:
                    break
    net.eval()
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    ce.save(str(out))
    names = {"bce": "binary cross-entropy (cross-encoder)",
             "listwise": "listwise softmax cross-entropy (cross-encoder)"}
    before, after = ({}, {}) if first is None else _rerank_scores(eval_task, first, out, dev)
    report = FinetuneReport(
        output=str(out), base_model=str(model), loss=names[loss], examples=sum(len(g[1]) for g in groups),
        steps=step, seconds=seconds, before=before, after=after,
        hyperparameters={"epochs": epochs, "batch_size": batch_size, "lr": lr, "head_lr": head_lr, "seed": seed,
                         "hard_negatives": hard_negatives, "negatives_per_query": negatives_per_query,
                         "random_negatives": random_negatives, "max_length": max_length,
                         "max_steps": max_steps, "device": dev,
                         **({"first_stage": str(first_stage or model), "candidates": candidates}
                            if eval_task is not None else {})},
        data=mined.source + (f" + {random_negatives} random negatives" if random_negatives else ""))
    _write_card(out, report)
    return report
