"""The node's face: CLI, commands, config, node assembly, devnet, chat, processes."""
