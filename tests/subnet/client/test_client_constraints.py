"""The grammar mask in the client's sampler: per-row matchers, EOS once complete, 400-able errors."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from subnet.client.constraints import Grammar, GrammarError
from subnet.client.sampling import Sampler, SamplingParams
from subnet.model.tiny_model import build_tokenizer

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                           "b": {"enum": ["x", "yy"]}},
          "required": ["a", "b"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _run(tok, params: SamplingParams, rows: int, steps: int = 40) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    sampler = Sampler(params, torch.zeros(rows, 1, dtype=torch.long), len(tok))
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    for step in range(steps):
        tokens = sampler(torch.randn(rows, len(tok), generator=gen) * 5, step).tolist()
        for r, t in enumerate(tokens):
            if not done[r]:
                if t == tok.eos_token_id:
                    done[r] = True
                else:
                    out[r].append(t)
        if all(done):
            return out
    raise AssertionError("a row never ended")


@pytest.mark.parametrize("do_sample", [False, True])
def test_every_row_is_valid_json_and_ends_with_eos(tok, do_sample):
    g = Grammar.json_schema(tok, SCHEMA)
    params = SamplingParams(max_new_tokens=40, do_sample=do_sample, seed=5, top_k=50, constraint=g)
    for ids in _run(tok, params, rows=8):
        jsonschema.validate(json.loads(tok.decode(ids)), SCHEMA)


def test_wider_logits_than_the_tokenizer_are_masked(tok):
    g = Grammar.json_object(tok)
    state = g.start(1)
    masked = state.mask(torch.zeros(1, len(tok) + 64))
    assert torch.isinf(masked[0, len(tok):]).all()  # padded vocabulary rows can never be sampled
    assert masked[0, tok.convert_tokens_to_ids("{")] == 0.0


@pytest.mark.parametrize("schema", [{"type": "string", "pattern": "(?<=a)b"}, {"$ref": "#/$defs/none"},
                                    {"type": "object", "properties": {"a": {"type": "strin"}}}])
def test_uncompilable_schemas_raise_grammar_error(tok, schema):
    with pytest.raises(GrammarError) as e:
        Grammar.json_schema(tok, schema)
    assert str(e.value) and "\n" not in str(e.value)
