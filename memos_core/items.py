"""The memory item model: what a MemCube stores, versions and returns.

All models are pydantic v2. Times are timezone-aware UTC datetimes; a naive datetime or a date string without
an offset is taken as UTC.
"""

from __future__ import annotations

import json
import math
import unicodedata
import uuid
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    "check_text",
    "check_id",
    "check_nesting",
    "ttl_seconds",
    "MAX_CONTENT_CHARS_DEFAULT",
    "MAX_ID_CHARS",
    "MAX_SCOPE_ID_CHARS",
    "MAX_TAG_CHARS",
    "MAX_TAGS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_TTL_SECONDS",
    "MAX_FILTER_VALUES",
]

# ---------------------------------------------------------------------------------------------- limits
# Documented in the README ("Robustness guarantees"). Input beyond them raises ValidationError before anything
# is written; nothing is truncated silently.
#: characters of ``content`` / ``index_text`` (per cube: ``MemCube(max_content_chars=...)``)
MAX_CONTENT_CHARS_DEFAULT = 32_000
#: characters of an item id (no control characters)
MAX_ID_CHARS = 128
#: characters of a ``user_id`` / ``agent_id`` / ``session_id`` (no control characters)
MAX_SCOPE_ID_CHARS = 256
#: characters of one tag, and tags per memory
MAX_TAG_CHARS = 256
MAX_TAGS = 256
#: size of ``metadata`` as UTF-8 JSON, and its nesting depth (a dict or list inside another counts one level)
MAX_METADATA_BYTES = 1 << 20
MAX_METADATA_DEPTH = 32
#: the longest ``ttl`` (about 1000 years): expiry times stay within what every backend can store
MAX_TTL_SECONDS = 1000 * 366 * 86400.0
#: values in one filter list (``ids``, ``tags_any``, ``tags_all``, a metadata ``$in`` / ``$nin``)
MAX_FILTER_VALUES = 10_000


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


def _utf8_ok(text: str) -> bool:
    """Whether ``text`` can be stored as UTF-8 (no lone surrogates such as ``"\\ud800"``)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: Any, field: str) -> str:
    """Return ``value`` if it is a string that UTF-8 can encode, else raise :class:`ValidationError`.

    Python strings may hold lone surrogates (``"\\ud800"``, e.g. from ``surrogateescape`` decoding), which no
    storage backend, JSON encoder or hash accepts: they are refused up front, with the field named.
    """
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string, got {type(value).__name__}")
    if not _utf8_ok(value):
        raise ValidationError(f"{field} contains a lone surrogate (invalid Unicode); decode the text as UTF-8 "
                              "with errors='replace' first")
    return value


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text) if not text.isprintable() else False


def check_id(value: Any, field: str = "id", max_chars: int = MAX_ID_CHARS) -> str:
    """An identifier: a non-blank string of at most ``max_chars`` characters, valid Unicode, without control
    characters (NUL, newline, escape, ...). Raises :class:`ValidationError` otherwise."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string, got {type(value).__name__}")
    if not value.strip() or len(value) > max_chars:
        raise ValidationError(f"{field} must be a non-empty string of at most {max_chars} characters")
    check_text(value, field)
    if _has_control(value):
        raise ValidationError(f"{field} {value[:40]!r} contains control characters; ids are printable text")
    return value


def ttl_seconds(ttl: Any, field: str = "ttl") -> float:
    """A time-to-live (seconds as a number, or a ``timedelta``) as positive finite seconds, at most
    :data:`MAX_TTL_SECONDS`. Raises :class:`ValidationError` otherwise."""
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        try:
            seconds = float(ttl)
        except OverflowError:
            seconds = math.inf
    else:
        raise ValidationError(f"{field} must be seconds (a number) or a timedelta, got {type(ttl).__name__}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValidationError(f"{field} must be positive and finite, not {ttl!r}"[:200])
    if seconds > MAX_TTL_SECONDS:
        raise ValidationError(f"{field} of {seconds:.3g} s is too long; the limit is {MAX_TTL_SECONDS:.3g} s "
                              "(about 1000 years); leave it unset for no expiry")
    return seconds


def to_utc(value: Any, *, field: str = "time") -> datetime | None:
    """Parse a datetime, date, epoch number or ISO-8601 string into an aware UTC datetime.

    Raises :class:`ValidationError` for anything else, including times outside what a datetime can hold
    (years 1-9999 in UTC).
    """
    try:
        return _to_utc(value, field)
    except (OverflowError, OSError) as exc:
        raise ValidationError(f"{field}: {str(value)[:60]!r} is out of range ({exc})") from None
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            raise
        raise ValidationError(f"{field}: {str(value)[:60]!r} is not a valid time ({exc})") from None


def _to_utc(value: Any, field: str) -> datetime | None:
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
        check_text(value, field)
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


def check_nesting(value: Any, field: str, max_depth: int = MAX_METADATA_DEPTH) -> None:
    """Raise :class:`ValidationError` when dicts/lists in ``value`` nest deeper than ``max_depth`` levels.

    Iterative, so a structure nested thousands deep is refused before any recursive code (a JSON encoder, an
    equality check, a text flattener) meets Python's recursion limit."""
    _json_depth(value, field, max_depth)


def _json_depth(value: Any, field: str, max_depth: int = MAX_METADATA_DEPTH) -> None:
    """Refuse nesting deeper than MAX_METADATA_DEPTH (iteratively: a 2,000-deep dict must not hit Python's
    recursion limit here or in the JSON encoder)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth > max_depth:
            raise ValidationError(f"{field} is nested more than {max_depth} levels deep; flatten it")
        stack.extend((child, depth + 1) for child in children)


def _check_json(value: Any, field: str) -> Any:
    _json_depth(value, field)
    try:
        text = json.dumps(value, allow_nan=False, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{field} must be JSON-serialisable (str, number, bool, null, list, dict): {exc}") from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{field} contains a lone surrogate (invalid Unicode) in a key or value") from None
    if size > MAX_METADATA_BYTES:
        raise ValidationError(f"{field} is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES} bytes. Store large "
                              "values elsewhere and keep a reference in metadata")
    return json.loads(text)


def _check_strings(value: Any, field: str) -> None:
    """Refuse lone surrogates in any string inside ``value`` (dicts, lists, models' dumps)."""
    stack = [(value, field)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if not _utf8_ok(node):
                raise ValueError(f"{where} contains a lone surrogate (invalid Unicode)")
        elif isinstance(node, dict):
            for k, v in node.items():
                stack.append((k, where))
                stack.append((v, f"{where}.{k}" if isinstance(k, str) and _utf8_ok(k) else where))
        elif isinstance(node, (list, tuple, set, frozenset)):
            stack.extend((v, where) for v in node)


def _clean_tags(v: Any) -> list[str]:
    """Tags: a list (or tuple/set) of non-blank strings, each at most MAX_TAG_CHARS, at most MAX_TAGS of them;
    stripped, deduplicated and sorted. A bare string is refused (it is not a list of one tag)."""
    if v is None:
        return []
    if not isinstance(v, (list, tuple, set, frozenset)):
        raise ValueError(f"tags must be a list of strings, not {type(v).__name__}"
                         + (" (wrap a single tag in a list: tags=['home'])" if isinstance(v, str) else ""))
    if len(v) > MAX_TAGS:
        raise ValueError(f"{len(v)} tags; the limit is {MAX_TAGS}")
    for t in v:
        if not isinstance(t, str) or not t.strip():
            raise ValueError("tags must be a list of non-empty strings")
        if len(t) > MAX_TAG_CHARS:
            raise ValueError(f"a tag has {len(t)} characters; the limit is {MAX_TAG_CHARS}")
        if not _utf8_ok(t) or _has_control(t):
            raise ValueError("tags must be valid Unicode without control characters")
    return sorted(set(t.strip() for t in v))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False, validate_assignment=False)


class Scope(_Model):
    """Who a memory belongs to, mem0-style. Any field left ``None`` is unscoped on that axis."""

    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None

    @field_validator("user_id", "agent_id", "session_id", mode="before")
    @classmethod
    def _non_empty(cls, v: Any, info: Any) -> str | None:
        if v is None:
            return v
        if not isinstance(v, str) or not v.strip() or len(v) > MAX_SCOPE_ID_CHARS:
            raise ValueError(f"scope ids must be non-empty strings of at most {MAX_SCOPE_ID_CHARS} characters"
                             + ("" if isinstance(v, str) else f", not {type(v).__name__}"))
        try:
            check_id(v, info.field_name, MAX_SCOPE_ID_CHARS)
        except ValidationError as exc:
            raise ValueError(str(exc)) from None
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

    @model_validator(mode="before")
    @classmethod
    def _shallow(cls, data: Any) -> Any:
        # before any field is validated: a value nested thousands deep must not reach code that recurses
        # (pydantic's enum coercion formats the input with repr())
        if isinstance(data, dict):
            for key, val in data.items():
                if key != "metadata":
                    check_nesting(val, str(key), 4)
        return data

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
        return _clean_tags(v)

    @field_validator("confidence")
    @classmethod
    def _conf(cls, v: float) -> float:
        if not (0.0 <= v <= 1.0) or math.isnan(v):
            raise ValueError("confidence must be within [0, 1]")
        return v

    @field_validator("id", "cube_id", "content", "index_text", "created_by")
    @classmethod
    def _unicode(cls, v: str | None, info: Any) -> str | None:
        if v is not None and not _utf8_ok(v):
            raise ValueError(f"{info.field_name} contains a lone surrogate (invalid Unicode)")
        return v

    @field_validator("provenance")
    @classmethod
    def _prov(cls, v: Provenance) -> Provenance:
        _check_strings(v.model_dump(mode="python"), "provenance")
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
    """A search result: the item, its calibrated score, its place in the ranking and which retrievers found it.

    ``score`` is in [0, 1] and is *absolute*: it depends only on the query and this memory (its cosine
    similarity to the query and the share of the query's words it contains, mapped by a calibration fitted on
    the project's dev sets), never on how many other memories the cube holds, so an app can threshold it
    (``search(..., min_score=0.5)``) and compare it across cubes. The ranking is the fusion's: ``rank`` is the
    1-based position and ``fused`` the fusion's own value (hybrid: standard deviations above this query's other
    candidates; RRF and single-retriever modes: the RRF sum), which are relative to the query and the corpus.
    Hits come in ``rank`` order, so ``score`` need not decrease monotonically down the list.
    ``retrievers`` holds each retriever's own score (dense: cosine similarity; lexical: BM25). ``degraded`` is
    true when a retriever could not run (see :meth:`memos_core.cube.MemCube.search`).
    """

    item: MemoryItem
    score: float
    retrievers: dict[str, float] = Field(default_factory=dict, description="retriever name -> its own score")
    ranks: dict[str, int] = Field(default_factory=dict, description="retriever name -> 1-based rank")
    rank: int | None = Field(default=None, description="1-based position in the fused ranking of this search")
    fused: float | None = Field(default=None, description="the fusion's own (query-relative) value")
    degraded: bool = Field(default=False, description="True when the search ran without a retriever it would "
                           "normally use: a hybrid search while the embedder was down returns the lexical leg's "
                           "hits only, scored as a lexical-only search scores them")


def _filter_values(cond: Any) -> list[Any]:
    """The scalar values a metadata filter condition compares against."""
    if isinstance(cond, dict):
        out: list[Any] = []
        for val in cond.values():
            out.extend(val if isinstance(val, list) else [val])
        return out
    return [cond]


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

    @model_validator(mode="before")
    @classmethod
    def _shallow(cls, data: Any) -> Any:
        if isinstance(data, dict):  # see MemoryItem._shallow
            for key, val in data.items():
                check_nesting(val, f"filter {key}", 6 if key == "metadata" else 3)
        return data

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
            for val in _filter_values(cond):
                if isinstance(val, float) and not math.isfinite(val):
                    raise ValueError(f"metadata filter for {key!r}: {val!r} is not a finite number")
                if isinstance(val, int) and not isinstance(val, bool) and not -(2**63) <= val < 2**63:
                    raise ValueError(f"metadata filter for {key!r}: {val} is outside the 64-bit integer range")
        return v

    @model_validator(mode="after")
    def _unicode(self) -> "SearchFilter":
        _check_strings(self.model_dump(mode="python"), "filter")
        for axis in ("user_id", "agent_id", "session_id"):
            val = getattr(self, axis)
            if val is not None and len(val) > MAX_SCOPE_ID_CHARS:
                raise ValueError(f"{axis} must be a string of at most {MAX_SCOPE_ID_CHARS} characters")
        for name in ("ids", "tags_any", "tags_all"):
            vals = getattr(self, name)
            if vals is not None and len(vals) > MAX_FILTER_VALUES:
                raise ValueError(f"{name} lists {len(vals)} values; the limit is {MAX_FILTER_VALUES} (query in batches)")
        for key, cond in (self.metadata or {}).items():
            if len(_filter_values(cond)) > MAX_FILTER_VALUES:
                raise ValueError(f"metadata filter for {key!r} lists more than {MAX_FILTER_VALUES} values")
        return self

    @field_validator("user_id", "agent_id", "session_id", "ids", "tags_any", "tags_all", mode="before")
    @classmethod
    def _strict_text(cls, v: Any, info: Any) -> Any:
        vals = v if isinstance(v, (list, tuple)) else [v]
        if isinstance(v, (str, bytes)) and info.field_name in ("ids", "tags_any", "tags_all"):
            raise ValueError(f"{info.field_name} must be a list of strings, not a single {type(v).__name__}")
        if any(x is not None and not isinstance(x, str) for x in vals):
            raise ValueError(f"{info.field_name} must hold strings")
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
