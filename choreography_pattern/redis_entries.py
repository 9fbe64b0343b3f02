"""The stream's keys, and its entries as redis-py returns them (bytes, loosely typed)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "Entry",
    "StreamRead",
    "as_text",
    "dead_letter_key",
    "decode_fields",
    "entry_order",
    "stream_key",
]

# What redis-py returns without decoding, which its type hints leave loose.
Entry = tuple[bytes, dict[bytes, bytes]]
StreamRead = list[tuple[bytes, list[Entry]]]


def stream_key(namespace: str) -> str:
    """The stream every service publishes to and every group reads."""
    return f"{namespace}:events"


def dead_letter_key(namespace: str, group: str) -> str:
    """A group's dead letters."""
    return f"{namespace}:events:dead:{group}"


def decode_fields(raw: dict[bytes, bytes]) -> tuple[dict[str, str], bool]:
    """The entry's fields as text; False when some were not UTF-8 (a malformed entry)."""
    try:
        return {k.decode(): v.decode() for k, v in raw.items()}, True
    except UnicodeDecodeError:
        return {
            k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()
        }, False


def entry_order(entry_id: str) -> tuple[int, int]:
    """An entry id (``<millis>-<seq>``) as a key that sorts as the stream does."""
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def as_text(value: Any) -> str:
    """A reply value (bytes or not) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
