"""Pure epoch-consensus logic (no I/O, no project imports): phases, probes, canonical
encodings, commit-reveal, deterministic scoring and attestation decisions.

The roles (`hoster/duty.py`, `validator/duty.py`) feed it records and act on its answers;
`subnet/swarm/record_admission.py` carries the records through the DHT and admits them.

One epoch `e` (progress `p` from chain blocks, `phases.py`)::

    p [0, .15)   elected validator of e: propose the on-chain set of e-1, post the probe of e
                 (others may post it from .10); other validators attest as soon as the
                 submission equals their own set of e-1 (`attestation.compare`)
    p [.15, .50) hosters: fetch the probe, check it against the seed (`probe.check_probe`), run
                 x_i through block i for every served i, commit sha256(salt || canonical bytes)
                 (`encoding.encode_block_outputs` binds subnet, epoch and signer; `commit.py`)
    p [.50, .60) hosters reveal salt + outputs; validators reveal their score set of e-1
    p [.60, 1)   validators (one grace block later, snapshots frozen): verify reveals, score
                 hosters (`scoring.score_hosters`) and validators (`scoring.score_validators`),
                 build the on-chain integers of e (`scoring.onchain_scores`), commit the hash
                 of their own hoster score set of e (`encoding.encode_score_set`)

Determinism: identical integers on every node from the same records (sorted peer ids,
fixed-order float64 reductions, `math.fsum`, exact rationals after the single float -> int
conversion `scoring.to_fixed`); tests check permutation invariance and equality across
processes.
"""
