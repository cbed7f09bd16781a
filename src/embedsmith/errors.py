"""Errors raised by embedsmith. Every public failure is an :class:`EmbedsmithError`."""

from __future__ import annotations


class EmbedsmithError(Exception):
    """Base class of every error embedsmith raises on purpose."""


class InvalidInputError(EmbedsmithError, ValueError):
    """A value passed to a public function is not acceptable; the message names it."""


class FileFormatError(InvalidInputError):
    """A file's content is not what its format needs: bytes that are not UTF-8 (``byte`` is their offset), or a
    malformed line (``line``). The message reads ``path:line: detail``; ``detail`` says what is wrong without
    the place, for callers that name the file themselves (ingestion's list of skipped files)."""

    def __init__(self, path: object, detail: str, *, line: int | None = None, byte: int | None = None) -> None:
        super().__init__(f"{path}:{line}: {detail}" if line is not None else f"{path}: {detail}")
        self.path = str(path)
        self.detail = detail
        self.line = line
        self.byte = byte


class ModelNotFoundError(EmbedsmithError, LookupError):
    """A model alias or folder cannot be resolved to local weights."""


class MissingExtraError(EmbedsmithError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, what: str, extra: str, package: str | None = None) -> None:
        pkg = f" (package {package!r} is not installed)" if package else ""
        super().__init__(f"{what} needs the '{extra}' extra{pkg}: pip install 'embedsmith[{extra}]'")
        self.extra = extra


def require(module: str, *, extra: str, what: str) -> object:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``extra``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(what, extra, module.split(".")[0]) from exc


class StoreError(EmbedsmithError):
    """A collection cannot be opened, read or written. The subclasses say why; callers dispatch on them."""


class CollectionNotFoundError(StoreError, LookupError):
    """No such collection, or the collection an open handle refers to was deleted or replaced."""


class CollectionExistsError(StoreError):
    """A collection of that name already exists (create, migrate or restore without replacing)."""


class CollectionBusyError(StoreError):
    """Another writer held the collection's write lock for longer than ``lock_timeout``."""


class StoreCorruptError(StoreError):
    """The database or a derived file is damaged (``embedsmith verify`` reports, ``repair`` rebuilds)."""


class StoreReadOnlyError(StoreError):
    """A write to a store that is open read-only (its folder or database cannot be written)."""


class SettingsMismatchError(EmbedsmithError, ValueError):
    """A collection was opened with settings (model, metric, precision, ...) other than those it records."""


class NoTokenVectorsError(InvalidInputError):
    """Late interaction was asked of an encoder that gives no token vectors (static, remote or USE models), or
    stored token vectors of a collection created without them; the message says what to use instead."""


class FilterTooComplexError(InvalidInputError):
    """A metadata filter has more conditions or nesting than a search may carry (the limits are named)."""


class ResultMismatchError(InvalidInputError):
    """Two evaluation results cannot be compared: their data differ (content digests, items or task)."""


class ClusterUnreachableError(EmbedsmithError, ConnectionError):
    """A compute cluster (Ray, for scale-out ingestion) cannot be reached or started at the address given."""
