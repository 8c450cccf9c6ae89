"""Hypertensor backend: `client.HypertensorChain` over substrate-interface (the `Network` pallet).

connection.py holds the websocket and its retry policy, extrinsics.py composes and signs
calls from the runtime metadata, records.py decodes the pallet's storage into chain types.
"""
