"""``memos`` subcommands for governance (registered by :mod:`memos_core.cli`).

    memos [--as P] share DIR PRINCIPAL ROLE [--kind user|service]   grant a role (owner/admin/writer/reader/guest)
    memos [--as P] revoke DIR PRINCIPAL                              remove a role
    memos [--as P] access DIR [--json]                               who has what
    memos [--as P] policy DIR [--ttl S|none] [--expiry-action A] [--redact KIND=ACTION ...] [--audit-reads on|off]
    memos [--as P] sweep DIR [--action A]                            apply retention now
    memos [--as P] hold DIR ID [--reason R] / release DIR ID         legal hold
    memos [--as P] forget DIR ID [--reason R] [--no-cascade]         erase a memory and what derives from it
    memos [--as P] compact DIR                                       run a pending vector-index compaction
    memos audit verify DIR [--anchor SEQ:HASH] [--json]              check the hash chain (exit 1 if tampered)
    memos audit head DIR                                             print SEQ:HASH to keep elsewhere
    memos [--as P] audit log DIR [--item ID] [--principal P] [--limit N] [--json]

``audit verify`` and ``audit head`` read the records file directly (read-only): whoever can read the file can
check it, and a damaged cube can still be inspected.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

__all__ = ["add_commands"]

OpenCube = Callable[[str], Any]


def _count(text: str) -> int:
    """argparse type of ``--limit``: a whole number >= 0 (argparse reports anything else, exit status 2)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative; give 0 or more")
    return n


def _dump(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def add_commands(sub: Any, open_cube: OpenCube) -> None:
    """Register the governance subcommands on an ``argparse`` subparsers object."""

    def share(a: argparse.Namespace) -> None:
        with open_cube(a.dir) as cube:
            g = cube.share(a.principal, a.role, kind=a.kind)
            print(f"{g.principal} ({g.kind.value}) is now {g.role.value} on {cube.name}")

    def revoke(a: argparse.Namespace) -> None:
        with open_cube(a.dir) as cube:
            cube.revoke(a.principal)
            print(f"{a.principal} has no role on {cube.name} any more")

    def access(a: argparse.Namespace) -> None:
        with open_cube(a.dir) as cube:
            grants = cube.governance.members()
            if a.json:
                _dump([g.model_dump(mode="json") for g in grants])
                return
            for g in grants:
                print(f"{g.principal:<24} {g.role.value:<7} {g.kind.value:<8} granted by {g.granted_by or '-'} "
                      f"at {g.granted_at:%Y-%m-%d %H:%M:%S}")

    def policy(a: argparse.Namespace) -> None:
        from ..errors import ValidationError

        with open_cube(a.dir) as cube:
            kw: dict[str, Any] = {}
            if a.ttl is not None or a.expiry_action is not None:
                cur = cube.governance.settings().retention
                ret = cur.model_dump(mode="json")
                if a.ttl is not None:
                    try:
                        ret["default_ttl"] = None if a.ttl.lower() in ("none", "off", "0") else float(a.ttl)
                    except ValueError:
                        raise ValidationError(f"--ttl {a.ttl!r}: give seconds (e.g. 86400) or 'none'") from None
                if a.expiry_action is not None:
                    ret["action"] = a.expiry_action
                kw["retention"] = ret
            if a.redact:
                rules = dict(cube.governance.settings().redaction.rules)
                for spec in a.redact:
                    kind, sep, action = spec.partition("=")
                    if not sep:
                        raise ValidationError(f"--redact {spec!r}: use KIND=ACTION, e.g. email=mask")
                    rules[kind.strip()] = action.strip()
                kw["redaction"] = {"rules": rules}
            if a.audit_reads is not None:
                kw["audit_reads"] = a.audit_reads == "on"
            settings = cube.governance.configure(**kw) if kw else cube.governance.settings()
            _dump(settings.model_dump(mode="json"))

    def sweep(a: argparse.Namespace) -> None:
        with open_cube(a.dir) as cube:
            ids = cube.expire(action=a.action)
            print(f"{len(ids)} expired memories handled")
            for i in ids:
                print(i)

    def hold(a: argparse.Namespace) -> None:
        with open_cube(a.dir) as cube:
            item = cube.legal_hold(a.id, reason=a.reason)
            print(f"{item.id} is {item.state.value}")

    def release(a: argparse.Namespace) -> None:
        with open_cube(a.dir) as cube:
            item = cube.lift_hold(a.id, reason=a.reason)
            print(f"{item.id} is {item.state.value}")

    def forget(a: argparse.Namespace) -> None:
        with open_cube(a.dir) as cube:
            ids = cube.forget(a.id, reason=a.reason, cascade=not a.no_cascade)
            print(f"forgot {len(ids)} memories: {' '.join(ids)}")
            left = cube.vector_compaction_pending()
            if left:
                print(f"the vectors of {left} erased memories wait for `memos compact {a.dir}` (text is gone)")

    def compact(a: argparse.Namespace) -> None:
        with open_cube(a.dir) as cube:
            got = cube.compact_index()
            print(f"vector index compacted: {got['indexed']} vectors kept, {got['erased_ids']} erased memories' "
                  "vectors removed from its files")

    def audit_verify(a: argparse.Namespace) -> int:
        from .audit import parse_anchor, verify_file

        rep = verify_file(a.dir, parse_anchor(a.anchor))
        if a.json:
            print(rep.model_dump_json(indent=2))
        else:
            print(rep.summary())
        return 0 if rep.ok else 1

    def audit_head(a: argparse.Namespace) -> int:
        from .audit import verify_file

        rep = verify_file(a.dir)
        if rep.head_seq is None:
            print("(empty log)")
        else:
            print(f"{rep.head_seq}:{rep.head_hash}")
        return 0 if rep.ok else 1

    def audit_log(a: argparse.Namespace) -> None:
        with open_cube(a.dir) as cube:
            events = cube.governance.audit_log(item_id=a.item, principal=a.principal, limit=a.limit)
            if a.json:
                _dump(events)
                return
            for e in events:
                print(f"{e['seq']:>6} {e['at']:%Y-%m-%d %H:%M:%S} {e['actor'] or '-':<16} {e['op']:<14} "
                      f"{e['outcome']:<9} {e['item_id'] or '-':<32} {json.dumps(e['detail'], ensure_ascii=False)}")

    s = sub.add_parser("share", help="grant a principal a role on a cube")
    s.add_argument("dir")
    s.add_argument("principal")
    s.add_argument("role", choices=["owner", "admin", "writer", "reader", "guest"])
    s.add_argument("--kind", choices=["user", "service"])
    s.set_defaults(fn=share)

    s = sub.add_parser("revoke", help="remove a principal's role")
    s.add_argument("dir")
    s.add_argument("principal")
    s.set_defaults(fn=revoke)

    s = sub.add_parser("access", help="who has which role on a cube")
    s.add_argument("dir")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=access)

    s = sub.add_parser("policy", help="show or set retention, redaction and read-audit policies")
    s.add_argument("dir")
    s.add_argument("--ttl", help="default time-to-live of new memories in seconds ('none' to clear)")
    s.add_argument("--expiry-action", choices=["archive", "delete", "purge", "forget"])
    s.add_argument("--redact", action="append", metavar="KIND=ACTION",
                   help="e.g. email=mask, card=reject, phone=hash, ip=allow (repeatable)")
    s.add_argument("--audit-reads", choices=["on", "off"])
    s.set_defaults(fn=policy)

    s = sub.add_parser("sweep", help="apply retention to expired memories now")
    s.add_argument("dir")
    s.add_argument("--action", choices=["archive", "delete", "purge", "forget"])
    s.set_defaults(fn=sweep)

    s = sub.add_parser("hold", help="put a memory under legal hold (frozen)")
    s.add_argument("dir")
    s.add_argument("id")
    s.add_argument("--reason")
    s.set_defaults(fn=hold)

    s = sub.add_parser("release", help="lift a legal hold")
    s.add_argument("dir")
    s.add_argument("id")
    s.add_argument("--reason")
    s.set_defaults(fn=release)

    s = sub.add_parser("forget", help="erase a memory, its versions, index entries and derived memories")
    s.add_argument("dir")
    s.add_argument("id")
    s.add_argument("--reason")
    s.add_argument("--no-cascade", action="store_true", help="keep memories derived from it")
    s.set_defaults(fn=forget)

    s = sub.add_parser("compact", help="rebuild the vector index so no erased memory's vector stays in its files")
    s.add_argument("dir")
    s.set_defaults(fn=compact)

    s = sub.add_parser("audit", help="the tamper-evident audit log")
    asub = s.add_subparsers(dest="audit", required=True)
    v = asub.add_parser("verify", help="verify the hash chain; exit status 1 when it was tampered with")
    v.add_argument("dir")
    v.add_argument("--anchor", help="SEQ:HASH printed earlier by `memos audit head`")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=audit_verify)
    h = asub.add_parser("head", help="print SEQ:HASH of the newest record (keep it somewhere else)")
    h.add_argument("dir")
    h.set_defaults(fn=audit_head)
    lg = asub.add_parser("log", help="show audit records (needs administer)")
    lg.add_argument("dir")
    lg.add_argument("--item")
    lg.add_argument("--principal")
    lg.add_argument("--limit", type=_count, help="at most N records (N >= 0)")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(fn=audit_log)
