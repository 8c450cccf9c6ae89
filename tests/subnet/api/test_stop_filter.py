"""Stop strings on streamed text: same result however the text is chunked."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from subnet.api.generation import StopFilter

ALPHABET = "ab\n\u00e9"


def _run(chunks: list[str], stops: list[str]) -> tuple[str, bool]:
    f = StopFilter(stops)
    out = "".join(f.push(c) for c in chunks)
    return out + f.flush(), f.stopped


def _expected(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(ALPHABET, max_size=4), max_size=12),
       st.lists(st.text(ALPHABET, min_size=1, max_size=3), max_size=3))
def test_chunking_never_changes_the_result(chunks, stops):
    assert _run(chunks, stops) == _expected("".join(chunks), stops)


def test_never_emits_a_prefix_of_a_stop_string_early():
    f = StopFilter(["STOP"])
    assert f.push("hello ST") == "hello "
    assert f.push("O") == ""
    assert f.push("P and more") == "" and f.stopped
    g = StopFilter(["STOP"])
    assert g.push("ST") == "" and g.push("ART") == "START"
