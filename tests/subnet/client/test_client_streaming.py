"""Incremental detokenization never splits UTF-8; stop strings are held back and cut exactly."""

from __future__ import annotations

import pytest

from subnet.client.streaming import IncrementalDetokenizer, StopStringMatcher

TEXTS = ["Unicode: café, naïve, 日本語, emoji 🙂, Ελληνικά, русский.", "🙂🙂日本 mixed ascii 语 🐍!",
         "plain ascii only"]


@pytest.fixture(scope="module")
def tokenizer():
    from subnet.model.tiny_model import build_tokenizer

    return build_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_are_whole_characters_and_concatenate(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    # the byte-level tokenizer really splits some characters across tokens
    if text != TEXTS[2]:
        assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text
    for d in deltas:
        assert "\ufffd" not in d
        d.encode("utf-8")  # no lone surrogates either


def test_byte_by_byte_tokens(tokenizer):
    """Force one token per byte: a 4-byte emoji arrives in four pieces."""
    byte_ids = []
    for ch in "a🙂b日":
        for b in ch.encode("utf-8"):
            # the byte-level alphabet maps each byte to one token
            from tokenizers.pre_tokenizers import ByteLevel  # noqa: F401
            tok = _byte_token(tokenizer, b)
            byte_ids.append(tok)
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add(i) for i in byte_ids]
    assert deltas == ["a", "", "", "", "🙂", "b", "", "", "日"]


def _byte_token(tokenizer, byte: int) -> int:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    mapping = dict(zip(bs, map(chr, cs)))
    return tokenizer.convert_tokens_to_ids(mapping[byte])


def test_incomplete_tail_is_flushed_at_end(tokenizer):
    ids = [_byte_token(tokenizer, b) for b in "x🙂".encode()[:3]]
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.add(i) for i in ids] == ["x", "", ""]
    assert detok.flush() == "\ufffd"


def test_stop_string_split_across_deltas():
    m = StopStringMatcher(["STOP"])
    outs = [m.feed(d) for d in ["hello S", "T", "O", "P and more"]]
    assert outs == [("hello ", False), ("", False), ("", False), ("", True)]
    assert m.stopped and m.feed("x") == ("", True)


def test_false_start_is_released():
    m = StopStringMatcher(["STOP", "\n\n"])
    assert m.feed("ST") == ("", False)
    assert m.feed("OOP\n") == ("STOOP", False)
    assert m.flush() == "\n"


def test_earliest_stop_wins():
    m = StopStringMatcher(["bc", "abcd"])
    assert m.feed("xabcd") == ("x", True)  # "abcd" starts before "bc"


def test_no_stops_passthrough():
    m = StopStringMatcher([])
    assert m.feed("abc") == ("abc", False) and m.flush() == ""


def test_random_token_streams_concatenate_to_decode(tokenizer):
    """Random ids (invalid and incomplete UTF-8 everywhere, as from a random model)."""
    import random

    rng = random.Random(0)
    vocab = len(tokenizer)
    for _ in range(200):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        detok = IncrementalDetokenizer(tokenizer)
        deltas = [detok.add(i) for i in ids]
        tail = detok.flush()
        assert "".join(deltas) + tail == tokenizer.decode(ids, skip_special_tokens=True)
        assert detok.text == "".join(deltas) + tail


def test_never_emits_a_prefix_of_a_character(tokenizer):
    """A held character is never replaced by U+FFFD in a delta when its bytes do complete."""
    ids = [_byte_token(tokenizer, b) for b in "ab日c🙂".encode()]
    detok = IncrementalDetokenizer(tokenizer)
    out = [detok.add(i) for i in ids]
    assert "".join(out) == "ab日c🙂" and "\ufffd" not in "".join(out)
