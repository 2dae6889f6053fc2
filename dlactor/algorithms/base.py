"""The algorithm interface: one process's part of the round protocol.

An algorithm is an async class built once per process by its settings (``build`` for a
learning node, ``server`` for an algorithm's own server processes). The node calls ``round``
once per round, in order, and writes the record it returns; it calls ``check`` on every
``Share`` as it arrives, before buffering it. Both get the :class:`~dlactor.node.node.Node`,
whose transport, mailbox, model, strategies and helpers (``exchange``, ``evaluate``,
``check_payload``, ``new_record``, ``close_record``) an algorithm composes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from dlactor.messages import Share

if TYPE_CHECKING:
    from dlactor.node.node import Node

__all__ = ["Algorithm", "Record"]

Record = dict[str, Any]


@runtime_checkable
class Algorithm(Protocol):
    async def round(self, node: Node, r: int) -> Record:
        """Run round ``r`` on ``node``; the round's record (``node.new_record`` starts one)."""
        ...

    def check(self, node: Node, share: Share) -> None:
        """``share`` arrived (for its round, from its sender): raise RemoteProtocolError if
        it cannot be used (its connection is dropped and logged; the node carries on)."""
        ...
