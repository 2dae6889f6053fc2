"""Secure aggregation's pieces on their own: the X25519 pairwise secrets, the masks' streams,
the fixed point, and a receiver's sum over masked messages (in-memory, no processes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from dlactor.context import Roster, RoundContext
from dlactor.messages import Payload
from dlactor.security.agreement import PairwiseKeys
from dlactor.sharing.ops import flatten
from dlactor.sharing.secure import (
    MASKED,
    SecureRangeError,
    SecureSharing,
    decode,
    encode,
    headroom,
    mask_for,
)
from dlactor.wire.errors import RemoteProtocolError

F = 26  # the default fraction_bits


def keyring(n: int, run_id: str = "run-a") -> list[PairwiseKeys]:
    keys = [PairwiseKeys(i, run_id) for i in range(n)]
    book = {k.process: k.public for k in keys}
    for k in keys:
        k.learn(book)
    return keys


def test_keys_agree_pairwise_and_differ_across_pairs_and_runs() -> None:
    a = keyring(4)
    for i in range(4):
        for j in range(4):
            if i != j:
                assert a[i].secret(j) == a[j].secret(i)
    pairs = {a[i].secret(j) for i in range(4) for j in range(i + 1, 4)}
    assert len(pairs) == 6  # every pair its own secret
    b = keyring(4)  # a second run of the same nodes: fresh key pairs
    assert all(a[0].secret(j) != b[0].secret(j) for j in (1, 2, 3))
    with pytest.raises(ValueError, match="itself"):
        a[0].secret(0)


def test_the_run_id_is_bound_into_the_secret() -> None:
    """Same key pairs, another run id: other secrets (a replayed key cannot reuse masks)."""
    a = PairwiseKeys(0, "run-a")
    b = PairwiseKeys(1, "run-a")
    a.learn({1: b.public})
    b.learn({0: a.public})
    same = a.secret(1)
    a2 = PairwiseKeys.__new__(PairwiseKeys)
    a2.process, a2.run_id, a2._key, a2.public = 0, "run-b", a._key, a.public
    a2._publics, a2._secrets = {1: b.public}, {}
    assert a2.secret(1) != same


def test_a_bad_or_foreign_agreement_key_is_refused() -> None:
    k = PairwiseKeys(0, "r")
    with pytest.raises(ValueError, match="32 bytes"):
        k.learn({1: b"short"})
    with pytest.raises(ValueError, match="another agreement key"):
        k.learn({0: PairwiseKeys(0, "r").public})
    with pytest.raises(LookupError, match="no agreement key"):
        k.secret(5)


def test_masks_differ_by_round_and_receiver_and_agree_on_both_ends() -> None:
    k = keyring(3)
    m = k[0].mask(1, receiver=2, round=7, words=1000)
    assert np.array_equal(m, k[1].mask(0, receiver=2, round=7, words=1000))
    assert not np.array_equal(m, k[0].mask(1, receiver=2, round=8, words=1000))
    assert not np.array_equal(m, k[0].mask(1, receiver=1, round=7, words=1000))
    assert not np.array_equal(m, k[0].mask(2, receiver=2, round=7, words=1000))
    # a stream's prefix does not depend on how much of it is asked for
    assert np.array_equal(m[:10], k[0].mask(1, receiver=2, round=7, words=10))


def test_the_masks_of_a_receivers_senders_cancel_exactly() -> None:
    k = keyring(6)
    senders = frozenset({0, 2, 3, 5})
    total = np.zeros(5000, dtype=np.uint32)
    for j in senders:
        total += mask_for(k[j], senders, receiver=1, round=3, words=5000)
    assert not total.any()


def chi_square_p(words: np.ndarray, bins: int = 256) -> float:
    counts = np.bincount(words.astype(np.int64) % bins, minlength=bins)
    high = np.bincount((words >> 24).astype(np.int64), minlength=256)
    return min(stats.chisquare(counts).pvalue, stats.chisquare(high).pvalue)


def test_one_masked_message_is_indistinguishable_from_uniform_words() -> None:
    """A model is far from uniform in fixed point (small values near 0: the top byte is 0x00
    or 0xFF); masked, its words pass a chi-square test of uniformity in their low and high
    bytes, in every message a receiver gets."""
    torch.manual_seed(0)
    k = keyring(4)
    x = (torch.randn(40_000) * 0.05).numpy()
    plain = encode(x, 0.25, F)
    assert chi_square_p(plain) < 1e-12
    senders = frozenset({1, 2, 3})
    for j in senders:
        words = encode(x, 0.25, F) + mask_for(k[j], senders, receiver=0, round=0, words=x.size)
        assert chi_square_p(words) > 1e-4


def test_leaving_one_senders_message_out_gives_garbage_not_a_model() -> None:
    torch.manual_seed(1)
    k = keyring(5)
    senders = frozenset({1, 2, 3, 4})
    models = {j: (torch.randn(10_000) * 0.1).numpy() for j in senders}
    msgs = {j: encode(models[j], 0.2, F) + mask_for(k[j], senders, 0, 4, 10_000) for j in senders}
    exact = sum(0.2 * models[j].astype(np.float64) for j in senders)
    everyone = np.zeros(10_000, dtype=np.uint32)
    for m in msgs.values():
        everyone += m
    assert np.abs(decode(everyone, F) - exact).max() <= 4 * 2.0 ** -(F + 1) + 1e-12
    partial = np.zeros(10_000, dtype=np.uint32)
    for j in (1, 2, 3):
        partial += msgs[j]
    garbage = decode(partial, F)
    # uniform words: values spread over the whole +-32 range, nothing like a model
    assert np.abs(garbage - exact).mean() > 10
    assert np.mean(np.abs(garbage) > headroom(F)) > 0.4


def test_fixed_point_precision_and_range() -> None:
    x = np.array([0.0, 1e-9, -3.3e-8, 0.123456789, -15.9999, 16.0], dtype=np.float32)
    back = decode(encode(x, 1.0, F), F)
    assert np.abs(back - x.astype(np.float64)).max() <= 2.0 ** -(F + 1)
    assert headroom(F) == 16.0 and headroom(24) == 64.0 and headroom(16) == 16384.0


def node_ctx(
    node: int, model: torch.nn.Module, rnd: int, rosters: dict[int, Roster]
) -> RoundContext:
    return RoundContext(
        node=node, round=rnd, model=model, peers=frozenset(rosters), rosters=rosters
    )


async def test_a_value_beyond_the_range_stops_the_sender_not_a_wrapped_model() -> None:
    k = keyring(3)
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        model.weight[0, 0] = 16.5
    sharing = SecureSharing(node=0, fraction_bits=F, keys=k[0])
    roster = Roster(frozenset({0, 2}), 0.5)
    with pytest.raises(SecureRangeError, match=r"node 0's model holds 16\.5.*fraction_bits = 26"):
        await sharing.outgoing_each(node_ctx(0, model, 3, {1: roster}))
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(SecureRangeError):
        await sharing.outgoing_each(node_ctx(0, model, 3, {1: roster}))


async def test_a_receiver_with_fewer_than_two_senders_gets_a_skip_notice_and_keeps_its_model() -> (
    None
):
    k = keyring(3)
    model = torch.nn.Linear(4, 1)
    sender = SecureSharing(node=0, fraction_bits=F, keys=k[0])
    out = await sender.outgoing_each(
        node_ctx(0, model, 0, {1: Roster(frozenset({0}), 0.5), 2: Roster(frozenset({0, 1}), 0.5)})
    )
    assert out[1] == Payload(meta={"skip": True})  # node 1 would learn this model alone
    assert MASKED in out[2].tensors
    receiver = SecureSharing(node=1, fraction_bits=F, keys=k[1])
    mine = torch.nn.Linear(4, 1)
    before = flatten(mine.parameters())
    receiver.check(mine, out[1])
    ctx = RoundContext(node=1, round=0, model=mine, peers=frozenset({0}), weights={1: 0.5, 0: 0.5})
    await receiver.aggregate(ctx, {0: out[1]})
    assert torch.equal(flatten(mine.parameters()), before)
    assert receiver.report() == {"secure_skipped": True, "secure_rejected": False}


async def test_an_out_of_range_sum_keeps_the_model_and_is_reported() -> None:
    """Two senders, one of whose messages is not masked for this round: the unmasked sum is
    random words, out of what honest senders can make; the receiver keeps its model."""
    k = keyring(3)
    models = [torch.nn.Linear(50, 20) for _ in range(3)]
    rosters = {0: Roster(frozenset({1, 2}), 0.25)}
    p1 = (
        await SecureSharing(node=1, fraction_bits=F, keys=k[1]).outgoing_each(
            node_ctx(1, models[1], 5, rosters)
        )
    )[0]
    p2 = (
        await SecureSharing(node=2, fraction_bits=F, keys=k[2]).outgoing_each(
            node_ctx(2, models[2], 6, rosters)  # another round's mask
        )
    )[0]
    receiver = SecureSharing(node=0, fraction_bits=F, keys=k[0])
    before = flatten(models[0].parameters())
    ctx = RoundContext(
        node=0,
        round=5,
        model=models[0],
        peers=frozenset({1, 2}),
        weights={0: 0.5, 1: 0.25, 2: 0.25},
    )
    await receiver.aggregate(ctx, {1: p1, 2: p2})
    assert torch.equal(flatten(models[0].parameters()), before)
    assert receiver.report()["secure_rejected"] is True


def test_check_refuses_what_is_not_masked_words_of_this_model() -> None:
    model = torch.nn.Linear(4, 1)  # 5 parameters
    s = SecureSharing(node=0, fraction_bits=F, keys=None)
    s.check(model, Payload({MASKED: torch.zeros(5, dtype=torch.int32)}))
    bad = [
        Payload({MASKED: torch.zeros(5)}),  # floats: an unmasked model
        Payload({MASKED: torch.zeros(6, dtype=torch.int32)}),
        Payload({"params": torch.zeros(5, dtype=torch.int32)}),
        Payload({MASKED: torch.zeros(5, dtype=torch.int32)}, meta={"skip": True}),
        Payload(meta={"skip": False}),
        Payload(),
    ]
    for payload in bad:
        with pytest.raises(RemoteProtocolError):
            s.check(model, payload)


async def test_on_the_in_memory_transport_each_message_is_uniform_and_all_are_needed() -> None:
    """The messages node 0 really receives in a secure run (8 nodes, 3-regular): each one's
    words pass the chi-square test; together (with node 0's own weighted model) they are the
    model node 0 ends the round with; without one of them the sum is out of range."""
    from dlactor.messages import Share
    from dlactor.testing import build_network, run_nodes
    from tests.conftest import small_plan

    plan = small_plan("rounds=1", "sharing.kind=secure", "training.lr=0")
    _, nodes = build_network(plan)
    node0 = nodes[0]
    got: dict[int, np.ndarray] = {}
    deliver = node0.transport.deliver

    def spy(msg: object, nbytes: int) -> None:
        if isinstance(msg, Share):
            got[msg.sender] = msg.payload.tensors[MASKED].numpy().view(np.uint32).copy()
        deliver(msg, nbytes)  # type: ignore[arg-type]

    node0.transport.deliver = spy  # type: ignore[attr-defined]
    before = flatten(node0.model.parameters()).numpy().astype(np.float64)
    for node in nodes:
        await node.start()
    await run_nodes(nodes)
    senders = sorted(plan.graph[0])
    assert sorted(got) == senders and len(senders) == 3
    for words in got.values():
        assert chi_square_p(words) > 1e-4
    weights = {0: 0.25, **dict.fromkeys(senders, 0.25)}  # 3-regular: 1 / (1 + 3)
    total = np.zeros_like(got[senders[0]])
    for words in got.values():
        total += words
    after = flatten(node0.model.parameters()).numpy()
    expected = (weights[0] * before + decode(total, F)).astype(np.float32)
    assert np.array_equal(after, expected)
    partial = got[senders[0]] + got[senders[1]]
    assert np.mean(np.abs(decode(partial, F)) > headroom(F)) > 0.4
