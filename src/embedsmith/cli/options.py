"""Options shared by the commands, each declared once, and what their values mean.

Only typer and the standard library are imported here: ``embedsmith --help`` must stay instant.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from ..encoders.base import BaseEncoder

# None means "not given": a command then uses the default alias, or (index) an existing collection's own model.
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", show_default=False, help="alias (see `embedsmith models`) or model folder [default: minilm]")]
ModelsOpt = Annotated[list[str] | None, typer.Option(
    "--model", "-m", show_default=False, help="alias or model folder; repeat to compare [default: minilm]")]
BackendOpt = Annotated[str, typer.Option(help="auto | torch | torch-fp16 (CUDA) | onnx | onnx-int8")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="store folder (default: $EMBEDSMITH_HOME) or PostgreSQL DSN postgresql://user@host:port/db")]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="collection name")]
VectorCacheOpt = Annotated[bool, typer.Option(
    "--vector-cache/--no-vector-cache",
    help="reuse vectors of texts embedded before with the same model ($EMBEDSMITH_CACHE/vectors.sqlite)")]
WhereOpt = Annotated[str | None, typer.Option(help='metadata filter as JSON, e.g. {"lang": "en"}')]


def load_model(model: str | None, backend: str = "auto", device: str = "auto",
               threads: int | None = None) -> BaseEncoder:
    """The encoder that ``--model``/``--backend``/``--device`` name; no ``--model`` means the default alias."""
    from ..encoders import DEFAULT_MODEL, load_encoder

    return load_encoder(model or DEFAULT_MODEL, backend=backend, device=device, threads=threads)


def parse_where(where: str | None) -> dict[str, Any] | None:
    """The ``--where`` JSON object (checked further by the store's filter compiler), or None."""
    if where is None:
        return None
    from ..errors import InvalidInputError

    try:
        flt = json.loads(where)
    except ValueError as exc:
        raise InvalidInputError(f"--where is not JSON: {exc}") from None
    if not isinstance(flt, dict):
        raise InvalidInputError(f"--where must be a JSON object, got {where!r}")
    return flt


def parse_json_option(value: str | None, name: str) -> Any:
    """A JSON option's value (checked further by the library), or None."""
    if value is None:
        return None
    from ..errors import InvalidInputError

    try:
        return json.loads(value)
    except ValueError as exc:
        raise InvalidInputError(f"{name} is not JSON: {exc}") from None
