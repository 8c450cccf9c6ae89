"""`mesh-node status`: this node's class, stake, reputation, balances and last on-chain score."""

from __future__ import annotations

import argparse
import json

from chain.types import SCORE_SCALE, ChainError, NodeClass
from keys import NodeKey
from subnet.node.commands.register import (
    add_chain_argument,
    add_key_arguments,
    add_subnet_argument,
    format_tensor,
    hotkey_address,
    open_chain,
)
from subnet.node.errors import UserError

SCORE_LOOKBACK_EPOCHS = 16
# What each class means for the operator (Registered -> Idle -> Included -> Validator).
CLASS_NOTES = {
    NodeClass.REGISTERED: "in the activation queue: not yet in the subnet's node set",
    NodeClass.IDLE: "active, not yet scored: rises to Included after some accepted epochs",
    NodeClass.INCLUDED: "scored each epoch: rises to Validator with full reputation",
    NodeClass.VALIDATOR: "paid by score, may be elected, attests",
    NodeClass.DEACTIVATED: "deactivated",
}


def _delegate_total(chain, subnet_id: int) -> int | None:
    try:
        return chain.get_subnet_delegate_stake(subnet_id)
    except ChainError:
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_chain_argument(parser)
    add_subnet_argument(parser)
    add_key_arguments(parser)
    parser.add_argument("--node-key", help="find the node by this node key's peer id")
    parser.add_argument("--peer-id", help="find the node by peer id")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _last_score(chain, subnet_id: int, node_id: int, epoch: int) -> tuple[int, int] | None:
    for e in range(epoch, max(-1, epoch - SCORE_LOOKBACK_EPOCHS), -1):
        sub = chain.get_consensus_submission(subnet_id, e)
        if sub is None:
            continue
        for entry in sub.data:
            if entry.node_id == node_id:
                return e, entry.score
    return None


def run(args: argparse.Namespace) -> int:
    chain = open_chain(args)
    try:
        sid = args.subnet_id
        if args.node_key or args.peer_id:
            peer_id = NodeKey.load(args.node_key).peer_id if args.node_key else args.peer_id
            node = chain.get_node_by_peer_id(sid, peer_id)
            who = f"peer id {peer_id}"
        else:
            hotkey = hotkey_address(args, required=False)
            if hotkey is None:
                raise UserError("identify the node: --hotkey-key, --hotkey, --node-key or --peer-id")
            node = chain.get_node_by_hotkey(sid, hotkey)
            who = f"hotkey {hotkey}"
        subnet = chain.get_subnet(sid)
        epoch = chain.get_epoch_info(sid)
        out: dict = {
            "subnet_id": sid,
            "subnet": subnet.name,
            "subnet_state": subnet.state.value,
            "epoch": epoch.epoch,
            "block": epoch.block,
            "epoch_progress": round(epoch.progress, 3),
            "subnet_delegate_stake": _delegate_total(chain, sid),
        }
        if node is None:
            out["registered"] = False
        else:
            last = _last_score(chain, sid, node.node_id, epoch.epoch)
            out.update(
                registered=True,
                node_id=node.node_id,
                peer_id=node.peer_id,
                hotkey=node.hotkey,
                coldkey=node.coldkey,
                node_class=node.node_class.name,
                node_class_note=CLASS_NOTES.get(node.node_class, ""),
                classified_epoch=node.classified_epoch,
                multiaddr=node.multiaddr,
                stake=node.stake,
                reputation=node.reputation,
                coldkey_balance=chain.get_balance(node.coldkey),
                hotkey_balance=chain.get_balance(node.hotkey),
                elected_validator=chain.get_elected_validator(sid, epoch.epoch),
                last_score=None if last is None else {"epoch": last[0], "score": last[1]},
            )
        if args.json:
            print(json.dumps(out, indent=2, default=str))
            return 0
        print(f"subnet:      {sid} ({subnet.name}, {subnet.state.value})")
        print(f"epoch:       {epoch.epoch} (block {epoch.block}, {epoch.progress:.0%} done)")
        if node is None:
            print(f"node:        not registered ({who})")
            return 1
        print(f"node id:     {node.node_id}  peer id {node.peer_id}")
        print(f"class:       {node.node_class.name} ({out['node_class_note']})")
        print(f"stake:       {format_tensor(node.stake)}")
        if out["subnet_delegate_stake"] is not None:
            total = out["subnet_delegate_stake"]
            note = "" if total else " (none: the subnet earns no node emissions)"
            print(f"delegated:   {format_tensor(total)} to the subnet{note}")
        print(f"reputation:  {node.reputation:.3f}")
        print(f"balance:     coldkey {format_tensor(out['coldkey_balance'])}, "
              f"hotkey {format_tensor(out['hotkey_balance'])}")
        elected = out["elected_validator"]
        if elected is None:
            print("validator:   none elected this epoch")
        else:
            mine = " (this node)" if elected == node.node_id else ""
            print(f"validator:   node {elected} is elected this epoch{mine}")
        last = out["last_score"]
        if last is None:
            print(f"last score:  none in the last {SCORE_LOOKBACK_EPOCHS} epochs")
        else:
            print(f"last score:  {last['score'] / SCORE_SCALE:.6f} (epoch {last['epoch']})")
        return 0
    finally:
        chain.close()
