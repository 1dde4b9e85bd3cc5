"""Principals, roles and rights.

A *principal* is whoever an operation runs on behalf of: a person (``kind="user"``) or a program such as an
agent or a service (``kind="service"``). A principal id is a short string chosen by the application
(``"ann"``, ``"agent:planner"``, ``"svc.ingest@prod"``). MemOS does not authenticate: the application (or the
server in front of it) establishes who is calling and passes that principal as ``actor=``. MemOS then checks,
on every operation, that the principal holds the right for it on that cube, and records the attempt.

Roles are granted per cube. Each role carries a fixed set of rights:

=========  =====================================================================================
role       rights
=========  =====================================================================================
owner      read, history, write, share, administer; the only role that may grant or revoke owner
admin      read, history, write, share, administer
writer     read, history, write
reader     read, history
guest      read (current content only: no versions, transitions, tombstones or audit log)
=========  =====================================================================================

* **read**: get, search, list, count, lookup.
* **history**: versions, lifecycle transitions, tombstoned items (``include_deleted``).
* **write**: add, update, delete, restore, rollback, ordinary lifecycle transitions.
* **share**: grant and revoke roles (see :func:`check_grant`).
* **administer**: legal hold, purge, forget, retention and redaction policy, expiry sweeps, reindex,
  reading and verifying the audit log.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict

from ..errors import PermissionDenied, ValidationError

__all__ = ["Right", "Role", "PrincipalKind", "Principal", "Grant", "ROLE_RIGHTS", "ROLE_RANK", "check_principal_id",
           "check_grant", "check_revoke"]


class Right(str, Enum):
    READ = "read"
    HISTORY = "history"
    WRITE = "write"
    SHARE = "share"
    ADMINISTER = "administer"


class Role(str, Enum):
    OWNER = "owner"
    ADMIN = "admin"
    WRITER = "writer"
    READER = "reader"
    GUEST = "guest"


class PrincipalKind(str, Enum):
    USER = "user"
    SERVICE = "service"


_R = Right
ROLE_RIGHTS: dict[Role, frozenset[Right]] = {
    Role.OWNER: frozenset(_R),
    Role.ADMIN: frozenset(_R),
    Role.WRITER: frozenset({_R.READ, _R.HISTORY, _R.WRITE}),
    Role.READER: frozenset({_R.READ, _R.HISTORY}),
    Role.GUEST: frozenset({_R.READ}),
}
ROLE_RANK: dict[Role, int] = {Role.GUEST: 1, Role.READER: 2, Role.WRITER: 3, Role.ADMIN: 4, Role.OWNER: 5}

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:+\-]{0,127}")


def check_principal_id(pid: object, what: str = "principal") -> str:
    """Return ``pid`` if it is a well-formed principal id, else raise :class:`ValidationError`.

    Accepted: 1-128 characters, letters, digits and ``_ . @ : + -``, starting with a letter or digit.
    """
    if not isinstance(pid, str) or not _ID.fullmatch(pid):
        shown = repr(pid)[:60] if isinstance(pid, str) else type(pid).__name__
        raise ValidationError(
            f"{what} id {shown} is not valid: use 1-128 letters, digits or '_.@:+-', starting with a letter or digit"
        )
    return pid


def coerce_role(role: object) -> Role:
    try:
        return Role(role.value if isinstance(role, Enum) else role)
    except ValueError:
        raise ValidationError(f"unknown role {role!r}; one of {[r.value for r in Role]}") from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Principal(_Model):
    """A principal known to a cube."""

    id: str
    kind: PrincipalKind = PrincipalKind.USER
    created_at: datetime
    created_by: str | None = None


class Grant(_Model):
    """One principal's role on one cube."""

    principal: str
    kind: PrincipalKind
    role: Role
    granted_by: str | None
    granted_at: datetime

    @property
    def rights(self) -> frozenset[Right]:
        return ROLE_RIGHTS[self.role]


def check_grant(granter: str, granter_role: Role | None, target: str, current: Role | None, new: Role) -> None:
    """Raise :class:`PermissionDenied` unless ``granter`` may set ``target``'s role to ``new``.

    * Only owners and admins share (the **share** right).
    * Nobody grants a role above their own; only owners grant ``owner``.
    * Changing an existing grant needs a role above the target's current one (owners may change anything,
      including other owners, as long as one owner remains).
    * Nobody changes their own role (no self-promotion; leave with revoke).
    """
    if granter_role is None or Right.SHARE not in ROLE_RIGHTS[granter_role]:
        raise PermissionDenied(
            f"{granter!r} may not share this cube (role: {granter_role.value if granter_role else 'none'}); "
            "only owners and admins share"
        )
    if target == granter:
        raise PermissionDenied(f"{granter!r} may not change their own role; ask another owner or admin")
    if new == Role.OWNER and granter_role != Role.OWNER:
        raise PermissionDenied(f"only an owner may grant the owner role ({granter!r} is {granter_role.value})")
    if ROLE_RANK[new] > ROLE_RANK[granter_role]:
        raise PermissionDenied(f"{granter!r} ({granter_role.value}) may not grant a higher role ({new.value})")
    if current is not None and granter_role != Role.OWNER and ROLE_RANK[current] >= ROLE_RANK[granter_role]:
        raise PermissionDenied(
            f"{granter!r} ({granter_role.value}) may not change the role of {target!r} ({current.value})"
        )


def check_revoke(revoker: str, revoker_role: Role | None, target: str, current: Role | None,
                 owners: int) -> None:
    """Raise :class:`PermissionDenied` unless ``revoker`` may remove ``target``'s grant.

    Anyone may leave (revoke themselves), except the last owner. Otherwise the same rules as
    :func:`check_grant`: the share right and a role above the target's (owners may revoke owners).
    """
    if revoker_role is None:
        raise PermissionDenied(f"{revoker!r} has no role on this cube")
    if target != revoker:
        if Right.SHARE not in ROLE_RIGHTS[revoker_role]:
            raise PermissionDenied(
                f"{revoker!r} may not revoke access (role: {revoker_role.value}); only owners and admins share"
            )
        if current is not None and revoker_role != Role.OWNER and ROLE_RANK[current] >= ROLE_RANK[revoker_role]:
            raise PermissionDenied(f"{revoker!r} ({revoker_role.value}) may not revoke {target!r} ({current.value})")
    if current == Role.OWNER and owners <= 1:
        raise PermissionDenied(
            f"{target!r} is the last owner of this cube and cannot be removed; grant owner to someone else first"
        )
