"""How a journal entry holds a record: its JSON encoding, and the seal that lets it be trusted.

An entry another process appended carries a seal (:class:`RecordSeal`, keyed from
``hot_tier_secret``): one whose seal checks is rebuilt without validation; one without a
seal (an older release's), under another secret, tampered or cut is validated in full.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from kuya_store.keys import KEY_VERSION
from kuya_store.models import SearchType
from kuya_store.persistence import FetchRecord, SearchRecord
from kuya_store.settings import StoreSettings
from kuya_store.stored import (
    NotRebuiltError,
    ValueSeal,
    aware_moment,
    rebuilt_result,
    rebuilt_snapshot,
)

__all__ = ["Record", "RecordSeal", "decode_record", "encode_record"]

Record = SearchRecord | FetchRecord
_SEARCH = TypeAdapter(SearchRecord)
_FETCH = TypeAdapter(FetchRecord)
_SEARCH_LOCAL = {"trace"}
_FETCH_LOCAL: dict[str, Any] = {"search": _SEARCH_LOCAL}


def encode_record(record: Record) -> bytes:
    """JSON bytes of a record (money as strings, moments as ISO 8601); never pickle."""
    # Serialised in pydantic's core (several times faster than dumping to Python objects
    # and then to JSON): a batch is encoded while the searches in it wait.
    # A record's trace is this process's span context: it has no JSON form, and another
    # process could not parent anything under it.
    if isinstance(record, FetchRecord):
        kind, body = b"fetch", _FETCH.dump_json(record, exclude=_FETCH_LOCAL)
    else:
        kind, body = b"search", _SEARCH.dump_json(record, exclude=_SEARCH_LOCAL)
    return b'{"v":%d,"kind":"%s","record":%s}' % (KEY_VERSION, kind, body)


def decode_record(raw: bytes | str) -> Record | None:
    """The record of an entry, or ``None`` when it does not parse or validate."""
    try:
        envelope = json.loads(raw)
        if not isinstance(envelope, dict) or envelope.get("v") != KEY_VERSION:
            return None
        kind, body = envelope.get("kind"), envelope.get("record")
        record: Record
        if kind == "fetch":
            record = _FETCH.validate_python(body)
        elif kind == "search":
            record = _SEARCH.validate_python(body)
        else:
            return None
    except (ValueError, TypeError, ValidationError, UnicodeDecodeError):
        return None
    return record


# -- sealed entries ---------------------------------------------------------------------

# The envelope's head as encode_record writes it names the kind before anything is parsed:
# the tag is checked only on an entry of a layout this release writes.
_HEADS = {
    kind: b'{"v":%d,"kind":"%s","record":' % (KEY_VERSION, kind.encode())
    for kind in ("fetch", "search")
}
_ENVELOPE_MEMBERS = frozenset({"v", "kind", "record", "mac"})
_SEARCH_MEMBERS = frozenset(f.name for f in dataclasses.fields(SearchRecord)) - _SEARCH_LOCAL
_SEARCH_SLOTS = tuple(
    (f.name, getattr(SearchRecord, f.name).__set__) for f in dataclasses.fields(SearchRecord)
)
_new = object.__new__
_FETCH_MEMBERS = frozenset(f.name for f in dataclasses.fields(FetchRecord))
# What a sealed entry that does not rebuild may raise: it is validated instead.
_NOT_REBUILT = (KeyError, TypeError, ValueError, AttributeError, ArithmeticError)


@functools.cache
def _layout() -> bytes:
    """What the journal's seal key is bound to: a label of its own, the version, the schemas.

    The label keeps the key apart from the hot tier's (derived from the same secret), so a
    value sealed for one never checks as the other.
    """
    schema = json.dumps(
        {"fetch": _FETCH.json_schema(), "search": _SEARCH.json_schema()}, sort_keys=True
    )
    return f"kuya-store journal entry {KEY_VERSION}\x00{schema}".encode()


def _trusted_search(fields: Any) -> SearchRecord:
    if type(fields) is not dict or fields.keys() != _SEARCH_MEMBERS:
        raise NotRebuiltError("search members")
    fields["search_type"] = SearchType(fields["search_type"])
    fields["created_at"] = aware_moment(fields["created_at"])
    fields["trace"] = None  # never written: it is the appending process's own
    # Set slot by slot: the frozen dataclass's __init__ costs as much as validating it.
    record = _new(SearchRecord)
    for name, put in _SEARCH_SLOTS:
        put(record, fields[name])
    return record


def _trusted_fetch(fields: Any) -> FetchRecord:
    if type(fields) is not dict or fields.keys() != _FETCH_MEMBERS:
        raise NotRebuiltError("fetch members")
    return FetchRecord(
        search=_trusted_search(fields["search"]),
        result=rebuilt_result(fields["result"]),
        listing_ttl=aware_moment(fields["listing_ttl"]),
        snapshot=rebuilt_snapshot(fields["snapshot"]),
    )


def _trusted(kind: str, envelope: Any) -> Record:
    """A sealed entry's record, built as validation builds it, without its checks."""
    if (
        type(envelope) is not dict
        or envelope.keys() != _ENVELOPE_MEMBERS
        or envelope["v"] != KEY_VERSION
        or envelope["kind"] != kind
    ):
        raise NotRebuiltError("envelope members")
    body = envelope["record"]
    return _trusted_fetch(body) if kind == "fetch" else _trusted_search(body)


class RecordSeal:
    """Seals the entries a store appends, and rebuilds sealed ones read back unvalidated.

    The tag (:class:`~kuya_store.stored.ValueSeal`) covers the whole entry and is bound
    to the stream and the record's kind, under a key derived from the secret and the
    journal's own :func:`_layout`. Only a holder of the secret makes a tag that checks,
    and it seals only what :func:`encode_record` wrote from a validated record.
    """

    def __init__(self, secret: bytes | None, stream: str) -> None:
        self._seal = (
            ValueSeal(secret, _layout()) if secret is not None else ValueSeal.ephemeral(_layout())
        )
        self._names = {kind: f"{kind}\x00{stream}" for kind in _HEADS}

    @classmethod
    def of(cls, settings: StoreSettings, stream: str) -> RecordSeal:
        """Keyed from ``hot_tier_secret``; without one, this process trusts only itself."""
        secret = settings.hot_tier_secret
        return cls(secret.get_secret_value().encode() if secret is not None else None, stream)

    def seal(self, record: Record) -> bytes:
        """The entry of ``record``: :func:`encode_record`'s JSON with its tag, last."""
        kind = "fetch" if isinstance(record, FetchRecord) else "search"
        return self._seal.seal(self._names[kind], encode_record(record))

    def open(self, raw: bytes | str) -> tuple[Record | None, bool]:
        """The record of an entry (``None``: it does not decode), and whether it was trusted."""
        if isinstance(raw, bytes):
            for kind, head in _HEADS.items():
                if raw.startswith(head):
                    if self._seal.sealed(self._names[kind], raw):
                        try:
                            return _trusted(kind, orjson.loads(raw)), True
                        except _NOT_REBUILT:
                            pass  # sealed by a writer whose records this release differs on
                    break
        return decode_record(raw), False
