"""Pure epoch-consensus logic (no I/O, no project imports): phases, probes, canonical
encodings, commit-reveal, deterministic scoring and attestation decisions.

The roles (`hoster/duty.py`, `validator/duty.py`) feed it records and act on its answers.
"""
