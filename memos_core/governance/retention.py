"""Retention: time-to-live per memory, a default per cube, and an expiry sweep.

* ``cube.add(..., ttl=3600)`` or ``expires_at=`` sets a memory's expiry; a cube's
  :class:`RetentionPolicy` ``default_ttl`` applies to every new memory that sets neither.
* Expired memories disappear from search at once (the filter checks ``expires_at`` against the cube's clock).
* A sweep (:meth:`MemCube.expire <memos_core.cube.MemCube.expire>`, :func:`sweep`, or a
  :class:`RetentionSweeper` thread) then applies the policy's ``action``: ``archive`` (cold, kept),
  ``delete`` (tombstone, restorable), ``purge`` (tombstone and content erased) or ``forget`` (erased with
  every version and index entry, as :meth:`MemCube.forget <memos_core.cube.MemCube.forget>`).
* Frozen memories (legal hold) are never swept; the hold also blocks update, delete, purge and forget until
  an admin lifts it.

The cube's clock is injectable (``MemCube(..., clock=...)``), so tests move time instead of sleeping.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from enum import Enum
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, field_validator

from ..log import get_logger
from ..errors import ValidationError

__all__ = ["RetentionAction", "RetentionPolicy", "RetentionSweeper", "sweep"]

log = get_logger(__name__)


class RetentionAction(str, Enum):
    ARCHIVE = "archive"
    DELETE = "delete"
    PURGE = "purge"
    FORGET = "forget"


class RetentionPolicy(BaseModel):
    """A cube's retention settings. ``default_ttl`` is in seconds (``None``: memories do not expire unless
    given a ttl)."""

    model_config = ConfigDict(extra="forbid")

    default_ttl: float | None = None
    action: RetentionAction = RetentionAction.ARCHIVE

    @field_validator("default_ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> float | None:
        if v is None:
            return None
        if isinstance(v, timedelta):
            v = v.total_seconds()
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0) or v == float("inf"):
            raise ValueError("default_ttl must be a positive number of seconds or a timedelta")
        return float(v)

    @classmethod
    def coerce(cls, value: "RetentionPolicy | dict[str, Any] | None") -> "RetentionPolicy":
        from pydantic import ValidationError as PydanticError

        if value is None:
            return cls()
        if isinstance(value, RetentionPolicy):
            return value
        if isinstance(value, dict):
            try:
                return cls.model_validate(value)
            except PydanticError as exc:
                err = exc.errors()[0]
                raise ValidationError(f"bad retention policy: {'.'.join(map(str, err['loc']))}: {err['msg']}; "
                                      f"actions: {[a.value for a in RetentionAction]}") from None
        raise ValidationError(f"a retention policy is a RetentionPolicy or a dict, not {type(value).__name__}")


def sweep(cube: Any, *, actor: str | None = None, action: RetentionAction | str | None = None) -> list[str]:
    """Apply retention to one cube now (what a scheduler calls). Returns the ids that changed."""
    return cube.expire(action=action, actor=actor)


class RetentionSweeper:
    """A background thread that sweeps cubes every ``interval`` seconds.

    ``cubes`` is a list of cubes or a zero-argument callable returning them (so cubes opened later are
    included). Errors are logged and passed to ``on_error`` and never stop the thread. Use as a context
    manager, or call :meth:`start` / :meth:`stop`; :meth:`run_once` sweeps synchronously (tests, cron).
    """

    def __init__(self, cubes: Iterable[Any] | Callable[[], Iterable[Any]], *, interval: float = 3600.0,
                 actor: str | None = None, on_error: Callable[[Any, BaseException], None] | None = None) -> None:
        if not (isinstance(interval, (int, float)) and interval > 0):
            raise ValidationError("interval must be a positive number of seconds")
        self._cubes = cubes
        self.interval = float(interval)
        self.actor = actor
        self.on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.last_result: dict[str, list[str]] = {}

    def _targets(self) -> list[Any]:
        return list(self._cubes() if callable(self._cubes) else self._cubes)

    def run_once(self) -> dict[str, list[str]]:
        """Sweep every cube once; returns ``{cube_id: [changed ids]}``."""
        out: dict[str, list[str]] = {}
        for cube in self._targets():
            try:
                out[cube.cube_id] = sweep(cube, actor=self.actor)
            except Exception as exc:  # noqa: BLE001 - a sweeper must survive one bad cube
                log.warning("retention sweep of %r failed: %s", cube, exc)
                if self.on_error is not None:
                    self.on_error(cube, exc)
        self.runs += 1
        self.last_result = out
        return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)

    def start(self) -> "RetentionSweeper":
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="memos-retention", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "RetentionSweeper":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
