"""OpenTelemetry spans of searches, tier reads, upstream requests and database writes.

With ``opentelemetry-api`` installed (the ``otel`` extra) the store reports to whichever
tracer provider the application set up. Without the package, or with no provider set up,
every call here hands back one shared object that does nothing, so tracing costs a
function call when it is not there.

A span that ends in an exception records it and has status ``ERROR``; one whose task
was cancelled carries ``kuya_store.cancelled`` instead, since cancelling is not failing.
Work that runs in a task of its own (a fetch shared by several searches, the
write-behind task) is parented explicitly: a fetch to the search that started it, a
fetched result's database write to that fetch, and a batch of search-log rows links to
the searches it writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Protocol

try:
    from opentelemetry import trace as _otel
    from opentelemetry.context import Context as _Context
except ImportError:  # pragma: no cover - depends on the installed extras
    _otel = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Span as _OtelSpan

__all__ = [
    "NO_SCOPE",
    "NO_SPAN",
    "Attributes",
    "Span",
    "TraceParent",
    "current",
    "enabled",
    "link_of",
    "recording",
    "span",
    "start",
    "use",
]

Attributes = Mapping[str, str | bool | int | float]
TraceParent = object
"""A span's context, opaque here: what a later span names as its parent or link."""


class Span(Protocol):
    """The part of a span the store uses; the no-op span has the same methods."""

    def set_attribute(self, key: str, value: str | bool | int | float) -> None: ...

    def is_recording(self) -> bool: ...

    def end(self) -> None: ...

    def record_exception(
        self, exception: BaseException, attributes: Attributes | None = None
    ) -> None: ...


class _NoSpan:
    """A span that records nothing (``opentelemetry-api`` is not installed)."""

    __slots__ = ()

    def set_attribute(self, key: str, value: str | bool | int | float) -> None:
        return None

    def is_recording(self) -> bool:
        return False

    def end(self) -> None:
        return None

    def record_exception(
        self, exception: BaseException, attributes: Attributes | None = None
    ) -> None:
        return None

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()
_PLACEHOLDERS = (_otel.ProxyTracerProvider, _otel.NoOpTracerProvider) if _otel is not None else ()
NO_SPAN: Span = _NO_SPAN
"""The span that records nothing: what a watcher holds before its span starts."""
NO_SCOPE: AbstractContextManager[Span] = _NO_SPAN
"""A ``with`` block that makes no span: :data:`NO_SPAN`, current for nothing."""
_tracer = _otel.get_tracer("kuya_store") if _otel is not None else None


def enabled() -> bool:
    """Whether ``opentelemetry-api`` is installed, so spans can be recorded at all."""
    return _tracer is not None


_provider_set = False


def _recording() -> bool:
    """Whether a tracer provider is set up, so a span may record (else skip making one)."""
    global _provider_set
    if _provider_set:
        return True  # a global provider, once set, is never replaced
    if _otel is None:
        return False
    provider = _otel.get_tracer_provider()
    if isinstance(provider, _PLACEHOLDERS):
        return False
    _provider_set = True
    return True


def recording() -> bool:
    """Whether a span made now would record: the API is installed and a provider set up."""
    return _tracer is not None and _recording()


def current() -> TraceParent | None:
    """The context of the span current now, if one records (to parent later work)."""
    if _otel is None:
        return None
    context = _otel.get_current_span().get_span_context()
    return context if context.is_valid else None


def _links(links: Sequence[TraceParent | None]) -> list[_otel.Link]:
    return [_otel.Link(link) for link in links if isinstance(link, _otel.SpanContext)]


def _context(parent: TraceParent | None, root: bool) -> _Context | None:
    if isinstance(parent, _otel.SpanContext):
        return _otel.set_span_in_context(_otel.NonRecordingSpan(parent))
    # A background task inherits whatever span was current when it started: not its parent.
    return _Context() if root else None


def span(
    name: str,
    attributes: Attributes | None = None,
    *,
    parent: TraceParent | None = None,
    links: Sequence[TraceParent | None] = (),
    root: bool = False,
) -> AbstractContextManager[Span]:
    """A span current for the ``with`` block; it records an exception that ends the block.

    Args:
        parent: the span this one belongs to, when it is not the current one.
        links: spans this one relates to without being their child (searches a batch writes).
        root: start a trace of its own when ``parent`` is not given.
    """
    if _tracer is None or not _recording():
        return _NO_SPAN
    return _current_span(
        _tracer.start_span(
            name, context=_context(parent, root), attributes=attributes, links=_links(links)
        )
    )


def start(name: str, attributes: Attributes | None = None) -> Span:
    """A span started now, a child of the current one, and made current later by :func:`use`.

    For work that runs in a task of its own: the parent is taken where the work is asked
    for, not where the task happens to run.
    """
    if _tracer is None or not _recording():
        return _NO_SPAN
    return _tracer.start_span(name, attributes=attributes)


def use(started: Span) -> AbstractContextManager[Span]:
    """Make a span from :func:`start` current for the ``with`` block, and end it there."""
    if _otel is None or isinstance(started, _NoSpan):
        return _NO_SPAN
    return _current_span(started)  # type: ignore[arg-type]


def link_of(started: Span) -> TraceParent | None:
    """The context of a span from :func:`start`, to link another span to it."""
    if _otel is None or isinstance(started, _NoSpan):
        return None
    context = started.get_span_context()  # type: ignore[attr-defined]
    return context if context.is_valid else None


@contextmanager
def _current_span(started: _OtelSpan) -> Iterator[Span]:
    assert _otel is not None
    with _otel.use_span(started, end_on_exit=True):  # records an Exception, sets ERROR
        try:
            yield started
        except asyncio.CancelledError:
            started.set_attribute("kuya_store.cancelled", True)
            raise
