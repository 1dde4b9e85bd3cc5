"""Governance: principals and roles, per-cube access control and sharing, the tamper-evident audit log,
retention (TTL, expiry sweeps, legal hold) and redaction policies: access policy + audit over a cube's record
store. It holds no cube and imports nothing from ``cube.py``; the operations it governs (writes, legal hold,
forget and its erasure in :mod:`memos_core.erasure`) are the cube's.

Every :class:`~memos_core.cube.MemCube` operation runs on behalf of a principal (``actor=``, default: the
cube's default actor, ``"local"``, which owns a cube it creates) and is checked against the cube's ACL
before anything else happens. See :mod:`.roles` for the roles and rights, :mod:`.audit` for the chain,
:mod:`.retention` and :mod:`.redaction` for the policies.
"""

from .access import readable_cubes, search_cubes
from .audit import AuditProblem, AuditReport, verify_file
from .core import PRINCIPAL_KEYS, Governance, GovernanceSettings
from .redaction import (
    RedactionAction,
    RedactionPolicy,
    RedactionRejected,
    detect,
    detectors,
    redact_text,
    register_detector,
)
from .retention import RetentionAction, RetentionPolicy, RetentionSweeper, sweep
from .roles import ROLE_RIGHTS, Grant, Principal, PrincipalKind, Right, Role

__all__ = [
    "Governance",
    "GovernanceSettings",
    "Grant",
    "Principal",
    "PrincipalKind",
    "Right",
    "Role",
    "ROLE_RIGHTS",
    "PRINCIPAL_KEYS",
    "AuditProblem",
    "AuditReport",
    "verify_file",
    "RedactionAction",
    "RedactionPolicy",
    "RedactionRejected",
    "register_detector",
    "detectors",
    "detect",
    "redact_text",
    "RetentionAction",
    "RetentionPolicy",
    "RetentionSweeper",
    "sweep",
    "readable_cubes",
    "search_cubes",
]
