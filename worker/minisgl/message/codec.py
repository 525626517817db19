"""The one msgpack codec for every message that crosses a process boundary.

Dataclasses travel as msgpack ext type 1 holding `[name, *field values]` and are rebuilt
through the explicit `MESSAGE_TYPES` table (never pickle, never `globals()`); tuples travel
as ext type 2 so they come back as tuples (frozen dataclasses keep their hashable fields).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable

import msgpack

from minisgl.message.backend import AbortBackendMsg, BatchBackendMsg, UserMsg
from minisgl.message.frontend import BatchReplyMsg, ErrorMsg, ReplyChunk, StatsMsg
from minisgl.message.tokenizer import AbortMsg, BatchTokenOutputMsg, TokenizedMsg, TokenizeMsg
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.types import SchedulerStats, TokenOutput

_EXT_DATACLASS = 1
_EXT_TUPLE = 2

MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        # backend (scheduler)
        UserMsg, AbortBackendMsg, BatchBackendMsg,
        # tokenizer / detokenizer
        TokenizeMsg, AbortMsg, TokenizedMsg, BatchTokenOutputMsg,
        # frontend (API process)
        ReplyChunk, BatchReplyMsg, ErrorMsg, StatsMsg,
        # payload types owned by other modules
        SamplingParams, TokenOutput, SchedulerStats,
    )
}

def _getter(cls: type) -> Callable[[Any], list]:
    """[name, *values of the init=True fields in definition order] of an instance (a list:
    a tuple would itself be encoded as a tuple extension)."""
    name, names = cls.__name__, [f.name for f in dataclasses.fields(cls) if f.init]
    get = operator.attrgetter(*names)
    if len(names) == 1:
        return lambda obj: [name, get(obj)]
    return lambda obj: [name, *get(obj)]


_GETTERS: dict[type, Callable[[Any], list]] = {cls: _getter(cls) for cls in MESSAGE_TYPES.values()}


def _default(obj: Any) -> msgpack.ExtType:
    cls = type(obj)
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
        cls = MESSAGE_TYPES.get(name)
        if cls is None:
            raise ValueError(f"unknown message type {name!r}")
        return cls(*values)
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
