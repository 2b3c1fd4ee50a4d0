"""The external data files an ONNX graph names, read from its protobuf without the onnx package.

A graph keeps some or all of its weights in files beside it (over the 2 GB protobuf limit it must), and
ONNX Runtime and TensorRT's parser open them by the ``location`` written *inside* the graph. A bundle
lists and hashes every file it holds, but only a check of those locations proves that what a graph
loads is one of them. The runtime does not depend on ``onnx``, so this walks the serialised
``ModelProto`` directly: the protobuf wire format, descending only into the message fields of
``onnx.proto`` that can hold a ``TensorProto`` (initializers, sparse initializers, attribute tensors,
subgraphs, functions, training graphs). The walk keeps its own stack, so no nesting exhausts Python's,
and it skips tensor payloads by length without copying them (the file is memory-mapped).
"""

from __future__ import annotations

import mmap
from pathlib import Path

from deramos_rt.errors import DeramosError

# Message kinds, and for each the fields (onnx.proto field numbers) that hold messages worth entering.
_MODEL, _TRAINING, _FUNCTION, _GRAPH, _NODE, _ATTRIBUTE, _SPARSE, _TENSOR, _ENTRY = range(9)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {13: _ENTRY},
    _ENTRY: {},
}
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class _Malformed(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, start, end) of every length-delimited field of the message in ``buf[start:end]``."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire == _VARINT:
            _, pos = _varint(buf, pos, end)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _BYTES:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed("a field runs past the end of its message")
            yield key >> 3, pos, pos + length
            pos += length
        else:  # groups (3, 4) are not used by ONNX; 6, 7 do not exist
            raise _Malformed(f"wire type {wire}")
    if pos != end:
        raise _Malformed("a fixed-size field runs past the end of its message")


def _entry_location(buf, start: int, end: int) -> str | None:
    """The value of a ``StringStringEntryProto`` whose key is ``location`` (None for other keys)."""
    key = value = None
    for number, a, b in _fields(buf, start, end):
        if number == 1:
            key = bytes(buf[a:b])
        elif number == 2:
            value = bytes(buf[a:b])
    if key != b"location" or value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Malformed("an external data location is not UTF-8") from exc


def scan_locations(buf) -> set[str]:
    """Every external data ``location`` named anywhere in a serialised ModelProto (``bytes`` or mmap).

    Raises:
        ValueError: the bytes are not a well-formed protobuf message.
    """
    found: set[str] = set()
    stack = [(_MODEL, 0, len(buf))]
    while stack:
        kind, start, end = stack.pop()
        if kind == _ENTRY:
            location = _entry_location(buf, start, end)
            if location is not None:
                found.add(location)
            continue
        children = _CHILDREN[kind]
        for number, a, b in _fields(buf, start, end):
            child = children.get(number)
            if child is not None:
                stack.append((child, a, b))
    return found


def external_locations(path: str | Path) -> set[str]:
    """The external data locations an ONNX graph file names (as written, relative to its folder).

    Raises:
        DeramosError: the file cannot be read or is not a well-formed ONNX protobuf.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if path.stat().st_size == 0:
                raise DeramosError(f"graph file {path} is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return scan_locations(buf)
    except OSError as exc:
        raise DeramosError(f"cannot read graph file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise DeramosError(f"graph file {path} is not a well-formed ONNX model ({exc})") from exc
