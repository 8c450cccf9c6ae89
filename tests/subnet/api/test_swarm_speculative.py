"""The `speculative` request field through a live swarm: honoured (fewer chain steps, same greedy
text) and refused with a 400 naming it when malformed."""

from __future__ import annotations

import openai
import pytest
import requests
from test_swarm_api import swarm_api  # noqa: F401  (the module-scoped live swarm fixture)

pytestmark = pytest.mark.slow

PROMPT = "a = 1\nb = 2\nc = 3\n" * 6


def _count_steps(backend) -> list[int]:
    """Count the client's chain steps (one per remote `step` call) of the next generations."""
    model = backend._models["swarm-llama"]
    counter = [0]
    original = model.inference_session

    def counting(*args, **kwargs):
        session = original(*args, **kwargs)
        step = session.step

        def counted(hidden, position=None):
            counter[0] += 1
            return step(hidden, position)

        session.step = counted
        return session

    model.inference_session = counting
    return counter


def test_speculative_field_is_honoured(swarm_api):  # noqa: F811
    client = openai.OpenAI(base_url=swarm_api.url + "/v1", api_key="x", max_retries=0, timeout=300)
    counter = _count_steps(swarm_api.backend)
    texts, steps = {}, {}
    for value in (0, 6, None):
        counter[0] = 0
        extra = {} if value is None else {"speculative": value}
        r = client.completions.create(model="swarm-llama", prompt=PROMPT, max_tokens=40, temperature=0,
                                      extra_body=extra)
        assert r.usage.completion_tokens == 40 and r.choices[0].finish_reason == "length"
        texts[value], steps[value] = r.choices[0].text, counter[0]
    assert texts[6] == texts[0] == texts[None]  # greedy: identical with and without speculation
    assert steps[0] == 40  # one chain step per token without it
    assert steps[6] < 40 and steps[None] < 40  # drafts accepted: fewer round trips
    chat = client.chat.completions.create(model="swarm-llama", messages=[{"role": "user", "content": PROMPT}],
                                          max_tokens=8, temperature=0, extra_body={"speculative": False})
    assert isinstance(chat.choices[0].message.content, str)


@pytest.mark.parametrize("bad", [-1, 17, 2.5, "yes", [3]])
def test_malformed_speculative_is_a_400_naming_it(swarm_api, bad):  # noqa: F811
    r = requests.post(swarm_api.url + "/v1/completions", timeout=60,
                      json={"model": "swarm-llama", "prompt": "hi", "max_tokens": 2, "speculative": bad})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "speculative" in (err.get("param") or "") + err["message"]
