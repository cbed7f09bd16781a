"""What a collection records at creation and checks on every open: settings, fingerprints, identity, names."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, SettingsMismatchError
from ..quantization import Int8Calibration
from ..types import Encoder, Metric, Precision

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LOSSLESS_BACKENDS = {"onnx", "torch"}
_PG_SCHEMES = ("postgresql://", "postgres://")


def default_store() -> Path:
    """``$EMBEDSMITH_HOME``, or the platform's user data folder (``~/.local/share/embedsmith`` on Linux)."""
    env = os.environ.get("EMBEDSMITH_HOME")
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_data_dir

        return Path(user_data_dir("embedsmith", appauthor=False))
    except ImportError:
        return Path.home() / ".local" / "share" / "embedsmith"


def is_postgres(store: str | os.PathLike[str] | None) -> bool:
    """Whether ``store`` names a PostgreSQL database (``postgresql://`` or ``postgres://``) rather than a folder."""
    return isinstance(store, str) and store.lower().startswith(_PG_SCHEMES)


def fingerprints_compatible(a: str, b: str) -> bool:
    """Same weights, and either the same backend or two exact (lossless) ones."""
    if a == b:
        return True
    wa, _, ba = a.partition(":")
    wb, _, bb = b.partition(":")
    return wa == wb and ba in _LOSSLESS_BACKENDS and bb in _LOSSLESS_BACKENDS


def new_identity() -> str:
    """A fresh collection identity: a collection deleted and recreated under the same name gets another one."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class CollectionSettings:
    """What a collection records at creation and checks on every open.

    ``identity`` tells two collections of the same name apart (one deleted, the other created in its place);
    derived files are stamped with it. Stores written before identities existed get one on first open.
    """

    name: str
    model: str | None
    fingerprint: str | None
    prompts: dict[str, str]
    dim: int
    dims: int
    metric: Metric
    precision: Precision
    calibration: Int8Calibration | None
    hnsw_m: int
    ef_construction: int
    identity: str | None = None
    #: Stored token vectors for late interaction: ``{"precision", "dims"}`` of the collection's
    #: :class:`~embedsmith.rerankers.late_interaction.TokenCodec` (its PCA, when fitted, is kept beside the rows),
    #: or None (late interaction computes them per search).
    late: dict[str, Any] | None = None

    def to_meta(self) -> dict[str, str]:
        meta = {
            "name": self.name,
            "model": json.dumps(self.model),
            "fingerprint": json.dumps(self.fingerprint),
            "prompts": json.dumps(self.prompts),
            "dim": str(self.dim),
            "dims": str(self.dims),
            "metric": self.metric.value,
            "precision": self.precision.value,
            "calibration": json.dumps(self.calibration.to_dict() if self.calibration else None),
            "hnsw_m": str(self.hnsw_m),
            "ef_construction": str(self.ef_construction),
        }
        if self.identity is not None:
            meta["identity"] = self.identity
        if self.late is not None:
            meta["late_interaction"] = json.dumps(self.late)
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> CollectionSettings:
        cal = json.loads(meta["calibration"])
        return cls(
            name=meta["name"],
            model=json.loads(meta["model"]),
            fingerprint=json.loads(meta["fingerprint"]),
            prompts=json.loads(meta["prompts"]),
            dim=int(meta["dim"]),
            dims=int(meta["dims"]),
            metric=Metric(meta["metric"]),
            precision=Precision(meta["precision"]),
            calibration=Int8Calibration.from_dict(cal) if cal else None,
            hnsw_m=int(meta["hnsw_m"]),
            ef_construction=int(meta["ef_construction"]),
            identity=meta.get("identity"),
            late=json.loads(meta["late_interaction"]) if meta.get("late_interaction") else None,
        )

    def renamed(self, name: str) -> CollectionSettings:
        """The same settings for a new collection called ``name`` (with a new identity)."""
        return replace(self, name=check_name(name), identity=new_identity())


def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"collection name {name!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def late_request(value: Any) -> dict[str, Any] | None:
    """``open_collection``'s ``late_interaction`` as ``{"precision", "dims"}`` (None: not asked for).

    True takes the default codec; a string is a precision; a mapping gives ``precision`` and/or ``dims``."""
    from ..rerankers.late_interaction import DEFAULT_PRECISION, TokenCodec

    if value is None or value is False:
        return None
    if value is True:
        codec = TokenCodec.checked(DEFAULT_PRECISION)
    elif isinstance(value, str):
        codec = TokenCodec.checked(value)
    elif isinstance(value, Mapping):
        unknown = set(value) - {"precision", "dims"}
        if unknown:
            raise InvalidInputError(f"late_interaction takes precision and dims, got {sorted(unknown)}")
        codec = TokenCodec.checked(value.get("precision", DEFAULT_PRECISION), value.get("dims"))
    else:
        raise InvalidInputError(f"late_interaction must be True, a precision or {{'precision', 'dims'}}, got "
                                f"{value!r}")
    return {"precision": codec.precision, "dims": codec.dims}


def new_settings(
    name: str, enc: Encoder | None, metric: Metric, precision: Precision, dims: int | None, dim: int | None,
    calibration: Int8Calibration | None, hnsw_m: int, ef_construction: int, late: dict[str, Any] | None = None,
) -> CollectionSettings:
    """Check the creation arguments of a new collection and fix its settings."""
    if late is not None and enc is None:
        raise InvalidInputError(f"late_interaction=... stores the encoder's token vectors: collection {name!r} "
                                "needs an encoder")
    if late is not None and late.get("dims") is not None and enc is not None and late["dims"] > enc.dim:
        raise InvalidInputError(f"late-interaction dims={late['dims']} is more than encoder {enc.name!r}'s "
                                f"{enc.dim}")
    if enc is None and dim is None:
        raise InvalidInputError(f"a new collection needs an encoder, or dim= for vectors only ({name!r})")
    full = enc.dim if enc is not None else positive_int(dim, "dim")
    if enc is not None and dim is not None and dim != enc.dim:
        raise InvalidInputError(f"dim={dim} does not match encoder {enc.name!r} dimension {enc.dim}")
    index_dims = full if dims is None else positive_int(dims, "dims")
    if index_dims > full:
        raise InvalidInputError(f"dims={index_dims} is larger than the vectors' dimension {full}")
    if precision is Precision.BINARY and index_dims % 8:
        raise InvalidInputError(f"binary precision needs dims divisible by 8, got {index_dims}")
    if calibration is not None and calibration.low.shape[0] < index_dims:
        raise InvalidInputError(f"calibration covers {calibration.low.shape[0]} dimensions, index has {index_dims}")
    if precision is Precision.INT8 and calibration is None:
        calibration = Int8Calibration.default(index_dims)
    return CollectionSettings(
        name=name, model=enc.name if enc is not None else None, fingerprint=enc.fingerprint if enc else None,
        prompts=dict(getattr(enc, "prompts", {}) or {}), dim=full, dims=index_dims, metric=metric,
        precision=precision, calibration=calibration, hnsw_m=positive_int(hnsw_m, "hnsw_m"),
        ef_construction=positive_int(ef_construction, "ef_construction"), identity=new_identity(), late=late,
    )


def check_requested(settings: CollectionSettings, metric: Metric | None, precision: Precision | None,
                    dims: int | None, dim: int | None, late: Any = None) -> None:
    """Refuse to open an existing collection with settings other than those it records (both values named).
    ``late``: the caller's ``late_interaction`` (True matches any stored codec; a precision or mapping must
    match the recorded one)."""
    if late is not None and late is not False:
        want = late_request(late)
        if settings.late is None or (late is not True and want != settings.late):
            raise SettingsMismatchError(
                f"collection {settings.name!r} was created with late_interaction={settings.late!r}; opened with "
                f"late_interaction={want!r} (token vectors are chosen at creation: re-embed into a new collection)"
            )
    given = {"metric": metric.value if metric else None, "precision": precision.value if precision else None,
             "dims": dims, "dim": dim}
    stored = {"metric": settings.metric.value, "precision": settings.precision.value, "dims": settings.dims,
              "dim": settings.dim}
    for key, value in given.items():
        if value is not None and value != stored[key]:
            raise SettingsMismatchError(
                f"collection {settings.name!r} was created with {key}={stored[key]!r}; opened with {key}={value!r}"
            )


def check_encoder(s: CollectionSettings, enc: Encoder) -> None:
    """Refuse an encoder whose weights or dimension differ from what the collection was built with."""
    if s.fingerprint and not fingerprints_compatible(s.fingerprint, enc.fingerprint):
        raise SettingsMismatchError(
            f"collection {s.name!r} was built with model {s.model!r} (fingerprint {s.fingerprint}); "
            f"the encoder given is {enc.name!r} (fingerprint {enc.fingerprint}). Use the same model, or "
            f"re-embed into a new collection: embedsmith reembed --collection {s.name} --to NEW --model M"
        )
    if enc.dim != s.dim:
        raise SettingsMismatchError(
            f"collection {s.name!r} stores dimension {s.dim}; encoder {enc.name!r} gives {enc.dim}"
        )


@dataclass(frozen=True)
class OpenOptions:
    """How a handle behaves (not recorded with the collection): search breadth, locking, index saving."""

    ef_search: int = 64
    exact_below: int = 10_000
    lock_timeout: float = 10.0
    save_every: int = 50_000
    save_interval_s: float = 60.0
    pool_size: int = 4


__all__ = ["CollectionSettings", "OpenOptions", "check_encoder", "check_name", "check_requested", "default_store",
           "fingerprints_compatible", "is_postgres", "late_request", "new_identity", "new_settings", "positive_int"]
