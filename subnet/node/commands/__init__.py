"""CLI commands: one module per command, each with `add_arguments(parser)` and `run(args) -> int`.

`HELP` is the one-line help of every command; `subnet.node.cli` imports a command module only
when that command runs, so `mesh-node --help` stays fast.
"""

HELP: dict[str, str] = {
    "keygen": "create a node key (peer id) and a chain account key",
    "chain": "run the embedded devnet chain (blocks, SQLite state, HTTP API)",
    "register": "register this node on a subnet with a stake",
    "activate": "activate a registered subnet (subnet owner)",
    "stake": "add stake to this node",
    "unstake": "remove stake from this node (starts unbonding)",
    "status": "show this node's class, stake, reputation, balance and last score",
    "api": "serve the OpenAI-compatible HTTP API and dashboard",
    "chat": "streaming terminal chat against a swarm or an API URL",
    "devnet": "run a whole subnet on this machine: chain, hosters, validator, API",
    "config": "configuration file helpers (config init)",
}
