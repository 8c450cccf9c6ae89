"""Run the devnet chain as a child process (tests, `mesh-node devnet`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from chain.devnet.config import DEFAULT_BLOCK_TIME, DEFAULT_EPOCH_LENGTH, check_timing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevnetProcess:
    """Handle of a running chain process: `.url`, `.stop()`, `.kill()`, `.restart()`."""

    def __init__(self, db_path: Path, port: int, args: list[str], log_path: Path | None):
        self.db_path = db_path
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._args = args
        self._log_path = log_path
        self.proc: subprocess.Popen | None = None

    def _spawn(self, timeout: float) -> None:
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chain.devnet.server", *self._args],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"devnet chain exited with code {self.proc.returncode} (log: {self._log_path})")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"devnet chain at {self.url} not healthy within {timeout}s")

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it lingers."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """kill -9: no shutdown code runs (crash test)."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def hold_blocks(self, timeout: float = 10.0) -> int:
        """Stop block production (the chain keeps answering); returns the block it stays at."""
        return self._set_hold(signal.SIGUSR1, True, timeout)

    def resume_blocks(self, timeout: float = 10.0) -> int:
        """Produce blocks again, the next one `block_time` from now."""
        return self._set_hold(signal.SIGUSR2, False, timeout)

    def _set_hold(self, sig: signal.Signals, held: bool, timeout: float) -> int:
        assert self.proc is not None and self.alive(), "devnet chain not running"
        self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = httpx.get(self.url + "/health", timeout=5.0).json()
            if health.get("held") is held:
                return int(health["block"])
            time.sleep(0.05)
        raise RuntimeError(f"devnet chain at {self.url} did not {'hold' if held else 'resume'} blocks")

    def restart(self, timeout: float = 30.0) -> None:
        """Start again on the same database and port (after stop or kill)."""
        self.stop()
        self._spawn(timeout)

    def __enter__(self) -> DevnetProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_devnet_process(
    db_path: str | os.PathLike,
    port: int = 0,
    block_time: float = DEFAULT_BLOCK_TIME,
    epoch_length: int = DEFAULT_EPOCH_LENGTH,
    *,
    params: dict[str, Any] | None = None,
    log_path: str | os.PathLike | None = None,
    timeout: float = 30.0,
) -> DevnetProcess:
    """Start `python -m chain.devnet.server` and wait until it answers /health.

    `port=0` picks a free port. `params` sets other genesis parameters (DevnetConfig fields).
    Bad timing values raise ValueError here rather than as a child that exits at once.
    """
    check_timing(block_time, epoch_length)
    port = port or free_port()
    args = ["--db", str(db_path), "--port", str(port), "--block-time", str(block_time),
            "--epoch-length", str(epoch_length), "--quiet"]  # fmt: skip
    for key, value in (params or {}).items():
        args += ["--param", f"{key}={value}"]
    handle = DevnetProcess(Path(db_path), port, args, Path(log_path) if log_path else None)
    handle._spawn(timeout)
    return handle
