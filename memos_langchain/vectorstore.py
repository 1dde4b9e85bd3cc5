"""MemOSVectorStore: LangChain's ``VectorStore`` interface over a MemCube.

Each ``Document`` is one memory: ``page_content`` -> ``content``, ``metadata`` -> ``metadata`` (returned
exactly), ``id`` -> the memory id. Re-adding an id writes a new version of that memory (history and rollback
work); ``delete`` tombstones. Searches go through the core (dense by default, as a vector store is expected to
rank; ``search_mode="hybrid"`` fuses dense and BM25) and only see the store's scope.
"""

from __future__ import annotations

import tempfile
import uuid
from typing import Any, Callable, Iterable, Sequence

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from memos_core.log import get_logger
from memos_core import LifecycleState, MemCube, MemoryItem, MemoryKind, SearchFilter, SourceKind
from memos_core.errors import Conflict, ValidationError
from memos_core.os import UserRule

from ._common import delete_if_live, principal_of, resolve_cube_memos, write_retrying

__all__ = ["MemOSVectorStore"]

log = get_logger(__name__)
_S = LifecycleState
_EXTRACTOR = "memos_langchain.vectorstore/1"


class _CubeEmbeddings(Embeddings):
    """The cube's own embedder seen as LangChain ``Embeddings``."""

    def __init__(self, cube: MemCube) -> None:
        self._cube = cube

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._cube.embedder.embed_documents(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self._cube.embedder.embed_query(text).tolist()


class MemOSVectorStore(VectorStore):
    """A LangChain ``VectorStore`` whose documents are MemOS memories.

    Parameters
    ----------
    memory:
        A ``MemOS`` facade, a :class:`MemCube` or a folder path.
    embedding:
        Used to create the cube when ``memory`` is a path (a cube keeps the embedder it was built with).
    cube:
        With a ``MemOS`` facade: which cube (default: its default cube).
    user_id, agent_id, session_id:
        The scope documents are written to and searched in. A user is required (fail closed): ``user_id``, or
        a user-bound view as ``memory`` (``mem.for_user("ann")``), or ``single_user=True`` for one fixed scope;
        otherwise :class:`memos_core.UserRequired` is raised here.
    kind:
        The memory kind of added documents (default ``document``). ``kinds`` restricts searches to some kinds
        (default: every kind in the scope, so memories written by other components are found too).
    search_mode:
        ``"dense"`` (default; scores are cosine similarities), ``"hybrid"`` or ``"lexical"``.
    actor:
        The principal acting on the cube (default: the cube's own actor).
    index:
        With a ``postgresql://`` store URL as ``memory`` only: its Chroma server, ``"http://host:port"``
        (default ``$MEMOS_INDEX``).
    """

    def __init__(self, memory: Any, *, embedding: Embeddings | None = None, cube: str | None = None,
                 user_id: str | None = None, agent_id: str | None = None, session_id: str | None = None,
                 kind: MemoryKind | str = MemoryKind.DOCUMENT, kinds: Sequence[MemoryKind | str] | None = None,
                 search_mode: str = "dense", actor: str | None = None, single_user: bool = False,
                 index: str | None = None) -> None:
        user_id = UserRule(memory, user_id=user_id, single_user=single_user, adapter="MemOSVectorStore",
                           how="pass user_id=... (MemOSVectorStore(mem, user_id=...))").require()
        # the MemOS is kept too: one opened from a path is the process's shared one, closed when nothing holds it
        self.cube: MemCube
        self.cube, self._memos = resolve_cube_memos(memory, cube, embedder=embedding, adapter="MemOSVectorStore",
                                                    index=index)
        self._embedding = embedding
        self.scope = {k: v for k, v in (("user_id", user_id), ("agent_id", agent_id), ("session_id", session_id))
                      if v is not None}
        self.kind = MemoryKind(kind)
        self.kinds = [MemoryKind(k) for k in kinds] if kinds is not None else None
        if search_mode not in ("dense", "hybrid", "lexical"):
            raise ValidationError(f"search_mode must be 'dense', 'hybrid' or 'lexical', not {search_mode!r}")
        self.search_mode = search_mode
        actor = actor or principal_of(memory)
        self._as: dict[str, Any] = {} if actor is None else {"actor": actor}

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding if self._embedding is not None else _CubeEmbeddings(self.cube)

    # ------------------------------------------------------------------ helpers
    def _filter(self, metadata: dict[str, Any] | SearchFilter | None = None,
                ids: Sequence[str] | None = None) -> SearchFilter:
        if isinstance(metadata, SearchFilter):
            base = metadata.model_dump(exclude_none=True)
        elif metadata is None:
            base = {}
        elif isinstance(metadata, dict):
            base = {"metadata": metadata} if metadata else {}
        else:
            raise ValidationError(f"filter must be a dict of metadata conditions or a SearchFilter, got "
                                  f"{type(metadata).__name__}")
        base.update(self.scope)
        if self.kinds is not None and "kinds" not in base:
            base["kinds"] = self.kinds
        if ids is not None:
            base["ids"] = list(ids)
        return SearchFilter.coerce(base)

    def _in_scope(self, item: MemoryItem) -> bool:
        return all(getattr(item.scope, axis) == val for axis, val in self.scope.items())

    @staticmethod
    def _doc(item: MemoryItem) -> Document:
        return Document(id=item.id, page_content=item.content, metadata=dict(item.metadata))

    # ------------------------------------------------------------------ writes
    def add_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, *,
                  ids: list[str | None] | None = None, **kwargs: Any) -> list[str]:
        """Add texts (one memory each) or, for ids that exist, write a new version. Returns the ids."""
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValidationError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValidationError(f"got {len(ids)} ids for {len(texts)} texts")
        out_ids = [i if i else uuid.uuid4().hex for i in (ids or [None] * len(texts))]
        new: list[dict[str, Any]] = []
        pending: dict[str, int] = {}
        for n, (item_id, text) in enumerate(zip(out_ids, texts)):
            meta = dict(metadatas[n]) if metadatas else {}
            existing = self.cube.lookup(item_id, **self._as)
            if existing is None:
                if item_id in pending:  # the same new id twice in one call: the last one wins
                    new[pending[item_id]] = {**new[pending[item_id]], "content": text, "metadata": meta}
                    continue
                pending[item_id] = len(new)
                new.append({"id": item_id, "content": text, "metadata": meta, "kind": self.kind, **self.scope,
                            "provenance": {"source": SourceKind.DOCUMENT, "source_ids": [item_id],
                                           "extractor": _EXTRACTOR}})
                continue
            self._upsert(item_id, existing, text, meta)
        if new:
            try:
                self.cube.add_many(new, **self._as)
            except (ValidationError, Conflict):
                # another worker added one of these ids between our lookup and our add (the whole add was rolled
                # back): write them one by one, as new memories or new versions of what now exists
                if all(self.cube.lookup(spec["id"], **self._as) is None for spec in new):
                    raise
                for spec in new:
                    found = self.cube.lookup(spec["id"], **self._as)
                    if found is None:
                        self.cube.add_many([spec], **self._as)
                    else:
                        self._upsert(spec["id"], found, spec["content"], spec["metadata"])
        return out_ids

    def _upsert(self, item_id: str, existing: MemoryItem, text: str, meta: dict[str, Any]) -> None:
        """A new version of an existing document (restored if deleted), read again and retried when another
        worker's write collided with it (:func:`memos_langchain._common.write_retrying`)."""

        def write(found: MemoryItem) -> None:
            if not self._in_scope(found):
                raise Conflict(f"document id {item_id!r} is used by a memory outside this store's scope")
            if found.state == _S.PURGED:
                raise Conflict(f"document id {item_id!r} belonged to a purged memory and cannot be reused")
            if found.state == _S.DELETED:
                self.cube.restore(item_id, reason="vectorstore re-add", **self._as)
            elif found.state in (_S.ARCHIVED, _S.MERGED):
                self.cube.transition(item_id, _S.ACTIVATED, reason="vectorstore re-add", **self._as)
            if found.content != text or found.metadata != meta:
                self.cube.update(item_id, content=text, metadata=meta, reason="vectorstore upsert", **self._as)

        write_retrying(existing, lambda: self.cube.lookup(item_id, **self._as), write)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Tombstone the memories with these ids (unknown or already deleted ids are ignored)."""
        if ids is None:
            raise ValidationError("delete needs a list of ids (MemOSVectorStore never deletes everything at once)")
        for item_id in ids:
            existing = self.cube.lookup(item_id, **self._as)
            if existing is not None and existing.state not in (_S.DELETED, _S.PURGED) and self._in_scope(existing):
                delete_if_live(self.cube, item_id, "vectorstore delete", self._as)  # or by another worker now
        return True

    # ------------------------------------------------------------------ reads
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        if not ids:
            return []
        items = self.cube.list(self._filter(ids=ids), limit=len(ids), **self._as)
        return [self._doc(it) for it in items]

    def _hits(self, query: str, k: int, filter: Any) -> list[Any]:
        return self.cube.search(query, k=k, filter=self._filter(filter), mode=self.search_mode,  # type: ignore[arg-type]
                                **self._as)

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict[str, Any] | SearchFilter | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """Documents and scores, best first. With ``search_mode="dense"`` the score is the cosine similarity;
        otherwise the core's absolute score in [0, 1] (``SearchHit.score``: independent of the store's size)."""
        hits = self._hits(query, k, filter)
        if self.search_mode == "dense":
            return [(self._doc(h.item), float(h.retrievers.get("dense", h.score))) for h in hits]
        return [(self._doc(h.item), float(h.score)) for h in hits]

    def similarity_search(self, query: str, k: int = 4, filter: dict[str, Any] | SearchFilter | None = None,
                          **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def _similarity_search_with_relevance_scores(self, query: str, k: int = 4,
                                                 **kwargs: Any) -> list[tuple[Document, float]]:
        """Relevance in [0, 1] from the dense cosine similarity ((cos + 1) / 2; 0 when dense did not find it)."""
        hits = self._hits(query, k, kwargs.get("filter"))
        return [(self._doc(h.item), (float(h.retrievers["dense"]) + 1.0) / 2.0 if "dense" in h.retrievers else 0.0)
                for h in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda cos: (cos + 1.0) / 2.0

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict[str, Any]] | None = None, *,
                   ids: list[str] | None = None, memory: Any = None, **kwargs: Any) -> "MemOSVectorStore":
        """Create a store and add ``texts``. ``memory`` is a ``MemOS``, a ``MemCube`` or a folder path; without
        it a new cube is created in a fresh temporary folder (its path is logged)."""
        if memory is None:
            memory = tempfile.mkdtemp(prefix="memos-vectorstore-") + "/cube"
            log.warning("MemOSVectorStore.from_texts: no memory= given; created a cube at %s", memory)
        store = cls(memory, embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store
