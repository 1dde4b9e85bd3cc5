"""The one exception hierarchy of MemOS.

Every error the library raises on purpose is a :class:`MemOSError`. Catch the subclass that matches what
you can act on:

``MemOSError``
    ├── ``ValidationError``        bad input: empty/oversize content, non-JSON metadata, bad filter, ...
    │     └── ``EmbeddingDimensionError``  an embedder whose dimension differs from the cube's
    ├── ``NotFound``               unknown id (or an id the caller may not see: the two are indistinguishable)
    ├── ``PermissionDenied``       the caller may not do this
    │     └── ``UserRequired``     an adapter was asked to read or write without knowing whose memory it is
    ├── ``Conflict``               the operation is not allowed in the item's current state
    │     └── ``IllegalTransition`` a lifecycle transition the state machine forbids
    ├── ``CorruptData``            stored data failed a check (checksum, format, truncated file)
    ├── ``SchemaVersionError``     a cube written by a newer MemOS than this one
    ├── ``BackendUnavailable``     a backend (e.g. a Chroma server) cannot be reached; records are intact
    ├── ``CubeClosed``             the cube (or MemOS) was closed; open it again
    └── ``MissingExtra``           an optional dependency is not installed (also an ``ImportError``); the message
                                   names the ``pip install`` extra

When an operation raises, nothing it started is left half-written: the system of record is transactional,
and derived indexes are repaired from it.
"""

from __future__ import annotations

__all__ = [
    "MemOSError",
    "ValidationError",
    "EmbeddingDimensionError",
    "NotFound",
    "PermissionDenied",
    "UserRequired",
    "Conflict",
    "IllegalTransition",
    "CorruptData",
    "SchemaVersionError",
    "BackendUnavailable",
    "CubeClosed",
    "ForkedProcessError",
    "MissingExtra",
]


class MemOSError(Exception):
    """Base class of every error MemOS raises on purpose."""


class ValidationError(MemOSError, ValueError):
    """The input is malformed; the message says which field and what is accepted."""


class EmbeddingDimensionError(ValidationError):
    """The embedder produces vectors of another dimension than the cube was built with."""


class NotFound(MemOSError, KeyError):
    """No such item, version, cube or principal (or one the caller may not see)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "not found"


class PermissionDenied(MemOSError, PermissionError):
    """The acting principal lacks the right for this operation."""


class UserRequired(PermissionDenied):
    """An adapter (LangChain, LangGraph, LlamaIndex) was asked to read or write without a user identity.

    Adapters fail closed: with no user id they refuse rather than read or write across every user. The
    message says how to pass one (an argument, a user-bound view ``mem.for_user(...)``, the run's context or
    config) or how to opt in to one fixed scope for a single-user app (``single_user=True``).
    """


class Conflict(MemOSError):
    """The operation is not allowed in the current state (e.g. updating a frozen or deleted memory)."""


class IllegalTransition(Conflict):
    """The lifecycle state machine forbids this transition."""


class CorruptData(MemOSError):
    """Stored data failed an integrity check."""


class SchemaVersionError(MemOSError):
    """The cube on disk uses a schema this version of MemOS does not know (written by a newer release)."""


class BackendUnavailable(MemOSError):
    """A backend (such as a Chroma server) is unreachable. The system of record is unaffected."""


class CubeClosed(MemOSError):
    """The cube was closed; no operation can run on it. Open the folder again to go on."""


class ForkedProcessError(CubeClosed):
    """This MemCube/MemOS was opened in another process, which then forked (gunicorn ``--preload``,
    ``multiprocessing`` with ``fork``): its connections, pools and background threads belong to that process.
    Open MemOS (and build the adapters) inside each worker, after the fork."""


class MissingExtra(MemOSError, ImportError):
    """An optional dependency of the feature used is not installed. The message names the package and the
    extra to install (``pip install "memos-langchain-llamaindex[kv]"``). It is an ``ImportError`` too, so code
    that guards optional imports keeps working (:func:`memos_core.extras.require`)."""
