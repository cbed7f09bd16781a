"""``embedsmith cluster``, ``classify`` and ``analogy``: groups, labels and analogies by vector nearness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from . import render
from .options import BackendOpt, JsonOpt, ModelOpt, StoreOpt, load_model


def cluster(
    file: Annotated[Path | None, typer.Argument(help="CSV/TSV/JSONL with a text column, or one text per line")]
    = None,
    column: Annotated[str, typer.Option(help="text column of CSV/TSV/JSONL files")] = "text",
    k: Annotated[str, typer.Option("--k", help="number of clusters, or 'auto' (best silhouette, 2..k-max)")]
    = "auto",
    k_max: Annotated[int, typer.Option(help="largest k tried by --k auto")] = 20,
    method: Annotated[str, typer.Option(help="kmeans | hdbscan | agglomerative")] = "kmeans",
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    collection: Annotated[str | None, typer.Option(help="cluster a collection's stored vectors instead")] = None,
    store: StoreOpt = None,
    output: Annotated[Path | None, typer.Option(help="write one JSON line per text with its cluster")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of a 2-D projection (PCA) coloured by cluster")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Group texts by meaning; describe each cluster by its distinctive terms and most central texts."""
    from ..analysis import cluster_texts, plot_clusters, project_2d
    from ..errors import InvalidInputError
    from ..io import read_texts

    if (file is None) == (collection is None):
        raise InvalidInputError("give a FILE or --collection NAME (one of them)")
    kk: int | str = "auto" if k == "auto" else int(k) if k.isdigit() else -1
    if kk == -1:
        raise InvalidInputError(f"--k takes a positive integer or 'auto', got {k!r}")
    ids: list[str]
    if collection is not None:
        import numpy as np

        from ..store import open_collection

        texts, ids, rows = [], [], []
        with open_collection(collection, store=store, create=False) as coll:
            for batch in coll.iter_records():
                for r in batch:
                    texts.append(r["text"] or r["id"])
                    ids.append(r["id"])
                    rows.append(r["vector"])
        if not rows:
            raise InvalidInputError(f"collection {collection!r} is empty")
        vectors = np.stack(rows)
        result = cluster_texts(texts, vectors=vectors, k=kk, method=method, k_max=k_max)
        name = collection
    elif file is not None:  # always, given the check above; the test tells the type checker
        texts = read_texts(file, column=column)
        ids = [str(i) for i in range(len(texts))]
        enc = load_model(model, backend)
        vectors = enc.encode(texts, kind="document", show_progress=not as_json and len(texts) > 256)
        result = cluster_texts(texts, vectors=vectors, k=kk, method=method, k_max=k_max)
        name = file.name
    if output is not None:
        with open(output, "w", encoding="utf-8") as f:
            for rid, text, lbl in zip(ids, texts, result.labels.tolist(), strict=True):
                f.write(json.dumps({"id": rid, "text": text, "cluster": lbl}, ensure_ascii=False) + "\n")
    if plot is not None:
        names = {c.id: f"{c.id}: {', '.join(c.terms[:3])}" for c in result.clusters}
        plot_clusters(project_2d(vectors), result.labels, plot, title=f"{name}: {result.k} clusters ({method})",
                      names=names)
    if as_json:
        render.print_json({"k": result.k, "method": method, "silhouette": result.silhouette,
                           "silhouette_by_k": result.silhouette_by_k,
                           "clusters": [c.__dict__ for c in result.clusters],
                           "labels": result.labels.tolist()}, ensure_ascii=False)
        return
    sil = f", silhouette {result.silhouette:.3f}" if result.silhouette is not None else ""
    render.print_table(f"{name}: {len(texts)} texts, {result.k} clusters ({method}{sil})",
                       ["cluster", "size", "distinctive terms", "most central text"],
                       [[str(c.id), str(c.size), ", ".join(c.terms[:6]), (c.central[0] if c.central else "")[:70]]
                        for c in result.clusters])
    noise = int((result.labels == -1).sum())
    console = render.console()
    if noise:
        console.print(f"{noise} texts left unclustered (noise)")
    for path in (output, plot):
        if path is not None:
            console.print(f"wrote {path}", markup=False)


def classify(
    train: Annotated[Path, typer.Option(help="labelled CSV/TSV/JSONL (text and label columns)")],
    predict: Annotated[Path | None, typer.Option(help="texts to label (CSV/TSV/JSONL column, or lines)")] = None,
    evaluate: Annotated[Path | None, typer.Option(help="labelled file: report accuracy and macro F1")] = None,
    method: Annotated[str, typer.Option(help="knn | centroid | logistic")] = "knn",
    k: Annotated[int, typer.Option("--k", help="neighbours for knn")] = 5,
    text_column: Annotated[str | None, typer.Option(help="text column (default: text/sentence/...)")] = None,
    label_column: Annotated[str | None, typer.Option(help="label column (default: label/category/...)")] = None,
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    output: Annotated[Path | None, typer.Option(help="write predictions as JSON lines")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Label texts by vector nearness to labelled examples (kNN, centroids or logistic regression)."""
    from ..analysis import Classifier
    from ..errors import InvalidInputError
    from ..io import read_labelled, read_texts

    if predict is None and evaluate is None:
        raise InvalidInputError("give --predict FILE, --evaluate LABELLED, or both")
    texts, labels = read_labelled(train, text_column=text_column, label_column=label_column)
    clf = Classifier(load_model(model, backend), method=method, k=k).fit(texts, labels)
    out: dict[str, Any] = {"method": method, "labels": len(clf.labels), "train": len(texts)}
    console = render.console()
    if predict is not None:
        items = read_texts(predict, column=text_column or "text")
        preds = clf.predict(items)
        out["predictions"] = [{"text": t, "label": p.label, "confidence": p.confidence}
                              for t, p in zip(items, preds, strict=True)]
        if output is not None:
            with open(output, "w", encoding="utf-8") as f:
                for row in out["predictions"]:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        if not as_json:
            for row in out["predictions"][:20]:
                console.print(f"{row['label']:<28} {row['confidence']:.2f}  {row['text'][:70]}", markup=False,
                              highlight=False)
            if output is not None:
                console.print(f"wrote {output}", markup=False)
    if evaluate is not None:
        et, el = read_labelled(evaluate, text_column=text_column, label_column=label_column)
        rep = clf.evaluate(et, el)
        out["evaluation"] = {"accuracy": rep.accuracy, "macro_f1": rep.macro_f1, "n": rep.n,
                             "confusions": rep.confusions}
        if not as_json:
            console.print(f"accuracy {rep.accuracy:.4f}, macro F1 {rep.macro_f1:.4f} on {rep.n} texts "
                          f"({method}, {len(clf.labels)} labels)")
            for t, p, c in rep.confusions[:5]:
                console.print(f"  {c} x {t} -> {p}", markup=False, highlight=False)
    if as_json:
        render.print_json(out, ensure_ascii=False)


def analogy(
    a: Annotated[str, typer.Argument(help="e.g. king")],
    b: Annotated[str, typer.Argument(help="e.g. man")],
    c: Annotated[str, typer.Argument(help="e.g. woman")],
    candidates: Annotated[Path | None, typer.Option(help="one candidate word per line (default: 5,000 "
                                                         "common English words)")] = None,
    k: Annotated[int, typer.Option("-k", help="answers to show")] = 5,
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Rank candidate words by cosine to A - B + C (king - man + woman ~ queen)."""
    from ..analysis import word_analogy
    from ..io import read_texts

    words = read_texts(candidates) if candidates is not None else None
    ranked = word_analogy(a, b, c, load_model(model, backend), candidates=words, k=k)
    if as_json:
        render.print_json({"query": [a, b, c], "results": [{"word": w, "cosine": s} for w, s in ranked]})
        return
    render.console().print(f"{a} - {b} + {c} ~ " + ", ".join(f"{w} ({s:.3f})" for w, s in ranked),
                           highlight=False, markup=False)
