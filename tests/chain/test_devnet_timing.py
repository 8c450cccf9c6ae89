"""Epoch/block-time defaults and their validation have one home (chain/devnet/config.py)."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys

import pytest

from chain.devnet import process, server
from chain.devnet.config import DEFAULT_BLOCK_TIME, DEFAULT_EPOCH_LENGTH, MIN_EPOCH_LENGTH, DevnetConfig, check_timing
from consensus.phases import WINDOWS, block_window
from subnet.node.commands import chain as chain_command, devnet as devnet_command
from subnet.node.devnet import DevnetOptions

TOO_SHORT = 4  # below the minimum; the old `mesh-node devnet` check (>= 5) rejected it too


def _cli(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "subnet.node.cli", *argv], capture_output=True, text=True, timeout=90, cwd=str(tmp_path)
    )


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("mesh-node: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("flags", [["--epoch-length", str(TOO_SHORT)], ["--block-time", "0"]])
def test_chain_and_devnet_reject_the_same_values_the_same_way(tmp_path, flags):
    db = tmp_path / "c.db"
    chain_err = _one_line_error(_cli(tmp_path, "chain", "--db", str(db), "--port", "0", *flags))
    devnet_err = _one_line_error(_cli(tmp_path, "devnet", "--dir", str(tmp_path / "devnet"), *flags))
    assert chain_err == devnet_err
    assert not db.exists()  # rejected before the database is created


def test_minimum_epoch_length_is_accepted_and_named_in_the_error():
    check_timing(DEFAULT_BLOCK_TIME, MIN_EPOCH_LENGTH)
    with pytest.raises(ValueError, match=f"at least {MIN_EPOCH_LENGTH}"):
        check_timing(DEFAULT_BLOCK_TIME, MIN_EPOCH_LENGTH - 1)


def test_minimum_gives_every_phase_window_a_block():
    for length in range(MIN_EPOCH_LENGTH, MIN_EPOCH_LENGTH + 200):
        for kind in WINDOWS:
            first, last = block_window(kind, 0, length)
            assert first <= last, (kind, length)


def test_defaults_agree_everywhere():
    expected = (DEFAULT_BLOCK_TIME, DEFAULT_EPOCH_LENGTH)
    for add_arguments in (chain_command.add_arguments, devnet_command.add_arguments):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args([])
        assert (args.block_time, args.epoch_length) == expected
    for fn in (server.run_chain, process.start_devnet_process):
        params = inspect.signature(fn).parameters
        assert (params["block_time"].default, params["epoch_length"].default) == expected
    assert (DevnetConfig().block_time, DevnetConfig().epoch_length) == expected
    assert (DevnetOptions().block_time, DevnetOptions().epoch_length) == expected


def test_process_launcher_rejects_before_spawning(tmp_path):
    with pytest.raises(ValueError, match="--epoch-length"):
        process.start_devnet_process(tmp_path / "c.db", epoch_length=TOO_SHORT)
    assert not (tmp_path / "c.db").exists()


def test_server_cli_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "chain.devnet.server", "--db", str(tmp_path / "c.db"), "--port", "0",
         "--epoch-length", str(TOO_SHORT)],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"python -m chain.devnet.server: error: {_message(DEFAULT_BLOCK_TIME, TOO_SHORT)}"
    ]


def _message(block_time: float, epoch_length: int) -> str:
    with pytest.raises(ValueError) as info:
        check_timing(block_time, epoch_length)
    return str(info.value)



def test_block_production_holds_and_resumes(tmp_path):
    """DevnetProcess.hold_blocks freezes chain time (a test restarting a node mid-epoch uses it) while
    reads keep being served, even when the hold lands while a block is being produced (blocks every
    20 ms here, five holds); resume_blocks produces again, with no burst of missed blocks."""
    import time

    import httpx

    with process.start_devnet_process(tmp_path / "c.db", block_time=0.02, epoch_length=MIN_EPOCH_LENGTH) as chain:
        for _ in range(5):
            held_at = chain.hold_blocks()
            time.sleep(0.3)
            health = httpx.get(chain.url + "/health", timeout=5).json()
            assert health["held"] is True and health["block"] == held_at
            t0 = time.monotonic()
            assert chain.resume_blocks() >= held_at
            while httpx.get(chain.url + "/block", timeout=5).json()["block"] < held_at + 2:
                assert time.monotonic() - t0 < 30
                time.sleep(0.01)
            block = httpx.get(chain.url + "/block", timeout=5).json()["block"]
            assert block <= held_at + 2 + (time.monotonic() - t0) / 0.02  # no catch-up for the held time
