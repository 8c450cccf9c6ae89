"""Python client: route through hosters and generate (transformers-style API).

    from subnet.client import DistributedModelForCausalLM
    model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=[...])
    out = model.generate(input_ids, max_new_tokens=32)
"""

from subnet.client.generation import Completion, StreamEvent
from subnet.client.manager import ClientConfig
from subnet.client.model import DistributedModelForCausalLM
from subnet.client.routing import RouteError, Span, find_route
from subnet.client.sampling import SamplingParams
from subnet.client.session import SessionError

__all__ = [
    "ClientConfig", "Completion", "DistributedModelForCausalLM", "RouteError", "SamplingParams",
    "SessionError", "Span", "StreamEvent", "find_route",
]
