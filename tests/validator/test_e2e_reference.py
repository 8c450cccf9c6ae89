"""End to end on 127.0.0.1 (devnet chain process, hivemind DHT processes): two hosters serve
every block of a tiny model, one shades its outputs by 1%.

- a validator holding the weights publishes reference outputs: every validator scores the
  honest hoster >= 0.99 and the shader <= 0.05, and all of them attest the same integers;
- nobody holds the weights: every block is marked disputed and neither hoster is zeroed.

The shading is a test-only `HosterDuty` subclass defined here and injected by the test
(`hoster_duty_cls`): production code has no switch that perturbs outputs.
"""

from __future__ import annotations

import pytest
import torch

from hoster.duty import HosterDuty
from tests.validator.support import ChainNet, Node
from validator.reference import ReferenceModel, ReferencePublisher

pytestmark = pytest.mark.slow

BLOCK_TIME = 0.4
EPOCH_LENGTH = 20
NUM_BLOCKS = 8


class ShadingHosterDuty(HosterDuty):
    """Test-only: a hoster whose block outputs are 1% larger than the block computes."""

    def run_block(self, spec, block) -> torch.Tensor:
        return super().run_block(spec, block) * 1.01


def _network(tmp, model: str, *, reference: bool):
    net = ChainNet(tmp, block_time=BLOCK_TIME, epoch_length=EPOCH_LENGTH)
    nodes: list[Node] = []
    try:
        ops = [net.add_operator() for _ in range(3)]
        net.activate()
        peers: list[str] = []
        for op in ops:
            nodes.append(Node(net, op, peers))
            peers = peers or nodes[0].maddrs
        honest, shader, validator = nodes
        honest.start_roles(model=model, blocks=(0, NUM_BLOCKS))
        shader.start_roles(model=model, blocks=(0, NUM_BLOCKS), hoster_duty_cls=ShadingHosterDuty)
        ref = ReferencePublisher(validator.dht, validator.op.node_key, net.subnet_id,
                                 ReferenceModel(model, NUM_BLOCKS)) if reference else None
        validator.start_roles(reference=ref)
        return net, nodes
    except BaseException:
        for n in nodes:
            n.stop()
        net.close()
        raise


def _scored_epochs(net: ChainNet, nodes: list[Node], count: int, spare: int = 4) -> list[int]:
    """`count` epochs in which every validator scored both hosters' valid reveals (under load a hoster
    still warming up can miss a window; such epochs are skipped, at most `spare` of them)."""
    honest, shader, _ = nodes
    start = net.epoch_info().epoch + 1  # an epoch whose every window every node saw
    found: list[int] = []
    for e in range(start, start + count + spare):
        net.wait_epoch(e + 2, timeout=EPOCH_LENGTH * BLOCK_TIME * 8)  # scored in e, proposed and settled in e+1
        reports = [n.validator.reports.get(e) for n in nodes]
        if all(r is not None and r["hoster_reveals"].get(honest.peer_id) == "valid"
               and r["hoster_reveals"].get(shader.peer_id) == "valid" for r in reports):
            found.append(e)
        if len(found) == count:
            return found
    raise AssertionError(f"only epochs {found} of {start}..{start + count + spare - 1} had both hosters' reveals")


def _check_attested(net: ChainNet, nodes: list[Node], epochs: list[int]) -> None:
    for e in epochs:
        sets = [n.validator.epochs[e].proposal for n in nodes]
        assert sets[0] and all(s == sets[0] for s in sets), "validators computed different integers"
        r = net.owner.get_epoch_result(net.subnet_id, e + 1)  # the proposal of e is made (and settled) in e+1
        assert r is not None and r["outcome"] == "accepted", r
        assert r["attestors"] == r["validators"] == len(nodes), r


def test_reference_scores_honest_high_and_shader_low(tmp_path, tiny_llama):
    net, nodes = _network(tmp_path, tiny_llama, reference=True)
    try:
        honest, shader, validator = nodes
        epochs = _scored_epochs(net, nodes, 2)
        for e in epochs:
            for n in nodes:  # validators without the weights score with the published reference too
                rep = n.validator.reports[e]
                assert rep["reference_reveals"] == {validator.peer_id: "valid"}, rep
                assert set(rep["referenced_blocks"]) == {str(b) for b in range(NUM_BLOCKS)}
                assert rep["disputed_blocks"] == {}
                assert rep["hoster_scores"][honest.peer_id] >= 0.99, rep["hoster_scores"]
                assert rep["hoster_scores"][shader.peer_id] <= 0.05, rep["hoster_scores"]
        _check_attested(net, nodes, epochs)
    finally:
        for n in nodes:
            n.stop()
        net.close()


def test_without_reference_the_block_is_disputed_not_zeroed(tmp_path, tiny_llama):
    net, nodes = _network(tmp_path, tiny_llama, reference=False)
    try:
        honest, shader, _ = nodes
        epochs = _scored_epochs(net, nodes, 2)
        for e in epochs:
            for n in nodes:
                rep = n.validator.reports[e]
                assert rep["reference_reveals"] == {}
                assert rep["disputed_blocks"] == {str(b): sorted([honest.peer_id, shader.peer_id])
                                                  for b in range(NUM_BLOCKS)}, rep
                assert rep["hoster_scores"][honest.peer_id] > 0 and rep["hoster_scores"][shader.peer_id] > 0
        _check_attested(net, nodes, epochs)
    finally:
        for n in nodes:
            n.stop()
        net.close()
