"""Epidemic Learning (de Vos et al., NeurIPS 2023), as decentralizepy's EL-Oracle and EL-Local.

Each round every node trains, sends its model to ``s`` peers drawn at random, and averages
its own model uniformly with the models it received: x_i <- (x_i + sum_j x_j) / (1 + k).

EL-Oracle draws the round's whole directed graph from the run's seed (``oracle_targets``):
every process draws the same graph without a message, so a node knows exactly whom it will
hear from and waits for those in-neighbours only.

EL-Local lets each node draw its own targets from its contacts (its ``[topology]``
neighbours, else every other node) with its own generator, so nobody knows whom they will
hear from. A node learns that its round is in as decentralizepy's EL-Local does (its
"NotWorking" messages): it sends its model to its ``s`` targets and a notice (a Share with
no tensors, meta ``{"skip": True}``) to each of its other contacts, and waits until every
contact has sent it one or the other. The cost: ``contacts - s`` notices per node and
round, each a few dozen bytes on the wire, so with every node a contact a round costs
``nodes x (nodes - 1 - s)`` extra messages over the run (counted in ``msgs_sent``), and
each round waits for every contact, not only for the senders.

Targets change every round, so connections are kept open rather than closed after each
round (reopening would pay a handshake per target and round): a node ends up connected to
at most its contacts.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np

from dlactor.algorithms.base import Record
from dlactor.context import RoundContext
from dlactor.messages import Payload, Share
from dlactor.wire.errors import RemoteProtocolError

if TYPE_CHECKING:
    from dlactor.algorithms.settings import EpidemicSettings
    from dlactor.context import NodeEnv
    from dlactor.node.node import Node

__all__ = ["EpidemicLearning", "oracle_targets"]

SKIP = "skip"
#: Rounds of EL-Oracle's draw a node keeps (a share is checked against its round's draw).
ORACLE_CACHE = 8

# Spawn-key tags, so that EL's streams are not another strategy's (a dynamic topology
# draws from spawn key (round,), random-k sharing from (node, round)).
_ORACLE, _LOCAL = 0xE10, 0xE11


def oracle_targets(seed: int, round: int, nodes: int, s: int) -> list[list[int]]:
    """EL-Oracle's graph for ``round``: node i sends to ``targets[i]``, ``s`` distinct nodes
    other than i, drawn from (``seed``, ``round``) alone so that every process draws it."""
    if not 0 < s < nodes:
        raise ValueError(f"s = {s} must be in [1, nodes - 1 = {nodes - 1}]")
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(_ORACLE, round)))
    if s * s <= nodes:
        picks = _distinct_rows(rng, nodes, s)
    else:  # rejection would redraw most rows: sample each row without replacement
        picks = np.stack([rng.choice(nodes - 1, size=s, replace=False) for _ in range(nodes)])
    # Drawn among the nodes - 1 others: step over i itself.
    picks += picks >= np.arange(nodes)[:, None]
    return [[int(t) for t in row] for row in picks]


def _distinct_rows(rng: np.random.Generator, nodes: int, s: int) -> np.ndarray:
    """``nodes`` rows of ``s`` distinct values in [0, nodes - 1), uniformly: rows drawn with
    repeats are redrawn whole. With s^2 <= nodes a row repeats with probability < 1/2, so
    this takes O(nodes x s) work rather than a per-row loop."""
    picks = rng.integers(nodes - 1, size=(nodes, s))
    while True:
        ordered = np.sort(picks, axis=1)
        bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if bad.size == 0:
            return picks
        picks[bad] = rng.integers(nodes - 1, size=(bad.size, s))


def is_notice(payload: Payload) -> bool:
    """An EL-Local notice ("not drawn this round"), not a model."""
    return SKIP in payload.meta


class EpidemicLearning:
    """One node's EL rounds: train, send to ``s`` random peers, average what came in."""

    checkpointed = ("_rng",)  # EL-Local's own draws

    def __init__(self, *, settings: EpidemicSettings, env: NodeEnv) -> None:
        self.node, self.s, self.seed, self.nodes = env.node, settings.s, env.seed, env.nodes
        self.oracle = settings.variant == "oracle"
        given = env.config is not None and "topology" in env.config.model_fields_set
        if given and not self.oracle:
            contacts = frozenset(int(j) for j in env.graph.neighbors(env.node))
        else:
            contacts = frozenset(range(env.nodes)) - {env.node}
        if len(contacts) < self.s:
            raise ValueError(
                f"node {env.node} has {len(contacts)} neighbour(s) in [topology]'s graph, "
                f"fewer than algorithm.s = {self.s}"
            )
        #: Who may send this node anything: the nodes it waits for come from these.
        self.contacts = contacts
        self._contacts = sorted(contacts)
        self._drawn: dict[int, tuple[list[int], frozenset[int]]] = {}
        # EL-Local's own draws: no other process uses (or could replay) this generator.
        self._rng = np.random.default_rng(
            np.random.SeedSequence(entropy=env.seed, spawn_key=(_LOCAL, env.node))
        )

    def _oracle(self, r: int) -> tuple[list[int], frozenset[int]]:
        """EL-Oracle's round ``r`` for this node: its targets and its in-neighbours (kept for
        a few rounds: shares for later rounds are checked on arrival)."""
        drawn = self._drawn.get(r)
        if drawn is None:
            targets = oracle_targets(self.seed, r, self.nodes, self.s)
            senders = frozenset(j for j, row in enumerate(targets) if self.node in row)
            drawn = self._drawn[r] = (sorted(targets[self.node]), senders)
            while len(self._drawn) > ORACLE_CACHE:
                del self._drawn[min(self._drawn)]
        return drawn

    def draw(self, r: int) -> tuple[list[int], frozenset[int]]:
        """This node's targets in round ``r``, and the nodes it waits for then: its
        in-neighbours (EL-Oracle), or every contact (EL-Local)."""
        if self.oracle:
            return self._oracle(r)
        drawn = self._rng.choice(len(self._contacts), size=self.s, replace=False)
        return sorted(self._contacts[i] for i in drawn), self.contacts

    async def round(self, node: Node, r: int) -> Record:
        ctx = RoundContext(node=node.node, round=r, model=node.model)
        record, before = node.new_record(r)
        stats, t_train = await node.train(ctx)
        targets, waits_for = self.draw(r)
        share = Share(node.node, r, await node.sharing.outgoing(ctx))
        node.check_own(share)
        ctx.sent = share.payload
        # One round timeout for the sends and the wait, as in Node.exchange: a peer that
        # stops reading must fail the round as surely as one that stops sending.
        deadline = asyncio.get_running_loop().time() + node.round_timeout
        if not self.oracle:  # the tiny notices first: they let the others finish sooner
            notice = Share(node.node, r, Payload(meta={SKIP: True}))
            await node.send(self.contacts.difference(targets), notice, deadline)
        await node.send(targets, share, deadline)
        got = await node.collect(r, waits_for, node.round_timeout, deadline=deadline)
        received = {j: p for j, p in got.items() if not is_notice(p)}
        ctx.peers = frozenset(received)
        weight = 1.0 / (1 + len(received))
        ctx.weights = {j: weight for j in [node.node, *received]}
        await node.aggregate(ctx, received)
        record.update(train_loss=stats.loss, degree=len(received), targets=targets, t_train=t_train)
        return await node.close_record(record, before, ctx)

    def check(self, node: Node, share: Share) -> None:
        """Only a contact may send; a notice is exactly ``{"skip": True}`` (EL-Local only),
        anything else a model this node can aggregate.

        In EL-Oracle only the round's in-neighbours send (the seeded draw says who)."""
        sender, payload = share.sender, share.payload
        if sender not in self.contacts:
            raise RemoteProtocolError(f"node {sender} is not a contact of node {node.node}")
        if not is_notice(payload):
            if self.oracle and sender not in self._oracle(share.round)[1]:
                raise RemoteProtocolError(
                    f"node {sender} is not among node {node.node}'s senders in round {share.round}"
                )
            node.check_payload(sender, payload)
        elif self.oracle:
            raise RemoteProtocolError(f"node {sender} sent a notice: EL-Oracle has none")
        elif payload.tensors or len(payload.meta) != 1 or payload.meta[SKIP] is not True:
            raise RemoteProtocolError(f"node {sender} sent a malformed notice")
