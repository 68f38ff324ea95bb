"""Filters: predicates over a message type that compose with `&`, `|` and `~`.

    vip = Filter(lambda m: m.openid in VIPS)          # Filter[InboundMessage] via annotation
    @router.text(contain="price", when=vip & ~night)
    async def prices(msg: TextMessage, ctx: Context) -> str: ...

A filter over a wider type (InboundMessage) combines with one over a narrower type
(TextMessage) into a filter over the narrower one, so mypy still checks what each reads.
Filters are plain functions, not coroutines: they run for every route a push is tried
against, so anything that needs I/O belongs in the handler or a middleware.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from service.messages import InboundMessage

M_contra = TypeVar("M_contra", bound="InboundMessage", contravariant=True)
N = TypeVar("N", bound="InboundMessage")


class Filter(Generic[M_contra]):
    """A predicate over messages of type M; `a & b`, `a | b`, `~a` are filters too."""

    __slots__ = ("name", "test")

    def __init__(self, test: Callable[[M_contra], bool], *, name: str = "") -> None:
        self.test = test
        self.name = name or getattr(test, "__name__", "filter")

    def __call__(self, msg: M_contra) -> bool:
        return bool(self.test(msg))

    def __and__(self: Filter[N], other: Callable[[N], bool]) -> Filter[N]:
        return Filter(lambda m: self(m) and bool(other(m)), name=f"({self} & {_name(other)})")

    def __rand__(self: Filter[N], other: Callable[[N], bool]) -> Filter[N]:
        return Filter(lambda m: bool(other(m)) and self(m), name=f"({_name(other)} & {self})")

    def __or__(self: Filter[N], other: Callable[[N], bool]) -> Filter[N]:
        return Filter(lambda m: self(m) or bool(other(m)), name=f"({self} | {_name(other)})")

    def __ror__(self: Filter[N], other: Callable[[N], bool]) -> Filter[N]:
        return Filter(lambda m: bool(other(m)) or self(m), name=f"({_name(other)} | {self})")

    def __invert__(self) -> Filter[M_contra]:
        return Filter(lambda m: not self(m), name=f"~{self}")

    def __repr__(self) -> str:
        return self.name


def _name(test: object) -> str:
    return str(test) if isinstance(test, Filter) else getattr(test, "__name__", "filter")
