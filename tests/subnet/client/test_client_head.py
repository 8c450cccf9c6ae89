"""The LM head combines concurrent sessions into one product, with the same results."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from subnet.client.generation import ClientHead


def _head(vocab: int = 97, hidden: int = 16) -> ClientHead:
    g = torch.Generator().manual_seed(0)
    embed = torch.nn.Embedding(vocab, hidden)
    lm_head = torch.nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        embed.weight.copy_(torch.randn(vocab, hidden, generator=g))
        lm_head.weight.copy_(torch.randn(vocab, hidden, generator=g))
    return ClientHead(embed, LlamaRMSNorm(hidden), lm_head, vocab)


def test_concurrent_callers_are_combined_and_get_their_own_rows():
    head = _head()
    inputs = [torch.randn(1 + i % 2, 3, 16, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    expected = [head.logits(x) for x in inputs]
    calls: list[int] = []
    real = head._head

    def slow_head(last):
        calls.append(last.shape[0])
        time.sleep(0.05)  # callers arriving meanwhile queue up for the next combined product
        return real(last)

    head._head = slow_head
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(len(inputs))

    def run(i):
        barrier.wait()
        results[i] = head.logits(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) < len(inputs), "concurrent callers must share products"
    assert sum(calls) == sum(x.shape[0] for x in inputs)
    for i, x in enumerate(inputs):
        assert results[i].shape == (x.shape[0], 97)
        torch.testing.assert_close(results[i], expected[i], rtol=1e-5, atol=1e-5)


def test_errors_reach_every_combined_caller_and_the_head_recovers():
    head = _head()
    real = head._head
    head._head = lambda last: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        head.logits(torch.randn(1, 1, 16))
    head._head = real
    assert head.logits(torch.randn(1, 1, 16)).shape == (1, 97)
