"""The memory item model: what a MemCube stores, versions and returns.

All models are pydantic v2. Times are timezone-aware UTC datetimes; a naive datetime or a date string without
an offset is taken as UTC.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import date, datetime, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import ValidationError

__all__ = [
    "MemoryForm",
    "MemoryKind",
    "LifecycleState",
    "SourceKind",
    "Scope",
    "Provenance",
    "Usage",
    "MemoryItem",
    "MemoryVersion",
    "Transition",
    "SearchHit",
    "SearchFilter",
    "new_id",
    "to_utc",
    "utcnow",
]

MAX_CONTENT_CHARS_DEFAULT = 32_000


class MemoryForm(str, Enum):
    """The three forms of memory in MemOS."""

    PLAINTEXT = "plaintext"
    ACTIVATION = "activation"
    PARAMETRIC = "parametric"


class MemoryKind(str, Enum):
    """What a memory is about. Free-form kinds are not allowed so filters stay meaningful."""

    FACT = "fact"
    EPISODE = "episode"
    PREFERENCE = "preference"
    PROCEDURE = "procedure"
    PROFILE = "profile"
    SUMMARY = "summary"
    DOCUMENT = "document"
    NOTE = "note"


class LifecycleState(str, Enum):
    """Lifecycle states from the MemOS paper. See :mod:`memos_core.lifecycle` for the legal transitions."""

    GENERATED = "generated"
    ACTIVATED = "activated"
    MERGED = "merged"
    ARCHIVED = "archived"
    FROZEN = "frozen"
    DELETED = "deleted"
    PURGED = "purged"


class SourceKind(str, Enum):
    CONVERSATION = "conversation"
    DOCUMENT = "document"
    TOOL = "tool"
    USER = "user"
    SYSTEM = "system"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    """A new item id: a random UUID4 hex string (32 characters)."""
    return uuid.uuid4().hex


def to_utc(value: Any, *, field: str = "time") -> datetime | None:
    """Parse a datetime, date, epoch number or ISO-8601 string into an aware UTC datetime.

    Raises :class:`ValidationError` for anything else.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValidationError(f"{field}: {value!r} is not a finite timestamp")
        dt = datetime.fromtimestamp(float(value), tz=timezone.utc)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            dt = None
            for fmt in ("%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y/%m/%d", "%d %B %Y", "%B %d, %Y",
                        "%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y"):
                try:
                    dt = datetime.strptime(text, fmt)
                    break
                except ValueError:
                    continue
            if dt is None:
                raise ValidationError(
                    f"{field}: cannot parse {value!r} as a date/time; use ISO-8601 such as '2023-05-08T13:56:00Z'"
                ) from None
    else:
        raise ValidationError(f"{field}: expected a datetime, date, epoch seconds or ISO string, got {type(value).__name__}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def _check_json(value: Any, field: str) -> Any:
    try:
        text = json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{field} must be JSON-serialisable (str, number, bool, null, list, dict): {exc}") from None
    return json.loads(text)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False, validate_assignment=False)


class Scope(_Model):
    """Who a memory belongs to, mem0-style. Any field left ``None`` is unscoped on that axis."""

    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None

    @field_validator("user_id", "agent_id", "session_id")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and (not isinstance(v, str) or not v.strip() or len(v) > 256):
            raise ValueError("scope ids must be non-empty strings of at most 256 characters")
        return v


class Provenance(_Model):
    """Where a memory came from."""

    source: SourceKind = SourceKind.USER
    source_ids: list[str] = Field(default_factory=list, description="ids of source turns/messages/documents")
    session_id: str | None = None
    speaker: str | None = None
    extractor: str | None = Field(default=None, description="what produced it, e.g. 'reader.offline/1'")
    parent_ids: list[str] = Field(default_factory=list, description="items this one was merged/derived from")
    parent_versions: list[str] = Field(default_factory=list, description="'item_id@version' it was derived from")
    redactions: list[str] = Field(default_factory=list, description="kinds of data redacted on write (never values)")


class Usage(_Model):
    access_count: int = 0
    last_access: datetime | None = None


class MemoryItem(_Model):
    """One memory: content plus everything MemOS knows about it.

    ``index_text`` (optional) is what retrieval indexes when it should differ from ``content``: e.g. a
    conversation turn enriched with the speaker, the date and the neighbouring turn. ``content`` is what is
    shown to the model.
    """

    id: str = Field(default_factory=new_id)
    cube_id: str = ""
    content: str
    index_text: str | None = None
    form: MemoryForm = MemoryForm.PLAINTEXT
    kind: MemoryKind = MemoryKind.FACT
    scope: Scope = Field(default_factory=Scope)
    state: LifecycleState = LifecycleState.ACTIVATED
    version: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    event_time: datetime | None = None
    valid_until: datetime | None = Field(default=None, description="when the fact stopped being true, if it did")
    expires_at: datetime | None = None
    provenance: Provenance = Field(default_factory=Provenance)
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    confidence: float = 1.0
    usage: Usage = Field(default_factory=Usage)
    created_by: str | None = None

    @field_validator("created_at", "updated_at", "event_time", "valid_until", "expires_at", mode="before")
    @classmethod
    def _times(cls, v: Any, info: Any) -> datetime | None:
        return to_utc(v, field=info.field_name)

    @field_validator("metadata", mode="before")
    @classmethod
    def _meta(cls, v: Any) -> dict[str, Any]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("metadata must be a dict")
        return _check_json(v, "metadata")

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> list[str]:
        if v is None:
            return []
        if isinstance(v, str) or not all(isinstance(t, str) and t.strip() for t in v):
            raise ValueError("tags must be a list of non-empty strings")
        return sorted(set(t.strip() for t in v))

    @field_validator("confidence")
    @classmethod
    def _conf(cls, v: float) -> float:
        if not (0.0 <= v <= 1.0) or math.isnan(v):
            raise ValueError("confidence must be within [0, 1]")
        return v


class MemoryVersion(_Model):
    """A frozen snapshot of an item's content-bearing fields at one version."""

    item_id: str
    version: int
    content: str
    index_text: str | None = None
    kind: MemoryKind
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    provenance: Provenance = Field(default_factory=Provenance)
    event_time: datetime | None = None
    valid_until: datetime | None = None
    expires_at: datetime | None = None
    confidence: float = 1.0
    created_at: datetime
    author: str | None = None
    reason: str | None = None


class Transition(_Model):
    item_id: str
    from_state: LifecycleState | None
    to_state: LifecycleState
    at: datetime
    actor: str | None = None
    reason: str | None = None


class SearchHit(_Model):
    """A search result: the item, its fused score and which retrievers found it.

    ``score`` orders results, higher is better. Hybrid search (z-score fusion) reports it in (0, 1): the
    logistic of how many standard deviations the memory stands above this query's other candidates, so it is
    relative to the query, not an absolute relevance; RRF and single-retriever modes report the fused RRF value.
    ``retrievers`` holds each retriever's own absolute score (dense: cosine similarity; lexical: BM25).
    """

    item: MemoryItem
    score: float
    retrievers: dict[str, float] = Field(default_factory=dict, description="retriever name -> its own score")
    ranks: dict[str, int] = Field(default_factory=dict, description="retriever name -> 1-based rank")


_META_OPS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"}


class SearchFilter(_Model):
    """Filters for search. Every field is optional; all given ones must hold (AND).

    ``metadata`` maps a key to a value (equality) or to an operator dict, e.g. ``{"lang": "en",
    "priority": {"$gte": 2}}``. Operators: $eq $ne $gt $gte $lt $lte $in $nin $exists.
    """

    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    kinds: list[MemoryKind] | None = None
    states: list[LifecycleState] | None = None
    forms: list[MemoryForm] | None = None
    tags_any: list[str] | None = None
    tags_all: list[str] | None = None
    event_after: datetime | None = None
    event_before: datetime | None = None
    ids: list[str] | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("event_after", "event_before", mode="before")
    @classmethod
    def _times(cls, v: Any, info: Any) -> datetime | None:
        return to_utc(v, field=info.field_name)

    @field_validator("metadata")
    @classmethod
    def _meta(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        for key, cond in v.items():
            if not isinstance(key, str) or not key or not all(c.isalnum() or c in "_-." for c in key):
                raise ValueError(f"metadata filter key {key!r}: use letters, digits, '_', '-' or '.' (nested keys)")
            if isinstance(cond, dict):
                if not cond:
                    raise ValueError(f"metadata filter for {key!r} is an empty operator dict")
                for op, val in cond.items():
                    if op not in _META_OPS:
                        raise ValueError(f"unknown metadata operator {op!r} for {key!r}; use one of {sorted(_META_OPS)}")
                    if op in ("$in", "$nin") and not isinstance(val, list):
                        raise ValueError(f"{op} for {key!r} needs a list")
                    if op == "$exists" and not isinstance(val, bool):
                        raise ValueError(f"$exists for {key!r} needs true/false")
                    if op in ("$gt", "$gte", "$lt", "$lte") and (isinstance(val, bool) or not isinstance(val, (int, float, str))):
                        raise ValueError(f"{op} for {key!r} needs a number or string")
            elif not isinstance(cond, (str, int, float, bool)) and cond is not None:
                raise ValueError(f"metadata filter for {key!r} must be a scalar or an operator dict")
        return v

    @classmethod
    def coerce(cls, value: "SearchFilter | dict[str, Any] | None") -> "SearchFilter":
        """Accept a SearchFilter, a dict (validated) or None."""
        if value is None:
            return cls()
        if isinstance(value, SearchFilter):
            return value
        if isinstance(value, dict):
            from pydantic import ValidationError as PydanticError

            try:
                return cls.model_validate(value)
            except PydanticError as exc:
                raise ValidationError(f"bad search filter: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        raise ValidationError(f"filter must be a dict or SearchFilter, got {type(value).__name__}")


Order = Literal["relevance", "time"]
