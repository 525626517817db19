"""The one msgpack codec for every message that crosses a process boundary.

Dataclasses travel as msgpack ext type 1 holding `[name, *field values]` and are rebuilt
through the explicit `MESSAGE_TYPES` table (never pickle, never `globals()`); tuples travel
as ext type 2 so they come back as tuples (frozen dataclasses keep their hashable fields).

The per-step batches (`BatchTokenOutputMsg`, `BatchReplyMsg`: one element per running request
per scheduler step) travel as ext type 3, `[batch name, element name, [values of element 1],
...]`: one ext for the whole batch instead of one per element, so a 256-request step costs one
nested pack/unpack, not 256. Elements are rebuilt without running the frozen `__init__`
(all their fields are init fields, none has `__post_init__`): that is most of the decode time.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable

import msgpack

from minisgl.message.backend import (AbortBackendMsg, BatchBackendMsg, FlushCacheMsg,
                                     GrammarReadyMsg, UserMsg)
from minisgl.message.frontend import (BatchReplyMsg, ErrorMsg, FlushedMsg, PongMsg, ReplyChunk,
                                      StatsMsg)
from minisgl.message.tokenizer import (AbortMsg, BatchTokenOutputMsg, PingMsg, TokenizedMsg,
                                       TokenizeMsg)
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.types import SchedulerStats, TokenOutput

_EXT_DATACLASS = 1
_EXT_TUPLE = 2
_EXT_ROWS = 3

MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        # backend (scheduler)
        UserMsg, AbortBackendMsg, GrammarReadyMsg, FlushCacheMsg, BatchBackendMsg,
        # tokenizer / detokenizer
        TokenizeMsg, AbortMsg, TokenizedMsg, BatchTokenOutputMsg, PingMsg,
        # frontend (API process)
        ReplyChunk, BatchReplyMsg, ErrorMsg, StatsMsg, PongMsg, FlushedMsg,
        # payload types owned by other modules
        SamplingParams, TokenOutput, SchedulerStats,
    )
}

# batch message -> (its one list field, the element type that list holds)
_ROW_BATCHES: dict[type, tuple[str, type]] = {
    BatchTokenOutputMsg: ("outputs", TokenOutput),
    BatchReplyMsg: ("chunks", ReplyChunk),
}


def _getter(cls: type) -> Callable[[Any], list]:
    """[name, *values of the init=True fields in definition order] of an instance (a list:
    a tuple would itself be encoded as a tuple extension)."""
    name, names = cls.__name__, [f.name for f in dataclasses.fields(cls) if f.init]
    get = operator.attrgetter(*names)
    if len(names) == 1:
        return lambda obj: [name, get(obj)]
    return lambda obj: [name, *get(obj)]


def _maker(cls: type) -> Callable[[list], Any]:
    """values -> instance: straight into __dict__ where `cls(*values)` would only assign them
    (three times faster for a frozen dataclass); through `cls(*values)` otherwise."""
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    plain = (all(f.init for f in fields) and not hasattr(cls, "__post_init__")
             and hasattr(cls, "__dict__") and not hasattr(cls, "__slots__"))
    new = object.__new__

    def make(values: list) -> Any:
        if len(values) != len(names):
            return cls(*values)
        obj = new(cls)
        obj.__dict__.update(zip(names, values))
        return obj

    return make if plain else (lambda values: cls(*values))


def _row_getter(cls: type) -> Callable[[Any], list]:
    get = operator.attrgetter(*(f.name for f in dataclasses.fields(cls) if f.init))
    return lambda obj: [*get(obj)]


_GETTERS: dict[type, Callable[[Any], list]] = {cls: _getter(cls) for cls in MESSAGE_TYPES.values()}
_MAKERS: dict[str, Callable[[list], Any]] = {
    name: _maker(cls) for name, cls in MESSAGE_TYPES.items()}
_ROW_GETTERS: dict[type, Callable[[Any], list]] = {
    elem: _row_getter(elem) for _, elem in _ROW_BATCHES.values()}


def _pack_rows(obj: Any, attr: str, elem: type) -> msgpack.ExtType | None:
    items = getattr(obj, attr)
    if any(type(x) is not elem for x in items):
        return None  # e.g. a subclass: the generic path names each element's own type
    get = _ROW_GETTERS[elem]
    return msgpack.ExtType(_EXT_ROWS, _pack([type(obj).__name__, elem.__name__,
                                             *[get(x) for x in items]]))


def _default(obj: Any) -> msgpack.ExtType:
    cls = type(obj)
    rows = _ROW_BATCHES.get(cls)
    if rows is not None:
        ext = _pack_rows(obj, *rows)
        if ext is not None:
            return ext
    get = _GETTERS.get(cls)
    if get is not None:
        return msgpack.ExtType(_EXT_DATACLASS, _pack(get(obj)))
    if cls is tuple:
        return msgpack.ExtType(_EXT_TUPLE, _pack(list(obj)))
    raise TypeError(f"cannot encode {cls.__name__}: not in the message table")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_TUPLE:
        return tuple(_unpack(data))
    if code == _EXT_DATACLASS:
        name, *values = _unpack(data)
        make = _MAKERS.get(name)
        if make is None:
            raise ValueError(f"unknown message type {name!r}")
        return make(values)
    if code == _EXT_ROWS:
        name, elem, *rows = _unpack(data)
        cls, make = MESSAGE_TYPES.get(name), _MAKERS.get(elem)
        if cls not in _ROW_BATCHES or make is None or _ROW_BATCHES[cls][1].__name__ != elem:
            raise ValueError(f"unknown batch type {name!r} of {elem!r}")
        return cls([make(row) for row in rows])
    raise ValueError(f"unknown msgpack ext code {code}")


def _pack(obj: Any) -> bytes:
    # strict_types: tuples and dataclasses go through _default instead of becoming lists
    return msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def encode(msg: Any) -> bytes:
    """Encode a message (any dataclass in MESSAGE_TYPES, possibly nested) to bytes."""
    return _pack(msg)


def decode(data: bytes) -> Any:
    """Inverse of `encode`."""
    return _unpack(data)
