"""Where a cube lives, checked before anything is created: a folder path or a ``postgresql://`` store URL.

``MemCube(path)`` and ``MemOS(path)`` take a folder path (``str`` or ``os.PathLike``) or a store URL
(``postgresql://user@host/db?cube=NAME``, :func:`memos_core.records.migrate.is_store_url`). Two mistakes used to
pass silently or fail with a bare ``TypeError`` from ``pathlib``:

* a value of the wrong type (``None``, a number, ``bytes``) or an empty string (``Path("")`` is the current
  folder): :class:`PlaceTypeError`, a :class:`~memos_core.errors.ValidationError` and a ``TypeError``;
* a URL that is not a store URL (``"postgresq://..."``, ``"postgresql:/host/db"``, ``"http://chroma:8000"``,
  ``"sqlite:///x"``): a plain string, so it became a local folder named after the URL (``postgresql:/host/db``)
  and the application ran on an empty local cube. Now a :class:`~memos_core.errors.ValidationError` says what
  is accepted. A folder whose name really starts with ``word:/`` can be given as ``./word:/...``.

A one-letter scheme (``C:/data``, ``C:\\data``) is a Windows drive, not a URL, and passes.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import ValidationError

__all__ = ["PlaceTypeError", "check_place"]

STORE_URL_EXAMPLE = "postgresql://user@host/db?cube=NAME"

# a scheme of two or more characters followed by ':/' or ':\' at the very start of the string
_URL_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):[/\\]")


class PlaceTypeError(ValidationError, TypeError):
    """A cube's place (folder path or store URL) of the wrong Python type, or empty."""


def check_place(path: Any, what: str = "MemCube") -> None:
    """Refuse, before anything is opened or created, a ``path`` that is neither a folder path nor a store URL.

    Raises :class:`PlaceTypeError` for a wrong type or an empty path and
    :class:`~memos_core.errors.ValidationError` for a string that looks like a URL but is not a store URL."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise PlaceTypeError(
            f"{what} takes a folder path (str or pathlib.Path) or a store URL '{STORE_URL_EXAMPLE}'; "
            f"got {type(path).__name__}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise PlaceTypeError(f"{what} takes a folder path as str or pathlib.Path, not a bytes path; "
                             "decode it first")
    if not text.strip():
        raise PlaceTypeError(f"{what} was given an empty path; name a folder (e.g. './memos_data') or a store "
                             f"URL '{STORE_URL_EXAMPLE}'")
    if isinstance(path, str) and not text.startswith(("postgresql://", "postgres://")):
        m = _URL_LIKE.match(text)
        if m is not None:
            scheme = m.group(1).lower()
            if scheme in ("postgresql", "postgres"):
                hint = f"a store URL starts with '{scheme}://' (two slashes): '{STORE_URL_EXAMPLE}'"
            elif scheme in ("http", "https"):
                hint = ("a Chroma server is the vector index, not the place of the records: give it as index= "
                        "(MemCube(path, index='http://host:port'), MemOS(url, index=...)), with a folder path or "
                        f"a store URL '{STORE_URL_EXAMPLE}' as path")
            else:
                hint = (f"the only URLs accepted are PostgreSQL store URLs '{STORE_URL_EXAMPLE}'; "
                        "for SQLite (the default) give the folder path")
            raise ValidationError(
                f"{what}: {text!r} looks like a URL ({scheme}:) but is not a store URL; {hint}. "
                f"A folder whose name starts with '{scheme}:' can be given as './{text}'")
