"""Handoff: a trainer's work runs on the loop when it is short, in the compute thread else."""

from __future__ import annotations

import functools
import threading
import time

import pytest
import torch

from dlactor.context import RoundContext
from dlactor.training.base import Handoff
from dlactor.training.sgd import SGDTrainer


def where() -> str:
    return threading.current_thread().name


def burn(seconds: float) -> str:
    """Spend ``seconds`` of this process's CPU time; the thread it ran on."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return where()


async def test_short_work_moves_onto_the_loop_long_work_stays_off_it() -> None:
    handoff = Handoff(inline_under_s=0.05)
    loop_thread = where()
    assert await handoff.run(burn, 0.0) != loop_thread  # not timed yet: the thread
    assert await handoff.run(burn, 0.0) == loop_thread  # short: on the loop
    assert await handoff.run(burn, 0.06) == loop_thread  # still judged by its last run
    assert await handoff.run(burn, 0.0) != loop_thread  # that run was long: the thread


async def test_each_function_is_timed_on_its_own() -> None:
    handoff = Handoff(inline_under_s=0.05)
    loop_thread = where()
    await handoff.run(where)
    await handoff.run(burn, 0.06)
    assert await handoff.run(where) == loop_thread
    assert await handoff.run(burn, 0.0) != loop_thread


async def test_a_bound_method_is_one_function_across_accesses() -> None:
    trainer = Probe()
    loop_thread = where()
    assert await trainer.handoff.run(trainer.step) != loop_thread
    assert await trainer.handoff.run(trainer.step) == loop_thread


async def test_an_error_reaches_the_caller_from_either_side() -> None:
    handoff = Handoff()
    for _ in range(2):  # in the thread, then on the loop
        with pytest.raises(ZeroDivisionError):
            await handoff.run(divide, 0)


async def test_where_training_runs_changes_no_number() -> None:
    """The same trainer and data, always in the thread or on the loop after round 0: the
    same losses and the same model, bit for bit."""
    results = []
    for threshold in (0.0, float("inf")):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        x, y = torch.randn(200, 8), torch.randint(0, 3, (200,))
        trainer = SGDTrainer(
            model=model, x=x, y=y, indices=torch.arange(120), x_test=x[120:], y_test=y[120:],
            lr=0.1, momentum=0.9, local_steps=5, batch_size=16, seed=3,
        )  # fmt: skip
        trainer._handoff = Handoff(inline_under_s=threshold)
        ctx = RoundContext(node=0, round=0, model=model)
        losses = [(await trainer.train(ctx)).loss for _ in range(4)]
        losses.append((await trainer.evaluate(ctx)).loss)
        results.append((losses, torch.cat([p.detach().reshape(-1) for p in model.parameters()])))
    (losses_a, params_a), (losses_b, params_b) = results
    assert losses_a == losses_b
    assert torch.equal(params_a, params_b)


class Probe:
    def __init__(self) -> None:
        self.handoff = Handoff(inline_under_s=0.05)

    def step(self) -> str:
        return where()


def divide(x: int) -> float:
    return 1 / x


async def test_a_partial_counts_as_its_function_and_a_key_names_a_lambda() -> None:
    handoff = Handoff(inline_under_s=0.05)
    loop_thread = where()
    assert await handoff.run(functools.partial(burn, 0.0)) != loop_thread
    assert await handoff.run(functools.partial(burn, 0.0)) == loop_thread
    assert await handoff.run(lambda: where(), key="w") != loop_thread
    assert await handoff.run(lambda: where(), key="w") == loop_thread


async def test_it_remembers_a_bounded_number_of_functions() -> None:
    handoff = Handoff()
    for i in range(Handoff.REMEMBERED + 10):
        await handoff.run(where, key=i)
    assert len(handoff._cpu) == Handoff.REMEMBERED
    assert set(handoff._cpu) == set(range(10, Handoff.REMEMBERED + 10))  # the newest
