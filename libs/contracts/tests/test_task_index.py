"""The task index's pure rules: appending, sealing, de-duplication, cursors."""

from __future__ import annotations

from pixelbus.contracts.task_index import (
    Cursor,
    IndexChunk,
    append,
    decode_chunk,
    encode_chunk,
    owner_scope,
    parse_cursor,
)


def entries(*ids: str) -> list[tuple[str, str]]:
    return [(i, f"2026-12-04T00:00:0{n}+00:00") for n, i in enumerate(ids)]


def test_append_seals_full_chunks_in_order() -> None:
    sealed, now_open = append(IndexChunk(0), entries("a", "b", "c", "d", "e"), size=2)
    assert [c.number for c in sealed] == [0, 1]
    assert [[i for i, _ in c.entries] for c in sealed] == [["a", "b"], ["c", "d"]]
    assert now_open.number == 2 and [i for i, _ in now_open.entries] == ["e"]


def test_a_redelivered_batch_adds_nothing_even_across_a_seal() -> None:
    first, now_open = append(IndexChunk(0), entries("a", "b", "c"), size=2)
    assert [c.number for c in first] == [0]
    again, same = append(now_open, entries("a", "b", "c"), frozenset({"a", "b"}), size=2)
    assert again == [] and same == now_open
    more, grown = append(now_open, entries("c", "d"), size=2)
    assert [[i for i, _ in c.entries] for c in more] == [["c", "d"]] and grown.entries == ()


def test_chunks_and_cursors_round_trip() -> None:
    chunk = IndexChunk(3, tuple(entries("x", "y")))
    assert decode_chunk(encode_chunk(chunk)) == chunk
    assert parse_cursor(Cursor(3, 17).encode()) == Cursor(3, 17)
    assert parse_cursor("2026-12-04|task_1") is None and parse_cursor("3:") is None


def test_owner_scopes_are_distinct_key_tokens() -> None:
    scopes = {owner_scope(o) for o in ("a.b", "a_b", "ünï", None, "anonymous")}
    assert len(scopes) == 4  # None is the anonymous tenant
    assert all(s.isalnum() for s in scopes)
