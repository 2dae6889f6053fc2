"""The reference paper's models: shapes, dtypes, published sizes, learning, determinism."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from dlactor.training.models import (
    char_lstm,
    count_parameters,
    gn_lenet,
    lenet5,
    matrix_factorization,
)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _images(channels: int, side: int, batch: int = 8) -> torch.Tensor:
    return torch.rand(batch, channels, side, side, generator=torch.Generator().manual_seed(0))


def _chars(vocab: int = 80, batch: int = 8, seq_len: int = 80) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))


def _pairs(n_users: int, n_items: int, offset: int = 0, batch: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    users = torch.randint(0, n_users, (batch,), generator=gen)
    items = torch.randint(0, n_items, (batch,), generator=gen) + offset
    return torch.stack([users, items], dim=1)


# --- shapes and dtypes ---------------------------------------------------------------------


def test_gn_lenet_maps_cifar_images_to_class_logits() -> None:
    out = gn_lenet()(_images(3, 32))

    assert out.shape == (8, 10)
    assert out.dtype == torch.float32


def test_lenet5_maps_28x28_images_to_class_logits() -> None:
    out = lenet5()(_images(1, 28))

    assert out.shape == (8, 10)
    assert out.dtype == torch.float32


def test_cnns_follow_their_channel_and_class_arguments() -> None:
    assert gn_lenet(num_classes=100, in_channels=1)(_images(1, 32)).shape == (8, 100)
    assert lenet5(num_classes=47, in_channels=3)(_images(3, 28)).shape == (8, 47)


@pytest.mark.parametrize("seq_len", [1, 5, 80])
def test_char_lstm_returns_one_row_of_vocab_logits_per_sequence(seq_len: int) -> None:
    out = char_lstm()(_chars(seq_len=seq_len))

    assert out.shape == (8, 80)
    assert out.dtype == torch.float32


def test_char_lstm_predicts_from_the_last_time_step() -> None:
    torch.manual_seed(0)
    model = char_lstm(vocab=20, hidden=16).eval()
    x = _chars(vocab=20, seq_len=12)
    changed_last = x.clone()
    changed_last[:, -1] = (x[:, -1] + 1) % 20

    assert not torch.allclose(model(x), model(changed_last))


def test_matrix_factorization_returns_one_float_rating_per_pair() -> None:
    out = matrix_factorization(30, 50)(_pairs(30, 50))

    assert out.shape == (16,)
    assert out.dtype == torch.float32


def test_matrix_factorization_subtracts_the_item_offset() -> None:
    torch.manual_seed(0)
    plain = matrix_factorization(30, 50)
    torch.manual_seed(0)
    offset = matrix_factorization(30, 50, item_offset=30)

    assert torch.equal(plain(_pairs(30, 50)), offset(_pairs(30, 50, offset=30)))


def test_matrix_factorization_is_dot_product_plus_biases() -> None:
    model = matrix_factorization(3, 4, dim=2, mean_rating=3.5)
    state = model.state_dict()
    user, item = state["user_factors.weight"][1], state["item_factors.weight"][2]
    with torch.no_grad():
        model.user_bias.weight[1] = 0.25
        model.item_bias.weight[2] = -0.5

    out = model(torch.tensor([[1, 2]]))

    assert out.item() == pytest.approx(float(user @ item) + 0.25 - 0.5 + 3.5, abs=1e-6)


def test_matrix_factorization_rejects_items_outside_the_table() -> None:
    model = matrix_factorization(3, 4, item_offset=3)

    with pytest.raises(IndexError):
        model(torch.tensor([[0, 2]]))  # item 2 - 3 = -1


@pytest.mark.parametrize(
    "build",
    [
        lambda: gn_lenet(num_classes=1),
        lambda: lenet5(in_channels=0),
        lambda: char_lstm(vocab=1),
        lambda: char_lstm(hidden=0),
        lambda: matrix_factorization(0, 5),
        lambda: matrix_factorization(5, 5, item_offset=-1),
    ],
)
def test_builders_reject_impossible_sizes(build: Callable[[], nn.Module]) -> None:
    with pytest.raises(ValueError):
        build()


# --- sizes ---------------------------------------------------------------------------------


def test_gn_lenet_has_decentralizepy_lenet_size() -> None:
    conv = (3 * 32 * 25 + 32) + (32 * 32 * 25 + 32) + (32 * 64 * 25 + 64)
    group_norm = 2 * (32 + 32 + 64)
    linear = 64 * 4 * 4 * 10 + 10

    assert count_parameters(gn_lenet()) == conv + group_norm + linear == 89_834


def test_gn_lenet_normalizes_with_two_groups_after_each_conv() -> None:
    norms = [m for m in gn_lenet().modules() if isinstance(m, nn.GroupNorm)]

    assert [(m.num_groups, m.num_channels) for m in norms] == [(2, 32), (2, 32), (2, 64)]


def test_lenet5_has_the_classic_size() -> None:
    expected = 156 + 2_416 + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)

    assert count_parameters(lenet5()) == expected == 61_706


def test_char_lstm_has_leaf_shakespeare_size_with_torch_double_biases() -> None:
    embedding = 80 * 8
    layer1 = 4 * 256 * (8 + 256) + 2 * 4 * 256
    layer2 = 4 * 256 * (256 + 256) + 2 * 4 * 256
    head = 256 * 80 + 80
    leaf_tensorflow = embedding + layer1 + layer2 + head - 2 * 4 * 256  # one bias per gate

    assert count_parameters(char_lstm()) == embedding + layer1 + layer2 + head == 819_920
    assert leaf_tensorflow == 817_872


def test_matrix_factorization_has_decentralizepy_factors_plus_biases() -> None:
    decentralizepy_factors = (610 + 9_724) * 20  # its MatrixFactorization on ml-latest-small

    model = matrix_factorization(610, 9_724)

    assert decentralizepy_factors == 206_680
    assert count_parameters(model) == decentralizepy_factors + 610 + 9_724 + 1


# --- learning and determinism --------------------------------------------------------------


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(out, y)


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor], torch.Tensor, LossFn]]
CASES = {
    "gn_lenet": (gn_lenet, lambda: _images(3, 32), torch.arange(8) % 10, _cross_entropy),
    "lenet5": (lenet5, lambda: _images(1, 28), torch.arange(8) % 10, _cross_entropy),
    "char_lstm": (
        lambda: char_lstm(hidden=32),
        lambda: _chars(seq_len=10),
        torch.arange(8) * 7 % 80,
        _cross_entropy,
    ),
    "mf": (
        lambda: matrix_factorization(30, 50, item_offset=30, mean_rating=3.0),
        lambda: _pairs(30, 50, offset=30),
        torch.linspace(1.0, 5.0, 16),
        _mse,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_one_sgd_step_lowers_the_loss_on_a_fixed_batch(name: str) -> None:
    build, inputs, targets, loss_fn = CASES[name]
    torch.manual_seed(0)
    model, x = build(), inputs()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    before = loss_fn(model(x), targets)
    opt.zero_grad()
    before.backward()
    grads = [p.grad for p in model.parameters()]
    opt.step()
    after = loss_fn(model(x), targets)

    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert after.item() < before.item()


def _same(a: nn.Module, b: nn.Module) -> bool:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return all(torch.equal(p, q) for p, q in pairs)


@pytest.mark.parametrize("name", CASES)
def test_same_torch_seed_gives_the_same_model(name: str) -> None:
    build, inputs, _, _ = CASES[name]
    torch.manual_seed(7)
    first = build()
    torch.manual_seed(7)
    again = build()
    torch.manual_seed(8)
    other = build()

    assert _same(first, again)
    assert torch.equal(first(inputs()), again(inputs()))
    assert not _same(first, other)
