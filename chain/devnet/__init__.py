"""The embedded devnet chain: state rules over SQLite, HTTP server, client, process helper."""

from chain.devnet.client import DevnetChain
from chain.devnet.config import DevnetConfig, dev_accounts
from chain.devnet.process import DevnetProcess, start_devnet_process

__all__ = ["DevnetChain", "DevnetConfig", "DevnetProcess", "dev_accounts", "start_devnet_process"]
