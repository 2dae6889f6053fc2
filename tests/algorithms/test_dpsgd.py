"""D-PSGD as an algorithm: only learning nodes send it shares."""

from __future__ import annotations

import pytest

from dlactor.messages import Payload, Share
from dlactor.sharing.ops import flatten
from dlactor.testing import build_network
from dlactor.wire.errors import RemoteProtocolError
from tests.conftest import small_plan


def test_a_share_from_a_process_that_is_not_a_learning_node_drops_its_connection() -> None:
    plan = small_plan("topology.kind=peer_sampler", "topology.degree=3")
    node = build_network(plan)[1][0]
    model = Payload({"params": flatten(node.model.parameters())})
    node.algorithm.check(node, Share(1, 0, model))  # a learning node: fine
    sampler = plan.config.nodes  # the peer sampler's process id
    with pytest.raises(RemoteProtocolError, match=f"process {sampler} is not a learning node"):
        node.algorithm.check(node, Share(sampler, 0, model))
