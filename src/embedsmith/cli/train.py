"""``embedsmith finetune``, ``finetune-reranker``, ``mine-negatives`` and ``distill``: making models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from . import render
from .options import DeviceOpt, JsonOpt, ModelOpt

TrainOpt = Annotated[list[Path], typer.Option("--train", help="training data (repeat to combine): BEIR folder, "
                                                                "JSONL pairs or titled corpus, CSV pairs or labels")]
OutputOpt = Annotated[Path, typer.Option(help="folder for the trained model")]


def _gather(train: list[Path], split: str, inverse_cloze: bool, synthetic: str | None) -> tuple[Any, list[str]]:
    """Combine every training source; return the data and a corpus for mining (BEIR corpora, passages)."""
    from ..training.data import TrainingData, load_training_data, read_beir, read_titled_corpus
    from ..training.data import inverse_cloze as ict

    data = TrainingData()
    corpus: list[str] = []
    for path in train:
        if path.is_dir():
            pairs, docs, _ = read_beir(path, split=split)
            corpus += list(docs.values())
        else:
            pairs = load_training_data(path, split=split)
            if path.suffix == ".jsonl" and pairs.source.endswith("(title -> text)"):
                corpus += read_titled_corpus(path).positives
        data.extend(pairs)
    passages = list(dict.fromkeys(corpus or data.positives))
    if inverse_cloze:
        data.extend(ict(passages))
    if synthetic:
        from ..training.synthetic import synthetic_queries

        data.extend(synthetic_queries(passages, synthetic, api_key=os.environ.get("OPENAI_API_KEY")))
    return data, corpus


def _eval_task(path: Path | None, split: str) -> Any:
    if path is None:
        return None
    from ..evaluation import RetrievalTask, STSTask

    return RetrievalTask.from_beir(path, split=split) if path.is_dir() else STSTask.from_file(path)


def _print(report: Any, as_json: bool) -> None:
    """The report: JSON (with ``significance`` per metric as ``eval compare --json`` gives it), or a line and,
    after an evaluation, the table of each score before and after with its significance."""
    from ..training.report import STAGES

    if as_json:
        render.print_json(report.to_dict())
        return
    console = render.console()
    console.print(f"trained {report.base_model} -> {report.output}: {report.loss}, {report.examples} examples, "
                  f"{report.steps} steps in {report.seconds:.0f} s", highlight=False, markup=False)
    first, second = STAGES[report.kind]
    judged = [report.significance[k] for k in report.before if k in report.significance]
    if judged:
        render.print_comparisons(f"{report.stages[1]} (B) against {report.stages[0]} (A), paired over the "
                                 "evaluation's items", judged, a=first, b=second)
    for k, v in report.before.items():
        if k not in report.significance:
            console.print(f"  {k}: {v:.4f} -> {report.after.get(k, float('nan')):.4f}", highlight=False,
                          markup=False)


def finetune(
    train: TrainOpt,
    output: OutputOpt,
    model: ModelOpt = None,
    loss: Annotated[str, typer.Option(help="mnrl | cached-mnrl | infonce | triplet | cosent | cosine | "
                                           "contrastive")] = "mnrl",
    matryoshka: Annotated[str | None, typer.Option(help="dims to train for truncation, e.g. 384,256,128,64")]
    = None,
    hard_negatives: Annotated[str, typer.Option(help="none | bm25 | dense")] = "none",
    negatives_per_query: Annotated[int, typer.Option(help="mined negatives per example")] = 5,
    skip_top: Annotated[int, typer.Option(help="skip each example's top mining candidates (likely positives)")] = 0,
    inverse_cloze: Annotated[bool, typer.Option(help="add pseudo-queries cut from the passages (no LLM)")] = False,
    synthetic_queries: Annotated[str | None, typer.Option(help="openai-chat:MODEL@URL: an LLM writes a query "
                                                                 "per passage ($OPENAI_API_KEY)")] = None,
    split: Annotated[str, typer.Option(help="qrels split of BEIR training folders")] = "train",
    epochs: Annotated[float, typer.Option(help="passes over the data")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="examples per step (in-batch negatives for mnrl)")] = 32,
    lr: Annotated[float, typer.Option(help="learning rate")] = 2e-5,
    max_seq_length: Annotated[int | None, typer.Option(help="tokens per text while training (default: the "
                                                             "model's)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop after N steps")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    eval_data: Annotated[Path | None, typer.Option("--eval", help="BEIR folder or STS file, scored before/after")]
    = None,
    eval_split: Annotated[str, typer.Option(help="qrels split of a BEIR --eval folder")] = "dev",
    late_interaction: Annotated[bool, typer.Option("--late-interaction", help="train a multi-vector (ColBERT) "
                                                   "model scored by MaxSim; --eval reorders the first stage's "
                                                   "top --candidates with it")] = False,
    token_dim: Annotated[int | None, typer.Option(help="--late-interaction: token vector width (default: the "
                                                       "model's, starting as its own token vectors)")] = None,
    first_stage: Annotated[str | None, typer.Option(help="--late-interaction: bi-encoder retrieving the "
                                                         "candidates at evaluation (default: --model)")] = None,
    candidates: Annotated[int, typer.Option(help="--late-interaction: candidates reordered at evaluation")] = 100,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a bi-encoder (sentence-transformers trainer), with mined hard negatives and evaluation;
    with --late-interaction, a multi-vector model (load it by path; rerank with --rerank maxsim:PATH)."""
    from ..encoders import DEFAULT_MODEL
    from ..errors import InvalidInputError
    from ..training import finetune as run

    dims = None
    if matryoshka:
        try:
            dims = [int(x) for x in matryoshka.split(",")]
        except ValueError:
            raise InvalidInputError(f"--matryoshka takes comma-separated integers, got {matryoshka!r}") from None
    data, corpus = _gather(train, split, inverse_cloze, synthetic_queries)
    if late_interaction:
        _finetune_late_interaction(model or DEFAULT_MODEL, data, output, loss=loss, dims=dims, token_dim=token_dim,
                                   hard_negatives=hard_negatives, negatives_per_query=negatives_per_query,
                                   skip_top=skip_top, corpus=corpus, epochs=epochs, batch_size=batch_size, lr=lr,
                                   seed=seed, max_steps=max_steps, max_seq_length=max_seq_length,
                                   eval_data=eval_data, eval_split=eval_split, first_stage=first_stage,
                                   candidates=candidates, device=device, as_json=as_json)
        return
    report = run(model or DEFAULT_MODEL, data, output, loss=loss, matryoshka=dims, hard_negatives=hard_negatives,
                 negatives_per_query=negatives_per_query, skip_top=skip_top, corpus=corpus, epochs=epochs,
                 batch_size=batch_size, lr=lr, seed=seed, max_steps=max_steps, max_seq_length=max_seq_length,
                 eval_task=_eval_task(eval_data, eval_split), device=device, show_progress=not as_json)
    _print(report, as_json)


def _finetune_late_interaction(model: str, data: Any, output: Path, *, loss: str, dims: list[int] | None,
                               eval_data: Path | None, eval_split: str, as_json: bool, **kwargs: Any) -> None:
    from ..errors import InvalidInputError
    from ..training import finetune_late_interaction

    if loss != "mnrl" or dims:
        raise InvalidInputError("--late-interaction trains with multi-vector MNRL (MaxSim): leave --loss and "
                                f"--matryoshka unset, got --loss {loss} --matryoshka {dims}")
    if eval_data is not None and not eval_data.is_dir():
        raise InvalidInputError(f"--eval with --late-interaction takes a BEIR folder, got {str(eval_data)!r}")
    report = finetune_late_interaction(model, data, output, eval_task=_eval_task(eval_data, eval_split),
                                       show_progress=not as_json, **kwargs)
    _print(report, as_json)
    if not as_json and report.first_stage_significance:
        hp = report.hyperparameters
        render.print_comparisons(f"trained > MaxSim (B) against the first stage, {hp['first_stage']} top "
                                 f"{hp['candidates']} (A), paired over the evaluation's queries",
                                 list(report.first_stage_significance.values()), a="first stage", b="trained > MaxSim")


def finetune_reranker(
    train: TrainOpt,
    output: OutputOpt,
    model: ModelOpt = None,
    hard_negatives: Annotated[str, typer.Option(help="bm25 | dense | none (the data's own negatives, e.g. "
                                                     "from mine-negatives)")] = "bm25",
    negatives_per_query: Annotated[int, typer.Option(help="mined negatives per example")] = 5,
    random_negatives: Annotated[int, typer.Option(help="random (easy) negatives per example")] = 0,
    loss: Annotated[str, typer.Option(help="bce | listwise")] = "bce",
    max_length: Annotated[int, typer.Option(help="tokens per (query, text) pair while training")] = 256,
    inverse_cloze: Annotated[bool, typer.Option(help="add pseudo-queries cut from the passages (no LLM)")] = False,
    split: Annotated[str, typer.Option(help="qrels split of BEIR training folders")] = "train",
    epochs: Annotated[float, typer.Option(help="passes over the data")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="pairs per step")] = 16,
    lr: Annotated[float, typer.Option(help="learning rate of the encoder")] = 1e-4,
    head_lr: Annotated[float, typer.Option(help="learning rate of the new classification head")] = 1e-3,
    max_steps: Annotated[int | None, typer.Option(help="stop after N steps")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    eval_data: Annotated[Path | None, typer.Option("--eval", help="BEIR folder: first stage vs reranked")] = None,
    eval_split: Annotated[str, typer.Option(help="qrels split of the --eval folder")] = "dev",
    first_stage: Annotated[str | None, typer.Option(help="bi-encoder retrieving the candidates at evaluation "
                                                         "(default: --model)")] = None,
    candidates: Annotated[int, typer.Option(help="first-stage candidates reranked at evaluation")] = 100,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Train a cross-encoder reranker on positives and mined negatives (usable with --rerank).

    With --eval, the first stage's ranking of the evaluation queries is scored against the same
    candidates reranked, and a warning says so when the reranker makes the ranking worse.
    """
    from ..encoders import DEFAULT_MODEL
    from ..errors import InvalidInputError
    from ..training import finetune_reranker as run

    if eval_data is not None and not eval_data.is_dir():
        raise InvalidInputError(f"--eval for a reranker takes a BEIR folder, got {str(eval_data)!r}")
    task = _eval_task(eval_data, eval_split)
    data, corpus = _gather(train, split, inverse_cloze, None)
    report = run(model or DEFAULT_MODEL, data, output, hard_negatives=hard_negatives,
                 negatives_per_query=negatives_per_query, random_negatives=random_negatives, loss=loss,
                 max_length=max_length, corpus=corpus, epochs=epochs, batch_size=batch_size, lr=lr, head_lr=head_lr,
                 seed=seed, max_steps=max_steps, eval_task=task, first_stage=first_stage, candidates=candidates,
                 device=device, show_progress=not as_json)
    _print(report, as_json)
    before, after = report.before.get("ndcg_at_10"), report.after.get("ndcg_at_10")
    if before is not None and after is not None and after < before:
        typer.echo(f"warning: the trained reranker lowers nDCG@10 on {eval_data} from {before:.4f} (first stage) "
                   f"to {after:.4f}; do not rerank with it as it is", err=True)


def mine_negatives(
    train: TrainOpt,
    output: Annotated[Path, typer.Option(help="JSONL file to write: query, positive, negatives")],
    method: Annotated[str, typer.Option(help="bm25 | dense")] = "bm25",
    model: ModelOpt = None,
    negatives_per_query: Annotated[int, typer.Option(help="negatives per (query, positive) pair")] = 5,
    skip_top: Annotated[int, typer.Option(help="skip each query's top candidates (likely unjudged positives)")]
    = 0,
    margin: Annotated[float | None, typer.Option(help="false-negative guard: dense skips candidates within "
                                                       "MARGIN of the positive's cosine (default 0.05); bm25 "
                                                       "skips those above (1 - MARGIN) x its score")] = None,
    inverse_cloze: Annotated[bool, typer.Option(help="add pseudo-queries cut from the passages (no LLM)")] = False,
    split: Annotated[str, typer.Option(help="qrels split of BEIR training folders")] = "train",
    seed: Annotated[int, typer.Option(help="random seed (for rows topped up with random documents)")] = 42,
    device: DeviceOpt = "auto",
) -> None:
    """Mine hard negatives into a JSONL that finetune reads back (inspect them before training).

    Candidates are never a positive of their query, nor the document a pair was cut from; rows where
    fewer survive the guards are topped up with random documents.
    """
    import tempfile

    from ..encoders import DEFAULT_MODEL
    from ..errors import InvalidInputError
    from ..training.negatives import add_hard_negatives, load_dense_miner

    if method not in ("bm25", "dense"):
        raise InvalidInputError(f"unknown mining method {method!r}; expected bm25 or dense")
    if negatives_per_query < 1 or skip_top < 0:
        raise InvalidInputError(f"--negatives-per-query must be >= 1 and --skip-top >= 0, got "
                                f"{negatives_per_query} and {skip_top}")
    data, corpus = _gather(train, split, inverse_cloze, None)
    if data.scores is not None:
        raise InvalidInputError("scored pairs have no positives to mine negatives for")
    if not len(data):
        raise InvalidInputError("no training examples")
    encoder = load_dense_miner(model or DEFAULT_MODEL, device) if method == "dense" else None
    mined = add_hard_negatives(data, method=method, per_query=negatives_per_query, corpus=corpus, encoder=encoder,
                               skip_top=skip_top, margin=margin, seed=seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: an interrupted run never leaves a half-written file.
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=output.parent, suffix=".part",
                                     delete=False) as tmp:
        try:
            for a, p, negs in zip(mined.anchors, mined.positives, mined.negatives, strict=True):
                tmp.write(json.dumps({"query": a, "positive": p, "negatives": negs}, ensure_ascii=False) + "\n")
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, output)
    typer.echo(f"{len(mined)} rows with {negatives_per_query} {method} negatives each -> {output}", err=True)


def _corpus_texts(path: Path) -> list[str]:
    """Texts of a corpus file: a BEIR corpus.jsonl (or its folder; title and text joined), a JSONL, CSV or TSV
    with a 'text' field, or a text file of one text per line."""
    from collections import Counter

    from ..errors import InvalidInputError
    from ..io import read_beir_corpus, read_texts

    if path.is_dir():
        if not (path / "corpus.jsonl").is_file():
            raise InvalidInputError(f"--corpus folder {str(path)!r} holds no corpus.jsonl (a BEIR folder)")
        path = path / "corpus.jsonl"
    if path.suffix.lower() == ".jsonl" and path.is_file():
        docs = read_beir_corpus(path, Counter())
        if docs:
            return list(docs.values())
    return read_texts(path, what="corpus file")


def _pca_dims(value: str) -> int | None:
    from ..errors import InvalidInputError

    if value.strip().lower() == "none":
        return None
    try:
        dims = int(value)
    except ValueError:
        dims = 0
    if dims <= 0:
        raise InvalidInputError(f"--pca-dims takes a positive integer or 'none', got {value!r}")
    return dims


def distill(
    model: Annotated[str, typer.Argument(help="the teacher: alias (minilm, mpnet) or sentence-transformers folder")],
    output: Annotated[Path, typer.Option(help="folder to write the static model to (new, or empty)")],
    pca_dims: Annotated[str, typer.Option(help="dimensions kept by PCA, or 'none' for the teacher's")] = "256",
    corpus: Annotated[list[Path] | None, typer.Option(
        "--corpus", help="fit the model to these texts (repeat to combine): BEIR corpus.jsonl or folder, "
                         "JSONL/CSV/TSV with a 'text' field, or a text file of lines")] = None,
    restrict_to: Annotated[list[Path] | None, typer.Option(
        "--restrict-to", help="keep only the tokens these texts use (same formats): a small model, fast to "
                              "make; other words are then unknown")] = None,
    vocabulary: Annotated[Path | None, typer.Option(help="words to add as tokens, one per line")] = None,
    epochs: Annotated[int, typer.Option(help="most passes over --corpus")] = 50,
    seed: Annotated[int, typer.Option(help="random seed of the fit")] = 42,
    as_json: JsonOpt = False,
) -> None:
    """Distil a static (model2vec) model from a sentence-transformers model, optionally fitted to a corpus.

    Encoding with it is a table lookup: orders of magnitude faster than the teacher on a CPU, and less
    accurate (see README, "Static encoder"). Load it with --model static:DIR.
    """
    import time

    from ..encoders.static import StaticEncoder
    from ..encoders.static import distill as run
    from ..io import read_lines

    dims = _pca_dims(pca_dims)
    texts = [t for path in corpus for t in _corpus_texts(path)] if corpus else None
    subset = [t for path in restrict_to for t in _corpus_texts(path)] if restrict_to else None
    words = read_lines(vocabulary, what="vocabulary file") if vocabulary is not None else None
    started = time.perf_counter()
    path = run(model, output, pca_dims=dims, vocabulary=words, restrict_to=subset, corpus=texts, epochs=epochs,
               seed=seed, show_progress=not as_json)
    enc = StaticEncoder(path)
    fit = (enc.config.get("embedsmith") or {}).get("fit")
    report = {"model": model, "output": str(path), "dim": enc.dim, "vocabulary": enc.vocab_size, "fit": fit,
              "seconds": round(time.perf_counter() - started, 1)}
    if as_json:
        render.print_json(report)
        return
    console = render.console()
    console.print(f"distilled {model} -> {path}: {enc.dim} dims, {enc.vocab_size:,} tokens, "
                  f"in {report['seconds']:.0f} s; load it with --model static:{path}", highlight=False, markup=False)
    if fit:
        console.print(f"  fitted to {fit['texts']:,} texts: held-out cosine distance to the teacher "
                      f"{fit['held_out_distance_before']:.4f} -> {fit['held_out_distance_after']:.4f} "
                      f"({fit['held_out']} held out, {fit['epochs']} epochs)", highlight=False, markup=False)
