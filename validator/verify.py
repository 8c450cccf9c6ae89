"""Check reveals against commits (hoster outputs and validator score sets).

A reveal counts only if the same signer committed in the same epoch and the reveal opens
that commit; admission (`subnet.swarm.record_admission`) has already checked signatures,
signer class, epoch and windows. Everything decoded here is bounded before decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from consensus.commit import verify_commitment
from consensus.encoding import EncodingError, decode_tensor, encode_block_outputs, encode_score_set, make_score_set
from consensus.probe import ProbeSpec
from subnet.swarm.epoch_records import ConsensusRecordError, decode_b64
from subnet.swarm.records import OpenedRecord

VALID = "valid"


@dataclass
class Verified:
    """Valid opened values per signer plus a status (VALID or the reason) for every signer seen."""

    values: dict
    status: dict[str, str]


def verify_hoster_reveals(subnet_id: int, epoch: int, spec: ProbeSpec, commits: dict[str, OpenedRecord],
                          reveals: dict[str, dict], problems: dict[str, str] | None = None) -> Verified:
    """Outputs {peer: {block: float32 tensor}} of hosters whose reveal body opens their commit.

    `reveals`: reassembled reveal bodies ({salt, outputs}); `problems`: reasons for committers
    whose reveal could not be reassembled (reported as their status).
    """
    problems = problems or {}
    values: dict[str, dict[int, torch.Tensor]] = {}
    status: dict[str, str] = {}
    max_tensor_bytes = 64 + 4 * spec.batch * spec.seq * spec.hidden
    for peer, commit, reveal in _paired(commits, reveals, problems, status):
        try:
            blocks = commit.payload["blocks"]
            outs = reveal["outputs"]
            if sorted(int(k) for k in outs) != blocks:
                raise ValueError("revealed blocks differ from the committed ones")
            if any(b not in spec.blocks for b in blocks):
                raise ValueError("block outside the probe")
            raw = {int(k): decode_b64(v, max_tensor_bytes) for k, v in outs.items()}
            salt = bytes.fromhex(reveal["salt"])
            canonical = encode_block_outputs(subnet_id, epoch, peer, raw)
            if not verify_commitment(bytes.fromhex(commit.payload["commit"]), salt, canonical):
                raise ValueError("reveal does not match the commit")
            tensors = {}
            for b, data in raw.items():
                t = decode_tensor(data, expected_shape=spec.shape)
                if t.dtype != torch.float32:
                    raise ValueError(f"block {b} output is {t.dtype}, probe dtype is float32")
                tensors[b] = t
        except (ValueError, EncodingError, ConsensusRecordError, KeyError, TypeError) as e:
            status[peer] = f"invalid: {e}"[:200]
            continue
        values[peer] = tensors
        status[peer] = VALID
    return Verified(values, status)


def _paired(commits: dict[str, OpenedRecord], reveals: dict[str, dict], problems: dict[str, str],
            status: dict[str, str]):
    """(peer, commit, reveal) for peers with both, in peer order; the others get their status here."""
    for peer in sorted(set(commits) | set(reveals)):
        commit, reveal = commits.get(peer), reveals.get(peer)
        if commit is None:
            status[peer] = "reveal without commit"
        elif reveal is None:
            status[peer] = problems.get(peer, "no reveal")
        else:
            yield peer, commit, reveal


def verify_validator_reveals(subnet_id: int, scores_epoch: int, commits: dict[str, OpenedRecord],
                             reveals: dict[str, dict], problems: dict[str, str] | None = None) -> Verified:
    """Score sets {peer: {hoster peer: fixed score}} of validators whose reveal body opens their commit."""
    problems = problems or {}
    values: dict[str, dict[str, int]] = {}
    status: dict[str, str] = {}
    for peer, commit, reveal in _paired(commits, reveals, problems, status):
        try:
            if reveal["scores_epoch"] != scores_epoch:
                raise ValueError("reveal is for another epoch")
            score_set = make_score_set(subnet_id, scores_epoch, peer, reveal["scores"])
            salt = bytes.fromhex(reveal["salt"])
            if not verify_commitment(bytes.fromhex(commit.payload["commit"]), salt, encode_score_set(score_set)):
                raise ValueError("reveal does not match the commit")
        except (ValueError, EncodingError, KeyError, TypeError) as e:
            status[peer] = f"invalid: {e}"[:200]
            continue
        values[peer] = score_set.as_dict()
        status[peer] = VALID
    return Verified(values, status)
