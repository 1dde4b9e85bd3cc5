"""Moved: erasure belongs to the cube, in :mod:`memos_core.erasure` (``MemCube.forget`` runs it).

This module only re-exports its public names for code that imported them from here. Patch settings such as
``SYNC_COMPACT_MAX`` on :mod:`memos_core.erasure` itself: a re-exported constant is a copy.
"""

from ..erasure import (  # noqa: F401 - re-exports
    PENDING_KEY,
    SYNC_COMPACT_MAX,
    VECTOR_COMPACTION_KEY,
    VECTOR_SCRUBBED_KEY,
    Erasure,
    ErasurePlan,
    check_not_held,
    compaction_pending,
    flush_forgets,
    fragments_of,
    plan_erasure,
    request_compaction,
    revised,
    scrub_vectors,
    strip_fragments,
)

__all__ = ["Erasure", "ErasurePlan", "plan_erasure", "fragments_of", "strip_fragments", "revised", "check_not_held",
           "scrub_vectors", "flush_forgets", "request_compaction", "compaction_pending", "PENDING_KEY",
           "VECTOR_COMPACTION_KEY", "VECTOR_SCRUBBED_KEY", "SYNC_COMPACT_MAX"]
