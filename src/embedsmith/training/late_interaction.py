"""Fine-tuning a late-interaction (multi-vector, ColBERT-style) model on sentence-transformers' multi-vector
trainer, and scoring it as a second stage: MaxSim reordering of a dense first stage's top N.

The start model is a bi-encoder's transformer (MiniLM by default) with a token projection, a scoring mask and
per-token normalisation on top: sentence-transformers' own ``MultiVectorEncoder`` modules. By default the
projection starts as the identity at the transformer's width, so the untrained start is exactly MaxSim over
the base model's token vectors (what ``--rerank maxsim:minilm`` does) and training moves on from there; a
smaller ``token_dim`` starts from a random projection and needs more training. A multi-vector folder given
as ``model`` is trained further as it is.

Training uses ``MultiVectorMultipleNegativesRankingLoss`` (in-batch negatives plus any mined ones, scored by
MaxSim) with ``MultiVectorEncoderTrainer``; the output is a ``MultiVectorEncoder`` folder that
``load_encoder(path)`` reads (:mod:`embedsmith.encoders.multi_vector`).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, require
from ..evaluation.stats import Comparison
from .data import TrainingData
from .models import model_folder
from .negatives import add_hard_negatives
from .report import FinetuneReport, write_card

#: nDCG@10 and the usual columns of a reranked run, reported before and after.
METRICS = ("ndcg_at_10", "mrr_at_10", "recall_at_100")
#: the metrics compared with paired resampling (recall@100 is the first stage's, the same before and after)
JUDGED = ("ndcg_at_10", "mrr_at_10")


@dataclass
class LateInteractionReport(FinetuneReport):
    """A late-interaction fine-tune (``kind="late-interaction"``): ``before``/``after`` are the first stage's top
    ``candidates`` reordered by MaxSim with the untrained start and with the trained model, ``significance``
    the trained model against its start; ``first_stage`` scores the top N as it came, and
    ``first_stage_significance`` the trained model's reordering against it (B = trained, paired over the
    evaluation's queries)."""

    first_stage: dict[str, float] = field(default_factory=dict)
    first_stage_significance: dict[str, Comparison] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from ..evaluation.compare import significance_dict

        return {**super().to_dict(),
                "first_stage_significance": significance_dict(list(self.first_stage_significance.values()))}


def maxsim_run(task: Any, first: dict[str, list[str]], encoder: Any, *, batch_size: int = 32,
               show_progress: bool = False) -> dict[str, list[str]]:
    """Each query's first-stage candidates reordered by MaxSim with ``encoder``'s token vectors.

    Every candidate document is encoded once (not once per query that retrieved it), and its token vectors are
    kept as float16 until scored, so a few thousand documents fit in memory.
    """
    from ..rerankers import maxsim

    ids = list(dict.fromkeys(d for cands in first.values() for d in cands))
    tokens = encoder.token_vectors([task.corpus[d] for d in ids], kind="document", batch_size=batch_size,
                                   show_progress=show_progress) if ids else []
    by_id = {d: t.astype(np.float16) for d, t in zip(ids, tokens, strict=True)}
    qids = list(first)
    queries = encoder.token_vectors([task.queries[q] for q in qids], kind="query", batch_size=batch_size)
    out: dict[str, list[str]] = {}
    for qid, q in zip(qids, queries, strict=True):
        cands = first[qid]
        scores = maxsim(q, [by_id[d].astype(np.float32) for d in cands])
        out[qid] = [cands[i] for i in np.argsort(-scores, kind="stable")]
    return out


def _first_stage_run(task: Any, encoder: Any, k: int) -> dict[str, list[str]]:
    """Each judged query's top ``k`` document ids by the bi-encoder (exact cosine)."""

    def embed(texts: Sequence[str], kind: str | None = None) -> Any:
        return encoder.encode(list(texts), kind=kind)

    return task.rank(*task.encode(embed), k=k)


def _scores(task: Any, run: dict[str, list[str]]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The run's metrics and, for :data:`JUDGED`, its per-query scores in ``task.qrels`` order."""
    agg = task.score_run(run)
    items = task.items_of_run(run).metrics
    return ({k: float(agg[k]) for k in METRICS if k in agg},
            {k: np.asarray(items[k].rows, np.float64) for k in JUDGED if k in items})


def _compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Comparison]:
    from ..evaluation.stats import paired_bootstrap

    return {k: paired_bootstrap(a[k], b[k], metric=k) for k in JUDGED if k in a and k in b and len(a[k]) >= 2}


def _start_model(folder: Path, token_dim: int | None, device: str) -> Any:
    """A ``MultiVectorEncoder`` to train: a multi-vector folder as it is, or a bi-encoder's transformer with a
    token projection (identity at its width, or random to ``token_dim``), mask and normalisation."""
    import torch
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules.dense import Dense

    from ..encoders.multi_vector import is_multi_vector_folder

    if is_multi_vector_folder(folder):
        if token_dim is not None:
            raise InvalidInputError(f"{str(folder)!r} is already a multi-vector model with its own projection; "
                                    "leave token_dim unset")
        return MultiVectorEncoder(str(folder), device=device, local_files_only=True)
    # sentence-transformers converts a bi-encoder folder: its transformer, then a fresh projection, the
    # scoring mask and per-token normalisation (its pooling dropped). The projection is replaced below.
    model = MultiVectorEncoder(str(folder), device=device, local_files_only=True)
    slot = next(name for name, module in model._modules.items() if isinstance(module, Dense))
    hidden = int(model[0].get_embedding_dimension())  # type: ignore[operator]
    dense = Dense(in_features=hidden, out_features=token_dim or hidden, bias=False,
                  activation_function=torch.nn.Identity(), module_input_name="token_embeddings")
    if token_dim is None:
        with torch.no_grad():
            dense.linear.weight.copy_(torch.eye(hidden))
    model._modules[slot] = dense.to(model.device)
    return model


def _dataset(data: TrainingData) -> Any:
    from datasets import Dataset

    if data.scores is not None:
        raise InvalidInputError("late-interaction training takes anchor/positive pairs (optionally with "
                                "negatives), not scored pairs")
    cols: dict[str, list[str]] = {"anchor": data.anchors, "positive": data.positives}
    for j in range(min((len(n) for n in data.negatives), default=0)):
        cols[f"negative_{j + 1}"] = [n[j] for n in data.negatives]
    return Dataset.from_dict(cols)


def _write_card(output: Path, report: LateInteractionReport) -> None:
    """The shared card (untrained against trained, with significance), after lines on loading the model and on
    the first stage it reorders."""
    lines = ["Load it with `embedsmith.load_encoder(path)`; rerank with `--rerank maxsim:PATH`."]
    if report.first_stage:
        lines += ["", f"First stage: {report.hyperparameters.get('first_stage')}, top "
                      f"{report.hyperparameters.get('candidates')}: "
                      + ", ".join(f"{k} {v:.4f}" for k, v in report.first_stage.items())]
        for c in report.first_stage_significance.values():
            lines.append(f"- trained > MaxSim against the first stage, {c.metric}: {c.diff:+.4f} "
                         f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}], p = {c.p_value:.4f} ({c.verdict})")
    card = output / "README.md"
    previous = card.read_text(encoding="utf-8") if card.is_file() else ""
    card.write_text("\n".join(lines) + "\n\n" + previous, encoding="utf-8")
    write_card(output, report)  # prepends the training record above these lines


def finetune_late_interaction(
    model: str,
    data: TrainingData,
    output: str | Path,
    *,
    token_dim: int | None = None,
    hard_negatives: str = "none",
    negatives_per_query: int = 1,
    skip_top: int = 0,
    corpus: Sequence[str] = (),
    epochs: float = 1.0,
    batch_size: int = 32,
    lr: float = 3e-5,
    scale: float = 1.0,
    seed: int = 42,
    max_steps: int | None = None,
    max_seq_length: int | None = None,
    eval_task: Any = None,
    first_stage: Any = None,
    candidates: int = 100,
    device: str = "auto",
    show_progress: bool = False,
) -> LateInteractionReport:
    """Fine-tune a multi-vector (late-interaction) model and save it to ``output``.

    Args:
        model: alias (minilm, mpnet) or a sentence-transformers folder, the start of a new multi-vector model;
            or a multi-vector folder, trained further.
        data: training pairs (see :func:`~embedsmith.training.load_training_data`).
        token_dim: width of the token vectors. None keeps the transformer's width with an identity projection
            (the untrained start is MaxSim over the base model's own token vectors); a smaller width starts
            from a random projection (smaller stored token vectors, more training needed).
        hard_negatives: none | bm25 | dense (the first-stage encoder), mined from the positives plus ``corpus``.
        skip_top: ignore each anchor's top mining candidates (the likeliest unjudged positives).
        scale: the loss's 1/temperature on summed MaxSim scores (sentence-transformers' and PyLate's 1.0).
        max_steps: stop after this many optimiser steps (overrides ``epochs``).
        max_seq_length: tokens per text while training (shorter trains faster; the saved model keeps its own).
        eval_task: a :class:`~embedsmith.evaluation.RetrievalTask`: its queries' top ``candidates`` by
            ``first_stage`` are reordered by MaxSim before and after training, with paired-bootstrap
            intervals of the nDCG@10 change.
        first_stage: the bi-encoder retrieving the candidates at evaluation (and mining dense negatives): a name,
            a folder or a loaded encoder (default: ``model`` when it is a bi-encoder, else minilm).
        candidates: first-stage hits reordered at evaluation.

    Returns:
        A :class:`LateInteractionReport` (also written to ``output/embedsmith_training.json`` and the card).
    """
    require("sentence_transformers", extra="torch", what="fine-tuning")
    import torch
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.multi_vector_encoder import (
        MultiVectorEncoderTrainer,
        MultiVectorEncoderTrainingArguments,
    )
    from sentence_transformers.multi_vector_encoder.losses import MultiVectorMultipleNegativesRankingLoss

    from ..encoders import load_encoder
    from ..encoders.multi_vector import MultiVectorTorchEncoder, is_multi_vector_folder
    from ..encoders.registry import resolve_device
    from ..evaluation import RetrievalTask

    if hard_negatives not in ("none", "bm25", "dense"):
        raise InvalidInputError(f"hard negatives must be none, bm25 or dense, got {hard_negatives!r}")
    if not len(data):
        raise InvalidInputError("no training examples")
    if eval_task is not None and not isinstance(eval_task, RetrievalTask):
        raise InvalidInputError(f"a late-interaction model is evaluated on a retrieval task (a BEIR folder), "
                                f"got {type(eval_task).__name__}")
    if isinstance(candidates, bool) or candidates < 1:
        raise InvalidInputError(f"candidates must be a positive integer, got {candidates!r}")
    if not scale > 0:
        raise InvalidInputError(f"scale must be positive, got {scale!r}")
    folder = model_folder(model)
    multi = is_multi_vector_folder(folder)
    if token_dim is not None and not multi:  # checked before any model loads
        from ..encoders.folder import ModelFolder

        width = ModelFolder.open(folder).dim
        if isinstance(token_dim, bool) or not 8 <= token_dim <= width:
            raise InvalidInputError(f"token_dim must be from 8 to the model's width {width}, got {token_dim!r}")
    out = Path(output)
    dev = resolve_device(device)
    retriever: Any = None
    if first_stage is not None and not isinstance(first_stage, (str, Path)):
        retriever, retriever_name = first_stage, str(getattr(first_stage, "name", first_stage))
    else:
        retriever_name = str(first_stage or ("minilm" if multi else model))
        if eval_task is not None or hard_negatives == "dense":
            retriever = load_encoder(retriever_name, device=dev)
    torch.manual_seed(seed)
    random.seed(seed)
    st = _start_model(folder, token_dim, dev)
    first: dict[str, list[str]] = {}
    first_scores: dict[str, float] = {}
    before: dict[str, float] = {}
    per_first: dict[str, np.ndarray] = {}
    per_before: dict[str, np.ndarray] = {}
    if eval_task is not None:
        first = _first_stage_run(eval_task, retriever, candidates)
        first_scores, per_first = _scores(eval_task, first)
        start = MultiVectorTorchEncoder(folder, name=f"{model} (untrained)", device=dev, model=st)
        before, per_before = _scores(eval_task, maxsim_run(eval_task, first, start, show_progress=show_progress))
    if hard_negatives != "none":
        data = add_hard_negatives(data, method=hard_negatives, per_query=negatives_per_query, corpus=corpus,
                                  encoder=retriever if hard_negatives == "dense" else None, skip_top=skip_top,
                                  seed=seed)
    dataset = _dataset(data)
    with tempfile.TemporaryDirectory(prefix="embedsmith-late-") as scratch:
        args = MultiVectorEncoderTrainingArguments(
            output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            learning_rate=lr, warmup_steps=0.1, seed=seed, data_seed=seed, save_strategy="no",
            logging_steps=50, report_to="none", disable_tqdm=not show_progress, max_steps=max_steps or -1,
            use_cpu=dev == "cpu", dataloader_num_workers=0, max_length=max_seq_length,
            batch_sampler=BatchSamplers.NO_DUPLICATES)
        trainer = MultiVectorEncoderTrainer(model=st, args=args, train_dataset=dataset,
                                            loss=MultiVectorMultipleNegativesRankingLoss(st, scale=scale))
        if not show_progress:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        began = time.perf_counter()
        state = trainer.train()
        seconds = time.perf_counter() - began
    st.save(str(out))
    after: dict[str, float] = {}
    significance: dict[str, Comparison] = {}
    against_first: dict[str, Comparison] = {}
    if eval_task is not None:
        trained = load_encoder(out, device=dev)  # by path, as users will load it
        after, per_after = _scores(eval_task, maxsim_run(eval_task, first, trained, show_progress=show_progress))
        significance, against_first = _compare(per_before, per_after), _compare(per_first, per_after)
    report = LateInteractionReport(
        output=str(out), base_model=str(model), kind="late-interaction",
        loss=f"multi-vector mnrl (MaxSim, scale {scale})",
        examples=len(dataset), steps=int(state.global_step), seconds=seconds,
        hyperparameters={"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                         "token_dim": token_dim or int(st.get_embedding_dimension() or 0),
                         "hard_negatives": hard_negatives,
                         "negatives_per_query": negatives_per_query, "skip_top": skip_top, "max_steps": max_steps,
                         "max_seq_length": max_seq_length, "first_stage": retriever_name,
                         "candidates": candidates, "device": dev},
        data=data.source, before=before, after=after, significance=significance, first_stage=first_scores,
        first_stage_significance=against_first)
    _write_card(out, report)
    return report

