import math

import torch

from dlactor.metrics.consensus import ConsensusMeter


def test_consensus_distance_is_the_rms_distance_to_the_average() -> None:
    xs = [torch.tensor([0.0, 0.0]), torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0])]
    meter = ConsensusMeter(3)
    assert meter.add(7, xs[0]) is None
    assert meter.add(7, xs[1]) is None
    got = meter.add(7, xs[2])
    mean = torch.stack(xs).mean(0)
    expected = math.sqrt(sum(float((x - mean).pow(2).sum()) for x in xs) / 3)
    assert got is not None and math.isclose(got, expected, rel_tol=1e-12)


def test_identical_models_are_at_distance_zero_and_rounds_are_independent() -> None:
    meter = ConsensusMeter(2)
    meter.add(1, torch.ones(5))
    meter.add(2, torch.zeros(5))
    assert meter.add(1, torch.ones(5)) == 0.0
    assert meter.add(2, torch.full((5,), 2.0)) == math.sqrt(5.0)
