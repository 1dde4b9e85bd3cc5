"""Per-cube governance: who may do what (ACL), policies (retention, redaction, read auditing), the checks
every :class:`~memos_core.cube.MemCube` operation runs, and the audit chain.

Governance is access policy + audit over the cube's record store: it holds the store and what it needs to know
about its cube (id, name, default actor, clock, the cube's NotFound), given at construction, never the cube
itself; it imports nothing from ``cube.py``. The operations it governs (writes, legal hold, forget: see
:mod:`memos_core.erasure`) are the cube's.

Everything lives in the cube's own records database (tables ``gov_*``), so sharing travels with the cube
and every change is in the same fsync'd transactions and hash-chained audit log as the memories.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..log import get_logger
from ..errors import Conflict, CubeClosed, MemOSError, NotFound, PermissionDenied, ValidationError
from ..items import MemoryItem, to_utc, utcnow
from .audit import AuditReport, verify_rows
from .redaction import RedactionPolicy, RedactionRejected, redact_text, redact_value
from .retention import RetentionPolicy
from .roles import (
    ROLE_RIGHTS,
    Grant,
    PrincipalKind,
    Right,
    Role,
    check_grant,
    check_principal_id,
    check_revoke,
    coerce_role,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..records.base import RecordStore, Txn

__all__ = ["Governance", "GovernanceSettings", "PRINCIPAL_KEYS"]

log = get_logger(__name__)

# The governance tables (gov_principals, gov_acl, gov_settings, gov_forget_pending) are created by the
# record store (memos_core/records): this module holds no SQL.

#: Top-level metadata keys that name a principal. A write may only put the acting principal there: anything
#: else is an attempt to write on someone else's behalf and is refused (PermissionDenied, audited).
PRINCIPAL_KEYS = frozenset({"actor", "principal", "principal_id", "created_by", "on_behalf_of", "acting_as"})

_OUTCOME = {PermissionDenied: "denied", ValidationError: "invalid", NotFound: "not_found", Conflict: "conflict"}


def _outcome(exc: BaseException) -> str:
    for cls, name in _OUTCOME.items():
        if isinstance(exc, cls):
            return name
    return "error"


def _loggable(value: Any) -> Any:
    """``value`` with every string made storable as UTF-8 (lone surrogates become U+FFFD): the record of a
    refused attempt must be writable even when the refused input was not."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {_loggable(k): _loggable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_loggable(v) for v in value]
    return value


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


_MARK = "_memos_audited_in"  # attribute on an exception: ids of the cubes whose audit log recorded it


class _Attempt:
    """The context manager behind :meth:`Governance.attempt` (a class, not a generator: it runs on every
    write, and the success path must cost next to nothing)."""

    __slots__ = ("gov", "actor", "op", "item_id", "detail", "depth")

    def __init__(self, gov: "Governance", actor: Any, op: str, item_id: Any,
                 detail: Mapping[str, Any] | None) -> None:
        self.gov, self.actor, self.op, self.item_id, self.detail = gov, actor, op, item_id, detail
        self.depth = 0

    def __enter__(self) -> None:
        tls = self.gov._tls
        self.depth = getattr(tls, "depth", 0)
        if not self.depth:
            tls.op_settings = None  # read by this operation's authorize (see Governance._settings_raw)
        tls.depth = self.depth + 1

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> bool:
        gov = self.gov
        gov._tls.depth = self.depth
        if not self.depth:
            gov._tls.op_settings = None
        if exc is None or not isinstance(exc, Exception) or self.depth or gov._recorded(exc) \
                or isinstance(exc, CubeClosed):  # a closed (or another process's) handle records nothing
            return False
        actor = gov.actor if self.actor is None else self.actor
        try:
            gov._audit(actor, self.op, self.item_id, _outcome(exc),
                       {**(self.detail or {}), "error": type(exc).__name__}, exc)
        except Exception:  # noqa: BLE001 - never hide the operation's own error behind the audit's
            log.exception("could not record the failed %s in the audit log of cube %r", self.op, gov.name)
        return False


class GovernanceSettings(BaseModel):
    """A cube's governance policies (see :meth:`Governance.configure`)."""

    model_config = ConfigDict(extra="forbid")

    audit_reads: bool = Field(default=False, description="append a record for every get/search/list/history")
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    redaction: RedactionPolicy = Field(default_factory=RedactionPolicy)


class Governance:
    """The governance of one cube: ``cube.governance``.

    A new cube is owned by the principal that created it (``MemCube(path, actor=...)``, ``"local"`` by
    default), so a single-user program never has to think about any of this: every check still runs and
    passes. A cube written before governance existed gets the same bootstrap the first time it is opened.

    The cube builds it (``MemCube.governance``) over its record store and passes what governance needs to know
    about it: ``cube_id`` and ``name`` (messages; which audit logs recorded an error), ``actor`` (the principal
    an operation without ``actor=`` runs as, the owner of a new cube), ``clock`` (a zero-argument callable
    returning a ``datetime``: the time of every record) and ``missing`` (``item_id -> NotFound``: the cube's
    own error for an unknown id, which an actor who may not read the cube gets as well).
    """

    def __init__(self, records: "RecordStore", *, cube_id: str, name: str, actor: str = "local",
                 clock: Callable[[], datetime] | None = None,
                 missing: Callable[[str], NotFound] | None = None) -> None:
        self.records = records
        self.cube_id = cube_id
        self.name = name
        self.actor = check_principal_id(actor, "actor")
        self._clock = clock or utcnow
        self._missing = missing or self._not_found
        self._tls = threading.local()  # depth of nested audited operations on this thread
        self._ensure()

    # ------------------------------------------------------------------ plumbing
    def _now(self) -> float:
        return (to_utc(self._clock()) or utcnow()).timestamp()

    def _not_found(self, item_id: str) -> NotFound:
        return NotFound(f"no memory with id {item_id!r} in cube {self.name!r}")

    def _ensure(self) -> None:
        if self.records.governance_ready():
            return
        owner = self.actor
        with self.records.transaction() as c:
            now = self._now()
            # A new cube starts with an empty log (a bundle import copies the source chain into it); an
            # existing cube written before governance records who became its owner.
            if self.records.bootstrap_governance(c, owner, PrincipalKind.USER.value, now, os.urandom(32).hex()) \
                    and self.records.has_events(c):
                self.records.append_event(c, now, owner, "acl.bootstrap", None,
                                          detail={"principal": owner, "role": Role.OWNER.value})

    def _audit(self, actor: Any, op: str, item_id: str | None, outcome: str, detail: Mapping[str, Any],
               exc: BaseException | None = None) -> None:
        """Append one audit record in its own transaction (used for refusals and failures: nothing else is
        written). ``exc``, the error about to be raised, is marked as recorded so that the operation it
        escapes from does not record it a second time."""
        who = actor if isinstance(actor, str) else None
        if who is not None and (len(who) > 128 or "\x00" in who):
            who = who.replace("\x00", "?")[:128]
        if who is not None:  # a lone surrogate cannot be stored or hashed: keep the attempt, mark the character
            who = _loggable(who)
        item = item_id if isinstance(item_id, str) and len(item_id) <= 128 else None
        if item is not None and _loggable(item) != item:
            item = None  # an id that cannot be stored was never a memory's id
        detail = _loggable(detail)
        at = self._now()
        # A transaction of its own that writes this one record and nothing else: a failed or refused attempt
        # leaves no other trace.
        self.records.append_event_alone(at, who, op, item, outcome, dict(detail))
        if exc is not None:
            self._mark(exc)

    def _mark(self, exc: BaseException) -> BaseException:
        """Note on ``exc`` that this cube's audit log already holds a record of it."""
        seen = getattr(exc, _MARK, None)
        if not isinstance(seen, set):
            seen = set()
            try:
                setattr(exc, _MARK, seen)
            except (AttributeError, TypeError):  # pragma: no cover - an exception type with __slots__
                return exc
        seen.add(self.cube_id)
        return exc

    def _recorded(self, exc: BaseException) -> bool:
        seen = getattr(exc, _MARK, None)
        return isinstance(seen, set) and self.cube_id in seen

    def attempt(self, actor: Any, op: str, item_id: Any = None,
                detail: Mapping[str, Any] | None = None) -> "_Attempt":
        """Run a governed operation (``with gov.attempt(actor, op, item_id, detail): ...``): what the cube's
        write pipeline, its erasure and its sweeps wrap every operation in.

        When it raises, one record of the failed attempt (outcome ``invalid``, ``not_found``, ``conflict``,
        ``denied`` or ``error``, and ``detail["error"]``, the error's type) is appended in its own transaction
        after the operation's own transaction has rolled back, and the error is re-raised unchanged. Nothing
        is written when the operation succeeds (its own record is part of its transaction). An error that
        was recorded already (a refusal by :meth:`authorize`, a forged principal, a redaction rejection) is
        not recorded again, and an operation run inside another one on the same thread (``delete`` ->
        ``transition``, ``rollback`` -> ``update``) leaves the record to the outermost: the log names what the
        caller attempted. ``detail`` must never hold memory content.
        """
        return _Attempt(self, actor, op, item_id, detail)

    def note_failure(self, actor: Any, op: str, item_id: Any, exc: BaseException,
                     detail: Mapping[str, Any] | None = None) -> None:
        """Record a failure that the caller handles itself (e.g. an item an expiry sweep had to skip)."""
        if not self._recorded(exc):
            self._audit(self.actor if actor is None else actor, op, item_id, _outcome(exc),
                        {**(detail or {}), "error": type(exc).__name__}, exc)

    def _role(self, c: Txn, principal: str) -> Role | None:
        role = self.records.role(principal, c)
        return None if role is None else Role(role)

    def _settings_raw(self) -> dict[str, str]:
        """The governance settings: inside a governed write (:meth:`attempt`) that has passed :meth:`authorize`,
        the ones read together with that check (the same round trip); otherwise read now."""
        tls = self._tls
        if getattr(tls, "depth", 0):
            got = getattr(tls, "op_settings", None)
            if got is not None:
                return got
        return self.records.governance_settings()

    def _remember(self, op: str, actor: str, settings: dict[str, str]) -> None:
        """Keep the settings :meth:`authorize` read with the role, for the rest of this operation only: a write
        (inside :meth:`attempt`: until its outermost attempt ends) reads its policies from them, and a read's
        :meth:`audit_read` of the same ``op`` and actor on this thread takes the audit setting from them (once).
        Every call reads role and settings afresh in its own check, so a revoked role or a changed setting (by
        any process) holds from the next call on, as when they were two reads."""
        tls = self._tls
        tls.read_access = (op, actor, settings)
        if getattr(tls, "depth", 0):
            tls.op_settings = settings

    def _policy(self) -> GovernanceSettings:
        raw = self._settings_raw()
        ret, red = raw.get("retention"), raw.get("redaction")
        return GovernanceSettings(
            audit_reads=json.loads(raw.get("audit_reads", "false")),
            retention=RetentionPolicy() if ret is None else RetentionPolicy.model_validate_json(ret),
            redaction=RedactionPolicy() if red is None else RedactionPolicy.model_validate_json(red),
        )

    def retention_policy(self) -> RetentionPolicy:
        """The retention policy in force now, read without an authorization check: for code that authorized the
        caller already (the cube's expiry sweep). Users read the policies with :meth:`settings`."""
        return self._policy().retention

    def _redaction_key(self) -> bytes:
        raw = self._settings_raw().get("redaction_key")
        if raw is None:  # pragma: no cover - created at bootstrap
            raise ValidationError("this cube has no redaction key; reopen it to repair its governance tables")
        return bytes.fromhex(raw)

    # ------------------------------------------------------------------ checks
    def role_of(self, principal: str) -> Role | None:
        """The role ``principal`` holds on this cube, or ``None``."""
        return self._role(None, principal)

    def allows(self, actor: str | None, right: Right | str) -> bool:
        """Whether ``actor`` holds ``right`` (no audit record; for UIs and pre-filtering)."""
        actor = self.actor if actor is None else actor
        if not isinstance(actor, str):
            return False
        role = self.role_of(actor)
        return role is not None and Right(right) in ROLE_RIGHTS[role]

    def authorize(self, actor: str | None, right: Right, op: str, item_id: str | None = None,
                  filter: Any = None) -> str:
        """Check that ``actor`` (default: the cube's default actor) holds ``right``; return the actor.

        A refusal is appended to the audit log (outcome ``denied``/``invalid``) in its own transaction and
        raised as :class:`PermissionDenied`. When the operation names an item and the actor may not even
        read the cube, it raises the same :class:`NotFound` as an unknown id: the answer never depends on
        whether the item exists.
        """
        actor = self.actor if actor is None else actor
        try:
            check_principal_id(actor, "actor")
        except ValidationError as exc:
            self._audit(actor, op, item_id, "invalid", {"right": right.value, "error": "bad principal id"}, exc)
            raise
        # the role and the settings in one read (one round trip on a server); the settings serve the rest of this
        # operation (_remember)
        raw_role, settings = self.records.access(actor)
        role = None if raw_role is None else Role(raw_role)
        if role is None or right not in ROLE_RIGHTS[role]:
            err: MemOSError
            if item_id is not None and (role is None or Right.READ not in ROLE_RIGHTS[role]):
                err = self._missing(item_id)
            elif role is None:
                err = PermissionDenied(f"principal {actor!r} has no access to cube {self.name!r}; an owner or "
                                       "admin must share it first")
            else:
                err = PermissionDenied(f"{actor!r} is {role.value} on cube {self.name!r} and lacks the "
                                       f"{right.value!r} right that {op} needs")
            self._audit(actor, op, item_id, "denied",
                        {"right": right.value, "role": None if role is None else role.value}, err)
            log.info("refused %s on cube %s: %r (%s) lacks the %r right", op, self.name, actor,
                     role.value if role is not None else "no role", right.value)
            raise err
        if filter is not None:
            self._check_filter(actor, op, filter)
        self._remember(op, actor, settings)
        return actor

    def _check_filter(self, actor: str, op: str, filter: Any) -> None:
        if isinstance(filter, Mapping):
            forged = sorted(k for k in filter if isinstance(k, str) and k in PRINCIPAL_KEYS | {"cube_id", "cube_ids"})
            if forged:
                err = ValidationError(f"filter keys {forged} are not allowed: the principal comes from actor= and "
                                      "the cubes from the cube(s) you search, never from a filter")
                self._audit(actor, op, None, "invalid", {"error": "principal in filter", "keys": forged}, err)
                raise err

    def note_denied(self, actor: Any, op: str, right: Right = Right.READ) -> None:
        """Record a refused attempt without raising (used when a multi-cube search skips this cube)."""
        role = self.role_of(actor) if isinstance(actor, str) else None
        self._audit(actor, op, None, "denied", {"right": right.value, "role": None if role is None else role.value})

    # ------------------------------------------------------------------ write hooks (called by MemCube)
    def _check_claims(self, actor: str, op: str, claims: Mapping[str, Any], item_id: str | None) -> None:
        forged = sorted(k for k, v in claims.items() if v is not None and v != actor)
        if forged:
            err = PermissionDenied(
                f"{forged} name(s) a principal other than the acting one ({actor!r}); MemOS records who wrote a "
                "memory itself. Drop those fields or act as that principal."
            )
            self._audit(actor, op, item_id, "denied", {"error": "forged principal", "keys": forged}, err)
            raise err

    def _redact(self, actor: str, op: str, item: MemoryItem, policy: RedactionPolicy,
                item_id: str | None) -> MemoryItem:
        if not policy.active:
            return item
        key = self._redaction_key()
        try:
            content, notes = redact_text(item.content, policy, key, "content")
            index_text, n2 = (redact_text(item.index_text, policy, key, "index_text")
                              if item.index_text is not None else (None, []))
            metadata, n3 = redact_value(item.metadata, policy, key, "metadata")
            tags, n4 = redact_value(list(item.tags), policy, key, "tags")
            n3 = n3 + n4
        except RedactionRejected as exc:
            self._audit(actor, op, item_id, "rejected", {"error": "redaction policy", "kinds": exc.kinds}, exc)
            raise
        notes = notes + n2 + n3
        if not notes:
            return item
        prov = item.provenance.model_copy(update={"redactions": sorted(set(item.provenance.redactions) | set(notes))})
        return item.model_copy(update={"content": content, "index_text": index_text, "metadata": metadata,
                                       "tags": list(dict.fromkeys(tags)), "provenance": prov})

    def prepare_add(self, items: Sequence[MemoryItem], actor: str, now: datetime) -> list[MemoryItem]:
        """Before an add: refuse forged principals, apply the default TTL and the redaction policy."""
        policy = self._policy()
        out: list[MemoryItem] = []
        for item in items:
            claims = {k: v for k, v in item.metadata.items() if k in PRINCIPAL_KEYS}
            claims["created_by"] = item.created_by
            self._check_claims(actor, "add", claims, item.id)
            if item.expires_at is None and policy.retention.default_ttl is not None:
                item = item.model_copy(update={"expires_at": now + timedelta(seconds=policy.retention.default_ttl)})
            out.append(self._redact(actor, "add", item, policy.redaction, item.id))
        return out

    def prepare_update(self, old: MemoryItem, new: MemoryItem, actor: str) -> MemoryItem:
        """Before an update: the same checks on the new version (redaction applies to every text field, so a
        rollback to a version written under a looser policy is redacted too)."""
        claims = {k: v for k, v in new.metadata.items() if k in PRINCIPAL_KEYS and old.metadata.get(k) != v}
        self._check_claims(actor, "update", claims, old.id)
        return self._redact(actor, "update", new, self._policy().redaction, old.id)

    def reads_audited(self, op: str | None = None, actor: str | None = None) -> bool:
        """Whether reads are audited now (``configure(audit_reads=True)``). With ``op`` and ``actor``, the ones
        :meth:`authorize` just checked on this thread for this read: the setting read with that check is used
        (once), so the read costs no second round trip; anything else reads it now."""
        settings = None
        if op is not None:
            got = getattr(self._tls, "read_access", None)
            if got is not None and got[0] == op and got[1] == actor:
                self._tls.read_access = None
                settings = got[2]
        if settings is None:
            settings = self.records.governance_settings()
        raw = settings.get("audit_reads")
        return raw is not None and bool(json.loads(raw))

    def audit_read(self, actor: str, op: str, ids: Sequence[str], detail: Mapping[str, Any] | None = None, *,
                   audited: bool | None = None) -> None:
        """Record a read when the cube audits reads (``configure(audit_reads=True)``). ``audited``: that setting
        as the caller read it (:meth:`reads_audited`) during this operation, e.g. beside its other reads on a
        database server; ``None`` reads it now."""
        if not (self.reads_audited(op, actor) if audited is None else audited):
            return
        ids = list(ids)
        d: dict[str, Any] = {"ids": ids[:1000], "count": len(ids), **(detail or {})}
        with self.records.transaction() as c:
            self.records.append_event(c, self._now(), actor, op, ids[0] if len(ids) == 1 else None, detail=d)

    # ------------------------------------------------------------------ sharing
    def share(self, principal: str, role: Role | str, *, actor: str | None = None,
              kind: PrincipalKind | str | None = None) -> Grant:
        """Give ``principal`` a role on this cube (or change its role). Needs the **share** right.

        Nobody grants above their own role, only owners grant owner, and a role can only be changed by
        someone above it (owners excepted). ``kind`` (``"user"`` or ``"service"``) is recorded the first time
        a principal is seen. Refusals raise :class:`PermissionDenied` / :class:`ValidationError`, change
        nothing and are audited.
        """
        actor = self.actor if actor is None else actor
        detail = {"principal": principal if isinstance(principal, str) else None,
                  "role": role.value if isinstance(role, Role) else str(role)[:32]}
        with self.attempt(actor, "acl.grant", None, detail):
            check_principal_id(actor, "actor")
            check_principal_id(principal)
            new = coerce_role(role)
            k = None if kind is None else self._kind(kind)
            now = self._now()
            with self.records.transaction() as c:
                granter_role = self._role(c, actor)
                current = self._role(c, principal)
                check_grant(actor, granter_role, principal, current, new)
                if current == Role.OWNER and new != Role.OWNER and self._owners(c) <= 1:  # pragma: no cover
                    raise PermissionDenied(f"{principal!r} is the last owner; grant owner to someone else first")
                known = self.records.principal_kind(c, principal)
                if known is None:
                    self.records.add_principal(c, principal, (k or PrincipalKind.USER).value, now, actor)
                elif k is not None and known != k.value:
                    raise ValidationError(f"{principal!r} is known as a {known} principal, not {k.value}")
                self.records.put_grant(c, principal, new.value, actor, now)
                self.records.append_event(c, now, actor, "acl.grant", None,
                                          detail={"principal": principal, "role": new.value,
                                                  "previous": None if current is None else current.value})
        got = self.grant_of(principal)
        assert got is not None
        return got

    @staticmethod
    def _kind(kind: Any) -> PrincipalKind:
        try:
            return PrincipalKind(kind.value if isinstance(kind, PrincipalKind) else kind)
        except ValueError:
            raise ValidationError(f"principal kind must be 'user' or 'service', not {kind!r}") from None

    def _owners(self, c: Txn) -> int:
        return self.records.count_role(c, Role.OWNER.value)

    def revoke(self, principal: str, *, actor: str | None = None) -> None:
        """Remove ``principal``'s role. Anyone may leave (revoke themselves); revoking others needs the
        **share** right and a role above theirs (owners may revoke owners). The last owner cannot be removed.
        """
        actor = self.actor if actor is None else actor
        detail = {"principal": principal if isinstance(principal, str) else None}
        with self.attempt(actor, "acl.revoke", None, detail):
            check_principal_id(actor, "actor")
            check_principal_id(principal)
            now = self._now()
            with self.records.transaction() as c:
                revoker_role = self._role(c, actor)
                current = self._role(c, principal)
                check_revoke(actor, revoker_role, principal, current, self._owners(c))
                if current is None:
                    raise NotFound(f"{principal!r} has no role on cube {self.name!r}")
                self.records.delete_grant(c, principal)
                self.records.append_event(c, now, actor, "acl.revoke", None,
                                          detail={"principal": principal, "previous": current.value})

    def grant_of(self, principal: str) -> Grant | None:
        rows = self.records.grants(principal=principal)
        row = rows[0] if rows else None
        return None if row is None else Grant(principal=row[0], kind=row[1], role=row[2], granted_by=row[3],
                                              granted_at=_dt(row[4]))

    def members(self, *, actor: str | None = None) -> list[Grant]:
        """Who has what on this cube (needs **read**)."""
        self.authorize(actor, Right.READ, "acl.list")
        rows = self.records.grants()
        return [Grant(principal=r[0], kind=r[1], role=r[2], granted_by=r[3], granted_at=_dt(r[4])) for r in rows]

    # ------------------------------------------------------------------ policies
    def settings(self, *, actor: str | None = None) -> GovernanceSettings:
        """The cube's retention, redaction and read-audit policies (needs **read**)."""
        self.authorize(actor, Right.READ, "policy.show")
        return self._policy()

    def configure(self, *, actor: str | None = None, audit_reads: bool | None = None,
                  retention: RetentionPolicy | Mapping[str, Any] | None = None,
                  redaction: RedactionPolicy | Mapping[str, Any] | None = None) -> GovernanceSettings:
        """Change policies (needs **administer**). Only what is given changes; the change is audited.

        * ``retention={"default_ttl": 86400, "action": "delete"}`` (or a :class:`RetentionPolicy`)
        * ``redaction={"email": "mask", "card": "reject"}`` (or a :class:`RedactionPolicy`)
        * ``audit_reads=True`` records every get/search/list/history (who read which ids)
        """
        actor = self.authorize(actor, Right.ADMINISTER, "policy.set")
        updates: dict[str, str] = {}
        with self.attempt(actor, "policy.set"):
            if audit_reads is not None:
                if not isinstance(audit_reads, bool):
                    raise ValidationError("audit_reads must be True or False")
                updates["audit_reads"] = json.dumps(audit_reads)
            if retention is not None:
                updates["retention"] = RetentionPolicy.coerce(dict(retention) if isinstance(retention, Mapping)
                                                              else retention).model_dump_json()
            if redaction is not None:
                pol = RedactionPolicy.coerce(dict(redaction) if isinstance(redaction, Mapping) else redaction)
                from .redaction import detectors

                unknown = sorted(set(pol.rules) - set(detectors()))
                if unknown:
                    raise ValidationError(f"unknown detector(s) {unknown}; registered: {detectors()} "
                                          "(register custom ones with register_detector first)")
                updates["redaction"] = pol.model_dump_json()
            if not updates:
                raise ValidationError("configure: nothing to change")
            with self.records.transaction() as c:
                self.records.put_settings(c, updates)
                self.records.append_event(c, self._now(), actor, "policy.set", None,
                                          detail={k: json.loads(v) for k, v in updates.items()})
        return self._policy()

    # ------------------------------------------------------------------ audit log
    def audit_log(self, *, actor: str | None = None, item_id: str | None = None, principal: str | None = None,
                  limit: int | None = None) -> list[dict[str, Any]]:
        """Audit records, oldest first, optionally for one item or one principal (needs **administer**)."""
        self.authorize(actor, Right.ADMINISTER, "audit.read")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit < 2**62):
            raise ValidationError(f"limit must be an integer >= 0 (or None for all), not {str(limit)[:40]!r}")
        events = self.records.events(item_id, None if principal is not None else limit)
        if principal is not None:
            events = [e for e in events if e["actor"] == principal][: limit if limit is not None else None]
        return events

    def verify(self, *, actor: str | None = None, anchor: tuple[int, str] | None = None) -> AuditReport:
        """Verify the audit chain (needs **administer**); ``report.ok`` and ``report.problems`` say where."""
        self.authorize(actor, Right.ADMINISTER, "audit.verify")
        from .audit import Evidence, parse_head

        # the evidence first: a record is committed in the same transaction as what it records
        evidence = Evidence(head=parse_head(self.records.get_meta("audit_head")),
                            items=[(it.id, it.version) for it in self.records.iter_items()])
        rows, counter = self.records.audit_chain()
        return verify_rows(rows, counter, anchor, evidence)

    def head(self, *, actor: str | None = None) -> tuple[int, str] | None:
        """``(seq, hash)`` of the newest audit record: save it elsewhere and pass it back as ``anchor``."""
        self.authorize(actor, Right.ADMINISTER, "audit.head")
        return self.records.audit_head()


def query_digest(query: str) -> str:
    """What a read audit records instead of the query text."""
    return hashlib.sha256(query.encode("utf-8")).hexdigest()[:16]
