"""The msgpack codec: messages to bytes and bytes back to checked messages.

`encode(msg)` writes one msgpack map: `"v"` (the class `VERSION`), `"kind"` (the class `KIND`)
and every field. `decode(data, cls)` reads it back and checks everything against `cls`: the
bytes, the kind, the schema version and the type of every field (including nested dataclasses,
enums, tuples and maps). Any problem raises a `ProtocolError` subclass that names the kind and
the field; nothing else escapes `decode` for the message types of `protocol.messages`.

Decisions:
- A newer `"v"` than `cls.VERSION` raises `UnknownVersionError` (upgrade meshd). An older one
  goes through the class's optional `upgrade(version, fields)` classmethod, or raises
  `UnknownVersionError` when there is none.
- Unknown extra fields are ignored: a sender may add an optional field within a version and
  older readers keep working. Missing fields are errors unless the dataclass gives a default.
- `float` fields accept integers and refuse NaN and infinities; `int` fields refuse booleans.
- `dict[str, Any]` holds plain data only (nil, booleans, integers, floats, strings, binary,
  arrays, maps with string keys) nested at most `MAX_DEPTH` deep; arrays come back as lists.
- `encode` checks the message with the same rules, so whatever it writes `decode` accepts.
- A message is at most `MAX_MESSAGE_BYTES` (NATS's default max payload) either way.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from typing import Any, TypeVar

import msgpack

from protocol.base import Message
from protocol.errors import MalformedMessageError, ProtocolError, UnknownVersionError

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_DEPTH = 32
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_ENVELOPE = ("v", "kind")

M = TypeVar("M", bound=Message)


def encode(msg: Message) -> bytes:
    """Return the msgpack bytes of `msg`; raise MalformedMessageError if a field is invalid."""
    cls = type(msg)
    what = f"encode {cls.KIND}"
    body: dict[str, Any] = {"v": cls.VERSION, "kind": cls.KIND}
    try:
        body.update(_struct(cls).dump(msg, ""))
    except _FieldError as err:
        raise MalformedMessageError(what, err.reason, field=err.path or None) from None
    try:
        data: bytes = msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as err:
        raise MalformedMessageError(what, f"cannot pack: {err}") from err
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessageError(what, _too_big(len(data)))
    return data


def decode(data: bytes, cls: type[M]) -> M:
    """Return the `cls` message in `data`; raise a ProtocolError subclass if it is not one."""
    what = f"decode {cls.KIND}"
    raw = _unpack(data, what)
    if not isinstance(raw, dict):
        raise MalformedMessageError(what, f"expected a map, got {_describe(raw)}")
    kind = raw.get("kind")
    if kind != cls.KIND:
        got = "no kind" if kind is None else f"kind {_short(kind)}"
        raise MalformedMessageError(what, f"expected kind {cls.KIND!r}, got {got}")
    fields = {key: value for key, value in raw.items() if key not in _ENVELOPE}
    version = _version(raw, what)
    if version > cls.VERSION:
        raise UnknownVersionError(cls.KIND, version, cls.VERSION)
    if version < cls.VERSION:
        fields = _upgrade(cls, version, fields, what)
    try:
        msg: M = _struct(cls).load(fields, "", 0)
    except _FieldError as err:
        raise MalformedMessageError(what, err.reason, field=err.path or None) from None
    except RecursionError:
        raise MalformedMessageError(what, "message is nested too deeply") from None
    return msg


def _unpack(data: bytes, what: str) -> object:
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessageError(what, _too_big(len(data)))
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as err:
        detail = str(err) or type(err).__name__
        raise MalformedMessageError(what, f"not valid msgpack: {detail}") from None


def _version(raw: dict[Any, Any], what: str) -> int:
    version = raw.get("v")
    if version is None:
        raise MalformedMessageError(what, "missing schema version 'v'")
    if type(version) is not int or version < 1:
        raise MalformedMessageError(
            what, f"schema version 'v' must be a positive integer, got {_short(version)}"
        )
    return version


def _upgrade(cls: type[Message], version: int, fields: dict[str, Any], what: str) -> dict[str, Any]:
    hook = getattr(cls, "upgrade", None)
    if hook is None:
        raise UnknownVersionError(cls.KIND, version, cls.VERSION)
    try:
        upgraded = hook(version, dict(fields))
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise MalformedMessageError(
            what, f"cannot upgrade from schema version {version}: {err!r}"
        ) from None
    if not isinstance(upgraded, dict):
        raise MalformedMessageError(
            what, f"upgrade from schema version {version} returned {_describe(upgraded)}"
        )
    return upgraded


def _too_big(size: int) -> str:
    return f"message is {size} bytes, more than the {MAX_MESSAGE_BYTES} allowed"


class _FieldError(Exception):
    """Internal: a field failed its check; `decode`/`encode` add what was being done."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason


def _describe(value: object) -> str:
    names: dict[type, str] = {
        type(None): "nil",
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        bytes: "binary data",
        list: "an array",
        tuple: "an array",
        dict: "a map",
    }
    return names.get(type(value), type(value).__name__)


def _short(value: object) -> str:
    """A short repr of a scalar; containers are only described (their repr may recurse)."""
    if isinstance(value, str | bytes):
        text = repr(value[:40])
    elif value is None or isinstance(value, int | float):
        text = repr(value)
    else:
        return _describe(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# One checker per type hint. `load` turns a decoded msgpack value into the field value,
# `dump` a field value into plain msgpack data; both raise _FieldError.


class _Check:
    def load(self, value: object, path: str, depth: int) -> Any:
        raise NotImplementedError

    def dump(self, value: object, path: str) -> Any:
        return self.load(value, path, 0)


class _Str(_Check):
    def load(self, value: object, path: str, depth: int) -> Any:
        if not isinstance(value, str):
            raise _FieldError(path, f"expected a string, got {_describe(value)}")
        return value


class _Bool(_Check):
    def load(self, value: object, path: str, depth: int) -> Any:
        if not isinstance(value, bool):
            raise _FieldError(path, f"expected a boolean, got {_describe(value)}")
        return value


class _Int(_Check):
    def load(self, value: object, path: str, depth: int) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _FieldError(path, f"expected an integer, got {_describe(value)}")
        if not _INT_MIN <= value <= _INT_MAX:
            raise _FieldError(path, f"integer {value} does not fit in 64 bits")
        return value


class _Float(_Check):
    def load(self, value: object, path: str, depth: int) -> Any:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _FieldError(path, f"expected a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise _FieldError(path, f"number {value} is too large") from None
        if not math.isfinite(number):
            raise _FieldError(path, f"expected a finite number, got {number}")
        return number


class _Optional(_Check):
    def __init__(self, inner: _Check) -> None:
        self.inner = inner

    def load(self, value: object, path: str, depth: int) -> Any:
        return None if value is None else self.inner.load(value, path, depth)

    def dump(self, value: object, path: str) -> Any:
        return None if value is None else self.inner.dump(value, path)


class _Tuple(_Check):
    def __init__(self, item: _Check) -> None:
        self.item = item

    def load(self, value: object, path: str, depth: int) -> Any:
        items = _array(value, path, depth)
        return tuple(self.item.load(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(items))

    def dump(self, value: object, path: str) -> Any:
        items = _array(value, path, 0)
        return [self.item.dump(v, f"{path}[{i}]") for i, v in enumerate(items)]


class _Dict(_Check):
    def __init__(self, item: _Check) -> None:
        self.item = item

    def load(self, value: object, path: str, depth: int) -> Any:
        entries = _map(value, path, depth)
        return {k: self.item.load(v, f"{path}[{k!r}]", depth + 1) for k, v in entries.items()}

    def dump(self, value: object, path: str) -> Any:
        entries = _map(value, path, 0)
        return {k: self.item.dump(v, f"{path}[{k!r}]") for k, v in entries.items()}


class _Plain(_Check):
    """`Any`: plain msgpack data, checked all the way down (no extension types)."""

    _SCALARS = (type(None), bool, str, bytes, float)

    def load(self, value: object, path: str, depth: int) -> Any:
        if isinstance(value, self._SCALARS):
            return value
        if isinstance(value, int):
            return _Int().load(value, path, depth)
        if type(value) in (list, tuple):
            items = _array(value, path, depth)
            return [self.load(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(items)]
        if isinstance(value, dict):
            entries = _map(value, path, depth)
            return {k: self.load(v, f"{path}[{k!r}]", depth + 1) for k, v in entries.items()}
        raise _FieldError(path, f"expected plain data, got {_describe(value)}")


def _array(value: object, path: str, depth: int) -> list[Any] | tuple[Any, ...]:
    # Exact types: msgpack's ExtType is a namedtuple and must not pass for an array.
    if not isinstance(value, list | tuple) or type(value) not in (list, tuple):
        raise _FieldError(path, f"expected an array, got {_describe(value)}")
    if depth >= MAX_DEPTH:
        raise _FieldError(path, f"nested more than {MAX_DEPTH} levels deep")
    return value


def _map(value: object, path: str, depth: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _FieldError(path, f"expected a map, got {_describe(value)}")
    if depth >= MAX_DEPTH:
        raise _FieldError(path, f"nested more than {MAX_DEPTH} levels deep")
    for key in value:
        if not isinstance(key, str):
            raise _FieldError(path, f"map keys must be strings, got {_describe(key)}")
    return value


class _Enum(_Check):
    def __init__(self, cls: type[enum.Enum]) -> None:
        self.cls = cls

    def load(self, value: object, path: str, depth: int) -> Any:
        if isinstance(value, str | int) and not isinstance(value, bool):
            try:
                return self.cls(value)
            except ValueError:
                pass
        allowed = ", ".join(repr(member.value) for member in self.cls)
        raise _FieldError(path, f"expected one of {allowed}, got {_short(value)}")

    def dump(self, value: object, path: str) -> Any:
        member = value if isinstance(value, self.cls) else self.load(value, path, 0)
        return member.value


class _Struct(_Check):
    """A dataclass, sent as a map of its fields."""

    def __init__(self, cls: type[Any], fields: dict[str, tuple[_Check, bool]]) -> None:
        self.cls = cls
        self.fields = fields  # name -> (check, required)

    def load(self, value: object, path: str, depth: int) -> Any:
        entries = _map(value, path, depth)
        kwargs: dict[str, Any] = {}
        for name, (check, required) in self.fields.items():
            where = _at(path, name)
            if name in entries:
                kwargs[name] = check.load(entries[name], where, depth + 1)
            elif required:
                raise _FieldError(where, "missing required field")
        return self.cls(**kwargs)

    def dump(self, value: object, path: str) -> Any:
        if not isinstance(value, self.cls):
            raise _FieldError(path, f"expected {self.cls.__name__}, got {_describe(value)}")
        return {
            name: check.dump(getattr(value, name), _at(path, name))
            for name, (check, _) in self.fields.items()
        }


_SCALAR_CHECKS: dict[object, _Check] = {
    str: _Str(),
    bool: _Bool(),
    int: _Int(),
    float: _Float(),
    Any: _Plain(),
}


_STRUCTS: dict[type[Any], _Struct] = {}


def _struct(cls: type[Any]) -> _Struct:
    """Compile the checks of dataclass `cls`; TypeError means the class itself is invalid."""
    cached = _STRUCTS.get(cls)
    if cached is not None:
        return cached
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields: dict[str, tuple[_Check, bool]] = {}
    for f in dataclasses.fields(cls):
        if issubclass(cls, Message) and f.name in _ENVELOPE:
            raise TypeError(f"{cls.__name__}.{f.name}: field name is reserved for the envelope")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        fields[f.name] = (_check_for(hints[f.name], f"{cls.__name__}.{f.name}"), required)
    _STRUCTS[cls] = _Struct(cls, fields)
    return _STRUCTS[cls]


def _check_for(hint: Any, owner: str) -> _Check:
    if hint in _SCALAR_CHECKS:
        return _SCALAR_CHECKS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(others) == 1:
            return _Optional(_check_for(others[0], owner))
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _Tuple(_check_for(args[0], owner))
    elif origin is dict and len(args) == 2 and args[0] is str:
        return _Dict(_check_for(args[1], owner))
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _Enum(hint)
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _struct(hint)
    raise TypeError(f"{owner}: type {hint!r} is not supported by protocol.codec")
