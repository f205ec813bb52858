"""What identifies a stored result, and the cache keys derived from it (pure code)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kuya_store.errors import InvalidInputError
from kuya_store.models import Params, SearchFilters, SearchType
from kuya_store.pricing.cards import normalize_card
from kuya_store.pricing.query import MAX_QUERY_LENGTH, SearchQuery, parse_query

__all__ = [
    "KEY_VERSION",
    "MAX_QUERY_LENGTH",
    "ResultIdentity",
    "changed_key",
    "is_encodable",
    "parsed_query",
    "tracked_prefixes",
    "validate_filters",
    "validate_params",
    "validate_query",
    "validate_search_type",
    "validate_user_id",
    "witness_key",
]

KEY_VERSION = 1
"""Bumped whenever the stored value's layout changes, so old entries are simply never read."""

_MAX_PARAMS = 32
_MAX_PARAM_KEY = 64
_MAX_PARAM_TEXT = 500


_NOT_UNICODE = "must be valid Unicode text (a lone surrogate has no UTF-8 form to store)"


def is_encodable(text: str) -> bool:
    """Whether the text can be stored: a lone surrogate (``"\\ud800"``) has no UTF-8 form."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def validate_query(query: object, field: str = "query") -> str:
    """The query with surrounding whitespace removed, or ``InvalidInputError``."""
    if not isinstance(query, str):
        raise InvalidInputError(field, f"must be a string, not {type(query).__name__}")
    text = query.strip()
    if not text:
        raise InvalidInputError(field, "must not be empty")
    if len(text) > MAX_QUERY_LENGTH:
        raise InvalidInputError(field, f"must be at most {MAX_QUERY_LENGTH} characters")
    if "\x00" in text:
        raise InvalidInputError(field, "must not contain NUL characters")
    if not is_encodable(text):
        raise InvalidInputError(field, _NOT_UNICODE)
    return text


def validate_params(params: object) -> Params:
    """Upstream options: a small mapping of JSON scalars, or ``InvalidInputError``."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInputError("params", "must be a mapping of option name to JSON scalar")
    if len(params) > _MAX_PARAMS:
        raise InvalidInputError("params", f"must have at most {_MAX_PARAMS} entries")
    clean: Params = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key or len(key) > _MAX_PARAM_KEY or "\x00" in key:
            raise InvalidInputError(
                "params", f"option names must be 1..{_MAX_PARAM_KEY} characters"
            )
        if not is_encodable(key):  # named without the key: it could not be shown either
            raise InvalidInputError("params", f"option names {_NOT_UNICODE}")
        field = f"params.{key}"
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError(field, "must be a finite number")
        if isinstance(value, str) and (len(value) > _MAX_PARAM_TEXT or "\x00" in value):
            raise InvalidInputError(field, f"must be at most {_MAX_PARAM_TEXT} characters, no NUL")
        if isinstance(value, str) and not is_encodable(value):
            raise InvalidInputError(field, _NOT_UNICODE)
        if value is not None and not isinstance(value, str | int | float | bool):
            raise InvalidInputError(field, "must be a JSON scalar (string, number, boolean, null)")
        clean[key] = value
    return clean


def validate_search_type(value: object) -> SearchType:
    """A ``SearchType`` from an enum member or its value, or ``InvalidInputError``."""
    try:
        return SearchType(value if isinstance(value, str) else repr(value))
    except ValueError:
        raise InvalidInputError("search_type", "must be 'sold' or 'active'") from None


def validate_filters(value: object) -> SearchFilters:
    """``SearchFilters`` from the model, a mapping or ``None``, or ``InvalidInputError``."""
    if value is None:
        return SearchFilters()
    if isinstance(value, SearchFilters):
        return value
    if isinstance(value, Mapping):
        try:
            return SearchFilters.model_validate(dict(value))
        except ValidationError as exc:
            raise InvalidInputError.from_validation_error(exc, "filters") from None
    raise InvalidInputError("filters", "must be SearchFilters, a mapping or None")


def validate_user_id(value: object) -> int | None:
    """A positive user id or ``None``, or ``InvalidInputError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError("user_id", "must be a positive integer or None")
    return value


def canonical_json(value: Any) -> str:
    """Stable JSON text: sorted keys, no spaces; equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


_parse_memo = functools.lru_cache(maxsize=16_384)(parse_query)


def parsed_query(text: str) -> SearchQuery:
    """``parse_query``, memoised for the short queries that recur."""
    return _parsed(text)


def _parsed(text: str) -> SearchQuery:
    # Every search parses its query and the same queries recur; only short ones are kept,
    # so the memo stays small.
    return _parse_memo(text) if len(text) <= 500 else parse_query(text)


@dataclass(frozen=True, slots=True)
class ResultIdentity:
    """Everything that decides whether two searches may share one stored result.

    The card identifier folds case, spacing and abbreviations; ``params`` always count;
    filters count only when they are sent upstream (otherwise one fetch serves them all);
    the query's operators (``-auto``, ``"psa 10"``) count in canonical form, because the
    marketplace answers differently with them.
    """

    card_identifier: str
    search_type: SearchType
    params: str
    upstream_filters: str | None = None
    operators: str | None = None

    @classmethod
    def of(
        cls,
        card_identifier: str,
        search_type: SearchType,
        params: Params,
        filters: SearchFilters | None = None,
        operators: str | None = None,
    ) -> ResultIdentity:
        return cls(
            card_identifier,
            search_type,
            canonical_json(params),
            canonical_json(filters.as_dict()) if filters is not None else None,
            operators,
        )

    @classmethod
    def of_query(
        cls,
        query: str | SearchQuery,
        search_type: SearchType,
        params: Params,
        filters: SearchFilters | None = None,
    ) -> ResultIdentity:
        """The identity of a search for ``query``: the card it names plus its operators."""
        parsed = query if isinstance(query, SearchQuery) else _parsed(query)
        return cls.of(normalize_card(parsed), search_type, params, filters, parsed.operators)

    result_key: str = field(init=False, repr=False, compare=False)
    """64 hex characters naming this result in the database (``searches.result_key``)."""
    card_key: str = field(init=False, repr=False, compare=False)
    """Short hash of search type and card: groups every variant for invalidation.

    Variants differ in params, upstream filters or operators; ``invalidate`` drops all.
    """

    def __post_init__(self) -> None:
        # Both hashes are read on every tier lookup of a search: worked out once, here.
        parts: list[object] = [
            KEY_VERSION,
            self.search_type.value,
            self.card_identifier,
            self.params,
            self.upstream_filters,
        ]
        if self.operators is not None:
            # Only then: a plain query keeps the key its stored results were written under.
            parts.append(self.operators)
        result_key = hashlib.sha256(canonical_json(parts).encode()).hexdigest()
        material = f"{self.search_type.value}\x1f{self.card_identifier}"
        card_key = hashlib.sha256(material.encode()).hexdigest()[:32]
        object.__setattr__(self, "result_key", result_key)
        object.__setattr__(self, "card_key", card_key)

    def __hash__(self) -> int:
        # Equal identities have equal result keys, and a str keeps its hash: every dict
        # lookup by identity (each tier read hashes it several times) costs one call.
        return hash(self.result_key)

    # Every key of a card shares the hash tag ``{card_key}``: on a Redis Cluster a result,
    # its stamp, its lock and the card's index and fence live in one slot, so each script
    # over them runs on one node. The kind letter comes before the tag, so a tracking
    # prefix (``kuya:v1:r:``) can follow values and fences alone.

    def _tagged(self, prefix: str, kind: str) -> str:
        return f"{prefix}:v{KEY_VERSION}:{kind}:{{{self.card_key}}}"

    def redis_key(self, prefix: str) -> str:
        """The hot-tier key: namespaced, versioned, and tagged by card."""
        return f"{self._tagged(prefix, 'r')}:{self.search_type.value}:{self.result_key}"

    def redis_lock_key(self, prefix: str) -> str:
        """The cross-process single-flight lock of this result."""
        return f"{self._tagged(prefix, 'l')}:{self.result_key}"

    def redis_index_key(self, prefix: str) -> str:
        """The set of hot-tier keys holding a variant of this card (for ``invalidate``)."""
        return self._tagged(prefix, "i")

    def redis_stamp_key(self, prefix: str) -> str:
        """When the hot-tier value was fetched (epoch ms): older data may not replace it."""
        return f"{self._tagged(prefix, 't')}:{self.search_type.value}:{self.result_key}"

    def redis_display_key(self, prefix: str, item_id: str) -> str:
        """The display data of one listing of this card (``Listing.extra``, by ``item_id``)."""
        return f"{self._tagged(prefix, 'd')}:{item_id}"

    def redis_fence_key(self, prefix: str) -> str:
        """When this card and search type were last invalidated (epoch ms)."""
        return self._tagged(prefix, "g")


def tracked_prefixes(prefix: str) -> tuple[str, str]:
    """The key prefixes whose changes other workers must hear of: values and fences."""
    return f"{prefix}:v{KEY_VERSION}:r:", f"{prefix}:v{KEY_VERSION}:g:"


# No echo ledger names a write so (their names are hex): a write nobody expects as its echo.
_ANONYMOUS = "-"


def witness_key(prefix: str, key: str, name: str | None = None) -> str:
    """The key that names one write of value ``key`` in the change message reporting it.

    Under the value prefix, so Redis reports it with the value, and with the value's hash
    tag, so it lives on the value's Cluster node; ``changed_key`` names no entry by it.
    """
    values = tracked_prefixes(prefix)[0]
    return f"{values}#{name or _ANONYMOUS}:{key[len(values) :]}"


def changed_key(prefix: str, key: str) -> tuple[str, str, str | None] | None:
    """What a changed hot-tier key names: ``(kind, card_key, result_key or None)``.

    ``kind`` is ``"r"`` for a value and ``"g"`` for a fence; ``None`` for a key of
    another layout (an older version, another application), which names no entry here.
    """
    head = f"{prefix}:v{KEY_VERSION}:"
    if not key.startswith(head) or key[len(head) + 1 : len(head) + 3] != ":{":
        return None
    kind = key[len(head)]
    card_key, closed, rest = key[len(head) + 3 :].partition("}")
    if not closed or not card_key:
        return None
    if kind == "g":
        return "g", card_key, None
    if kind == "r":
        return "r", card_key, rest.rpartition(":")[2] or None
    return None
