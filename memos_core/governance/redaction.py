"""Redaction of personal data on write.

A cube's redaction policy maps *detectors* to *actions*. On every add and update, the content, the index
text and every string value in the metadata are scanned by the detectors the policy names; each finding is
then handled by its action:

``allow``   keep the value as written (the detector runs, nothing changes)
``mask``    replace it by ``[REDACTED:<kind>]``
``hash``    replace it by ``[HASHED:<kind>:<16 hex>]``: a keyed hash (HMAC-SHA256, key kept in the cube) of
            the normalised value, so equal values give equal tokens (joins and dedup still work) while the
            value itself cannot be read back. The key lives in the cube's records: whoever can read the file
            can test guesses, so treat ``hash`` as pseudonymisation, not anonymisation.
``reject``  refuse the write with :class:`~memos_core.errors.ValidationError` (nothing is stored)

What was redacted is recorded in the item's ``provenance.redactions`` as ``"<field>:<kind>:<action>"`` (e.g.
``"content:email:mask"``), never the value. The raw value never reaches the embedder, the vector index, the
lexical index or the version history, because redaction happens before any of them sees the text.

Built-in detectors: ``email``, ``phone``, ``card`` (payment card numbers, Luhn-checked), ``iban`` (mod-97
checked) and ``ip`` (IPv4 and IPv6). Add your own with :func:`register_detector`; a policy that names a
detector not registered in this process refuses writes (fail closed) until it is registered.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from enum import Enum
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ValidationError

__all__ = [
    "RedactionAction",
    "RedactionPolicy",
    "RedactionRejected",
    "Finding",
    "register_detector",
    "detectors",
    "detect",
    "redact_text",
    "luhn_ok",
    "iban_ok",
]

DetectorFn = Callable[[str], Iterable[tuple[int, int]]]


class RedactionAction(str, Enum):
    ALLOW = "allow"
    MASK = "mask"
    HASH = "hash"
    REJECT = "reject"


class RedactionRejected(ValidationError):
    """The write contains personal data that the cube's redaction policy rejects."""

    def __init__(self, message: str, kinds: list[str]) -> None:
        super().__init__(message)
        self.kinds = kinds


# ---------------------------------------------------------------------------------------------- detectors
_EMAIL = re.compile(r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.)+[A-Za-z]{2,24}"
                    r"(?![\w-])")
_PHONE = re.compile(r"(?<![\w+@/.:,-])(?:\+|00)?[ \t]?(?:\(\d{1,5}\)[ \t]?)?\d[\d \t().-]{5,22}\d(?![\w@]|[.,]\d)")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w]|-\d)")
_IBAN = re.compile(r"(?<![\w])[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){11,32}", re.ASCII)
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})(?![\w:]|\.\d)")
_DATEISH = re.compile(r"\d{4}[-./ ]\d{1,2}[-./ ]\d{1,2}|\d{1,2}[-./ ]\d{1,2}[-./ ]\d{2,4}"
                      r"|(?:19|20)\d\d ?[-–] ?(?:19|20)?\d\d")
_DATE_IN_TEXT = re.compile(r"(?<!\d)(?:" + _DATEISH.pattern + r")(?!\d)")
_TOKEN = re.compile(r"\[(?:REDACTED:[a-z0-9_]+|HASHED:[a-z0-9_]+:[0-9a-f]{16})\]")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits (payment cards)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 check: country letters, two check digits, 11-30 alphanumerics, mod 97 == 1."""
    s = iban.replace(" ", "").upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit() or not s.isalnum():
        return False
    moved = s[4:] + s[:4]
    num = "".join(str(int(ch, 36)) for ch in moved)
    return int(num) % 97 == 1


def _emails(text: str) -> Iterable[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _phones(text: str) -> Iterable[tuple[int, int]]:
    dates = [m.span() for m in _DATE_IN_TEXT.finditer(text)]
    for m in _PHONE.finditer(text):
        raw = m.group()
        s, e = m.span()
        # trim separators the class swallowed at the edges
        while raw and raw[-1] in " \t(.-":
            raw = raw[:-1]
            e -= 1
        digits = re.sub(r"\D", "", raw)
        intl = raw.lstrip().startswith(("+", "00")) or "(" in raw
        if not (7 <= len(digits) <= 15):
            continue
        if raw.count("(") != raw.count(")"):
            continue
        seps = re.sub(r"[\d+]", "", raw).strip()
        if not intl:
            if any(ds < e and s < de for ds, de in dates):
                continue  # dates and year ranges are not phone numbers
            if not seps and len(digits) < 10:
                continue  # a bare number such as 1500000 is more likely a quantity
            if _DATEISH.fullmatch(raw.strip()) or re.fullmatch(r"\d+\.\d+", raw.strip()):
                continue
            if _IPV4.fullmatch(raw.strip()):
                continue
        yield s, e


def _cards(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and digits.strip("0") and luhn_ok(digits):
            yield m.span()


def _ibans(text: str) -> Iterable[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        cand = m.group()
        s = m.start()
        # the pattern may run into following words ("... 3000 and"): try shorter prefixes, longest first
        for end in range(len(cand), 14, -1):
            piece = cand[:end]
            if piece.endswith(" "):
                continue
            if end < len(cand) and cand[end].isalnum() and cand[end - 1].isalnum():
                continue  # do not cut inside a group
            if iban_ok(piece):
                yield s, s + end
                break


def _ips(text: str) -> Iterable[tuple[int, int]]:
    for m in _IPV4.finditer(text):
        yield m.span()
    for m in _IPV6.finditer(text):
        cand = m.group()
        if sum(c in "0123456789abcdefABCDEF" for c in cand) < 2:
            continue
        try:
            ipaddress.IPv6Address(cand)
        except ValueError:
            continue
        yield m.span()


_REGISTRY: dict[str, DetectorFn] = {"email": _emails, "iban": _ibans, "card": _cards, "ip": _ips, "phone": _phones}
BUILTIN_DETECTORS = ("email", "phone", "card", "iban", "ip")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def register_detector(name: str, fn: DetectorFn, *, replace: bool = False) -> None:
    """Register a detector: ``fn(text)`` yields ``(start, end)`` character spans of what it finds.

    ``name`` (lowercase letters, digits, ``_``) is what policies refer to. Registration is per process: a
    cube whose policy names a detector refuses writes until the detector is registered again.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(f"detector name {name!r}: use 1-32 lowercase letters, digits or '_'")
    if not callable(fn):
        raise ValidationError("a detector must be a callable text -> iterable of (start, end) spans")
    if name in _REGISTRY and not replace:
        raise ValidationError(f"a detector named {name!r} is already registered; pass replace=True")
    _REGISTRY[name] = fn


def detectors() -> list[str]:
    """Names of the detectors registered in this process."""
    return sorted(_REGISTRY)


class Finding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    start: int
    end: int


def detect(text: str, kinds: Iterable[str] | None = None) -> list[Finding]:
    """Non-overlapping findings in ``text`` (longest span wins; ties go to the earlier detector)."""
    names = list(kinds) if kinds is not None else list(_REGISTRY)
    order = {n: i for i, n in enumerate(names)}
    protected = [m.span() for m in _TOKEN.finditer(text)]
    cands: list[tuple[int, int, str]] = []
    for name in names:
        fn = _REGISTRY.get(name)
        if fn is None:
            raise ValidationError(
                f"the redaction policy names detector {name!r}, which is not registered in this process; call "
                "memos_core.governance.register_detector() before writing to this cube"
            )
        for s, e in fn(text):
            if not (isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= len(text)):
                raise ValidationError(f"detector {name!r} returned an invalid span ({s!r}, {e!r})")
            if any(s < pe and ps < e for ps, pe in protected):
                continue
            cands.append((s, e, name))
    cands.sort(key=lambda c: (-(c[1] - c[0]), order.get(c[2], 99), c[0]))
    taken: list[tuple[int, int, str]] = []
    for s, e, name in cands:
        if all(e <= ts or s >= te for ts, te, _ in taken):
            taken.append((s, e, name))
    taken.sort()
    return [Finding(kind=n, start=s, end=e) for s, e, n in taken]


def _normalise(kind: str, value: str) -> str:
    if kind in ("phone", "card"):
        digits = re.sub(r"\D", "", value)
        return ("+" if kind == "phone" and value.lstrip().startswith("+") else "") + digits
    if kind in ("iban",):
        return value.replace(" ", "").upper()
    if kind == "ip":
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value
    return value.strip().lower() if kind == "email" else value


class RedactionPolicy(BaseModel):
    """Which detectors run on write and what happens to what they find.

    ``rules`` maps a detector name to an action, e.g. ``{"email": "mask", "card": "reject"}``. Detectors not
    named do not run. An empty policy (the default for a new cube) changes nothing.
    """

    model_config = ConfigDict(extra="forbid")

    rules: dict[str, RedactionAction] = Field(default_factory=dict)

    @field_validator("rules")
    @classmethod
    def _names(cls, v: dict[str, RedactionAction]) -> dict[str, RedactionAction]:
        for name in v:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ValueError(f"detector name {name!r}: use lowercase letters, digits or '_'")
        return v

    @classmethod
    def all(cls, action: RedactionAction | str = RedactionAction.MASK) -> "RedactionPolicy":
        """Every built-in detector with one action (``RedactionPolicy.all("mask")``)."""
        return cls(rules={n: RedactionAction(action) for n in BUILTIN_DETECTORS})

    @classmethod
    def coerce(cls, value: "RedactionPolicy | dict[str, Any] | None") -> "RedactionPolicy":
        from pydantic import ValidationError as PydanticError

        if value is None:
            return cls()
        if isinstance(value, RedactionPolicy):
            return value
        if isinstance(value, dict):
            data = value if "rules" in value else {"rules": value}
            try:
                return cls.model_validate(data)
            except PydanticError as exc:
                err = exc.errors()[0]
                raise ValidationError(f"bad redaction policy: {'.'.join(map(str, err['loc']))}: {err['msg']}; "
                                      f"actions: {[a.value for a in RedactionAction]}") from None
        raise ValidationError(f"a redaction policy is a RedactionPolicy or a dict, not {type(value).__name__}")

    @property
    def active(self) -> bool:
        return any(a != RedactionAction.ALLOW for a in self.rules.values())


def redact_text(text: str, policy: RedactionPolicy, key: bytes, field: str = "content") -> tuple[str, list[str]]:
    """Apply ``policy`` to ``text``. Returns the new text and the ``"<field>:<kind>:<action>"`` records.

    Raises :class:`RedactionRejected` (a ``ValidationError``) when a ``reject`` rule matches; its message
    names the kinds and the field, never the value.
    """
    if not policy.rules or not text:
        return text, []
    findings = detect(text, [n for n, a in policy.rules.items() if a != RedactionAction.ALLOW])
    if not findings:
        return text, []
    rejected = sorted({f.kind for f in findings if policy.rules[f.kind] == RedactionAction.REJECT})
    if rejected:
        raise RedactionRejected(
            f"{field} contains personal data of kind {', '.join(rejected)}, which this cube's redaction policy "
            "rejects; remove it (or ask an admin to change the policy to mask or hash)", rejected)
    out: list[str] = []
    pos = 0
    done: set[str] = set()
    for f in findings:
        action = policy.rules[f.kind]
        out.append(text[pos:f.start])
        value = text[f.start:f.end]
        if action == RedactionAction.MASK:
            out.append(f"[REDACTED:{f.kind}]")
        else:
            digest = hmac.new(key, f"{f.kind}:{_normalise(f.kind, value)}".encode("utf-8"), hashlib.sha256)
            out.append(f"[HASHED:{f.kind}:{digest.hexdigest()[:16]}]")
        pos = f.end
        done.add(f"{field}:{f.kind}:{action.value}")
    out.append(text[pos:])
    return "".join(out), sorted(done)


def redact_value(value: Any, policy: RedactionPolicy, key: bytes, field: str) -> tuple[Any, list[str]]:
    """Redact every string inside a JSON-like value (dict keys are left alone)."""
    if isinstance(value, str):
        return redact_text(value, policy, key, field)
    if isinstance(value, dict):
        notes: list[str] = []
        out: dict[str, Any] = {}
        for k, v in value.items():
            out[k], n = redact_value(v, policy, key, f"{field}.{k}")
            notes += n
        return out, notes
    if isinstance(value, list):
        notes = []
        items = []
        for v in value:
            nv, n = redact_value(v, policy, key, field)
            items.append(nv)
            notes += n
        return items, notes
    return value, []
