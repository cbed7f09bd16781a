"""``embedsmith embed``, ``similarity`` and ``models``: vectors from texts, and the models that make them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from . import render
from .options import BackendOpt, DeviceOpt, JsonOpt, ModelOpt, load_model


def _read_inputs(texts: list[str], input_file: Path | None) -> list[str]:
    items = list(texts)
    if input_file is not None:
        from ..io import read_texts

        items += read_texts(input_file, what="input file")
    if not items:
        from ..errors import InvalidInputError

        raise InvalidInputError("no texts given: pass TEXT arguments or --input FILE")
    return items


def embed(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to embed")] = None,
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    kind: Annotated[str | None, typer.Option(help="query | document (adds the model's prompt)")] = None,
    dims: Annotated[int | None, typer.Option(help="keep the first N dimensions (Matryoshka)")] = None,
    precision: Annotated[str, typer.Option(help="float32 | float16 | int8 | binary")] = "float32",
    input_file: Annotated[Path | None, typer.Option(
        "--input", help="one text per line, or a .jsonl with 'text' or .csv/.tsv with a 'text' column")] = None,
    output: Annotated[Path | None, typer.Option(help="write vectors to FILE.npy or FILE.jsonl")] = None,
    batch_size: Annotated[int | None, typer.Option(help="texts per batch")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed texts and print or save the vectors."""
    import numpy as np

    items = _read_inputs(texts or [], input_file)
    enc = load_model(model, backend, device, threads)
    vectors = enc.encode(
        items, kind=kind, dims=dims, precision=precision, batch_size=batch_size, show_progress=len(items) > 256
    )
    if output is not None:
        if output.suffix == ".npy":
            np.save(output, vectors)
        elif output.suffix == ".jsonl":
            with open(output, "w", encoding="utf-8") as f:
                for text, vec in zip(items, vectors.tolist(), strict=True):
                    f.write(json.dumps({"text": text, "vector": vec}) + "\n")
        else:
            from ..errors import InvalidInputError

            raise InvalidInputError(f"--output must end in .npy or .jsonl, got {output.name!r}")
    if as_json:
        render.print_json({"model": enc.name, "dim": int(dims or enc.dim), "precision": precision,
                           "vectors": vectors.tolist()})
        return
    console = render.console()
    console.print(f"{len(items)} vectors, shape {list(vectors.shape)}, {vectors.dtype} ({enc.name}, {enc.backend})",
                  markup=False)
    for text, vec in zip(items[:20], vectors[:20], strict=False):
        head = ", ".join(f"{x:.4f}" if vectors.dtype.kind == "f" else str(x) for x in vec[:6])
        console.print(f"  {text[:50]!r}: [{head}, ...]", highlight=False, markup=False)
    if output is not None:
        console.print(f"wrote {output}", markup=False)


def similarity(
    texts: Annotated[list[str], typer.Argument(help="two or more texts")],
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    metric: Annotated[str, typer.Option(help="cosine | dot | l2 | manhattan")] = "cosine",
    as_json: JsonOpt = False,
) -> None:
    """Print the pairwise similarity (or distance) matrix of texts."""
    from ..errors import InvalidInputError
    from ..similarity import pairwise
    from ..types import Metric, parse_enum

    m = parse_enum(Metric, metric, "metric")
    if len(texts) < 2:
        raise InvalidInputError(f"similarity needs at least two texts, got {len(texts)}")
    enc = load_model(model, backend, device)
    matrix = pairwise(enc.encode(texts), metric=m)
    if as_json:
        render.print_json({"metric": m.value, "model": enc.name, "texts": texts,
                           "matrix": [[round(float(x), 6) for x in row] for row in matrix]})
        return
    render.print_similarity(texts, matrix, m.value, enc.name)


def models(as_json: JsonOpt = False) -> None:
    """List model aliases: dimension, max tokens, backends and whether they are installed."""
    from ..encoders import MODELS

    rows = [
        {"alias": m.alias, "description": m.description, "dim": m.dim, "max_tokens": m.max_tokens,
         "backends": "torch, onnx, onnx-int8" if m.kind == "folder" else "built-in",
         "available_offline": m.available(), "extra": m.extra}
        for m in MODELS.values()
    ]
    if as_json:
        render.print_json(rows, indent=2)
        return
    render.print_table(
        "models (or pass the path of any sentence-transformers folder)",
        ["alias", "dim", "max tokens", "backends", "installed", "description"],
        [[str(r["alias"]), str(r["dim"]), str(r["max_tokens"]), str(r["backends"]),
          "yes" if r["available_offline"] else f"no: pip install 'embedsmith[{r['extra']}]'", str(r["description"])]
         for r in rows],
    )
