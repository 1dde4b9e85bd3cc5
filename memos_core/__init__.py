"""MemOS core: MemCube memory (plaintext, activation, parametric) with lifecycle, versions and governance.

``import memos_core`` is light: torch, transformers, peft and chromadb load only when used.

Quick start::

    from memos_core import MemCube
    cube = MemCube("./my_memory")
    cube.add("Ann moved to Lisbon in May 2023", user_id="ann", event_time="2023-05-08")
    for hit in cube.search("Where does Ann live?", user_id="ann"):
        print(hit.score, hit.item.content)
"""

from .cube import CUBE_SCHEMA_VERSION, MemCube, RetrievalConfig
from .errors import (
    BackendUnavailable,
    Conflict,
    CorruptData,
    CubeClosed,
    EmbeddingDimensionError,
    ForkedProcessError,
    IllegalTransition,
    MemOSError,
    NotFound,
    PermissionDenied,
    SchemaVersionError,
    UserRequired,
    ValidationError,
)
from .items import (
    LifecycleState,
    MemoryForm,
    MemoryItem,
    MemoryKind,
    MemoryVersion,
    Provenance,
    Scope,
    SearchFilter,
    SearchHit,
    SourceKind,
    Transition,
)
from .os import AddResult, MemOS

__version__ = "0.1.0"

__all__ = [
    "MemOS",
    "AddResult",
    "MemCube",
    "RetrievalConfig",
    "CUBE_SCHEMA_VERSION",
    "MemoryItem",
    "MemoryVersion",
    "MemoryForm",
    "MemoryKind",
    "LifecycleState",
    "Provenance",
    "Scope",
    "SearchFilter",
    "SearchHit",
    "SourceKind",
    "Transition",
    "MemOSError",
    "ValidationError",
    "EmbeddingDimensionError",
    "NotFound",
    "PermissionDenied",
    "UserRequired",
    "Conflict",
    "IllegalTransition",
    "CorruptData",
    "CubeClosed",
    "ForkedProcessError",
    "SchemaVersionError",
    "BackendUnavailable",
]
