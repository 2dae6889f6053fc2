"""Local SGD steps and evaluation: in the compute thread, or on the loop when they are short
(``Handoff``)."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from dlactor.context import EvalStats, RoundContext, TrainStats
from dlactor.data.base import Dataset, Task
from dlactor.metrics.memory import release_freed_memory
from dlactor.training.base import Handoff

__all__ = ["Evaluator", "SGDTrainer", "evaluate_model", "loss_fn"]

# Small enough that a CNN's activations stay a few MB per node (2048 images through LeNet-5's
# first conv alone is 38 MB, times every node), large enough to keep the matmuls efficient:
# measured on LeNet-5/Fashion-MNIST, 256 evaluates 10k images in 0.41 s against 0.86 s at 2048.
EVAL_BATCH = 256


# Rounds whose training takes longer than this hand their freed activations back to the OS
# afterwards. Trimming costs 1-2 ms; a 2x128 LSTM's 10 steps (0.4 s) leave ~30 MB per node
# behind without it, while a logistic regression's few-ms rounds leave almost nothing.
TRIM_AFTER_S = 0.05


def loss_fn(task: Task, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classification, mean squared error for regression."""
    if task == "classification":
        return F.cross_entropy(output, target)
    return F.mse_loss(output, target)


class SGDTrainer:
    """``local_steps`` minibatch SGD steps per round on the node's own shard.

    ``x``/``y`` are the whole training set, shared read-only by every node process (forked
    from the template); ``indices`` are this node's samples. Batches are gathered from the
    shared tensors, so a node never holds a private copy of its shard.
    """

    #: What a checkpoint saves (dlactor.checkpoint.state): the optimizer's momentum, the
    #: batch sampler's generator and where it is in the current epoch's order.
    checkpointed = ("_opt", "_gen", "_order", "_cursor")

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        indices: torch.Tensor,
        x_test: torch.Tensor,
        y_test: torch.Tensor,
        lr: float,
        task: Task = "classification",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        local_steps: int = 1,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        self._model, self._task = model, task
        if len(indices) == 0:
            raise ValueError("this node has no training samples")
        self._x, self._y, self._indices = x, y, indices
        self._x_test, self._y_test = x_test, y_test
        self._opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        self._local_steps = local_steps
        self._batch_size = min(batch_size, len(indices))
        self._gen = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.int64)
        self._cursor = 0
        self._handoff = Handoff()

    async def train(self, ctx: RoundContext) -> TrainStats:
        return await self._handoff.run(self.train_steps)

    def restart(self) -> None:
        """Drop the optimizer's state (the momentum buffers): the next step starts afresh."""
        self._opt.state.clear()

    async def evaluate(self, ctx: RoundContext) -> EvalStats:
        return await self._handoff.run(self.evaluate_now)

    def _next_batch(self) -> torch.Tensor:
        if self._cursor + self._batch_size > len(self._order):
            perm = torch.randperm(len(self._indices), generator=self._gen)
            self._order = self._indices[perm]
            self._cursor = 0
        idx = self._order[self._cursor : self._cursor + self._batch_size]
        self._cursor += self._batch_size
        return idx

    def train_steps(self) -> TrainStats:
        """The round's local steps, synchronously (what ``train`` hands to ``Handoff``)."""
        self._model.train()
        started = time.perf_counter()
        total = 0.0
        for _ in range(self._local_steps):
            idx = self._next_batch()
            self._opt.zero_grad(set_to_none=True)
            loss = loss_fn(self._task, self._model(self._x[idx]), self._y[idx])
            loss.backward()
            self._opt.step()
            total += loss.item()
        if time.perf_counter() - started > TRIM_AFTER_S:
            release_freed_memory()
        steps = self._local_steps
        return TrainStats(loss=total / steps, steps=steps, samples=steps * self._batch_size)

    async def gradient(self, ctx: RoundContext) -> tuple[torch.Tensor, TrainStats]:
        return await self._handoff.run(self.gradient_steps)

    def gradient_steps(self) -> tuple[torch.Tensor, TrainStats]:
        """The mean gradient of the round's ``local_steps`` minibatches at the current model,
        without a step: a parameter server's client sends it and the server steps. Batches
        are drawn as ``train_steps`` draws them. Returns a new flat vector (the parameters'
        gradients are cleared) and the minibatches' mean loss."""
        self._model.train()
        started = time.perf_counter()
        params = list(self._model.parameters())
        self._opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(self._local_steps):
            idx = self._next_batch()
            loss = loss_fn(self._task, self._model(self._x[idx]), self._y[idx])
            loss.backward()  # accumulates over the steps
            total += loss.item()
        steps = self._local_steps
        with torch.no_grad():
            grad = torch.cat(
                [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params]
            ).div_(steps)
        self._opt.zero_grad(set_to_none=True)
        if time.perf_counter() - started > TRIM_AFTER_S:
            release_freed_memory()
        return grad, TrainStats(loss=total / steps, steps=steps, samples=steps * self._batch_size)

    def evaluate_now(self) -> EvalStats:
        """Loss and accuracy (classification) or RMSE (regression) on the whole test set."""
        return evaluate_model(self._model, self._x_test, self._y_test, self._task)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, task: Task
) -> EvalStats:
    """Loss and accuracy (classification) or RMSE (regression) on the whole test set, in
    batches so big test sets do not need one huge activation tensor."""
    model.eval()
    n = len(y_test)
    loss_sum, correct = 0.0, 0
    for start in range(0, n, EVAL_BATCH):
        x, y = x_test[start : start + EVAL_BATCH], y_test[start : start + EVAL_BATCH]
        out = model(x)
        loss_sum += loss_fn(task, out, y).item() * len(y)
        if task == "classification":
            correct += int((out.argmax(dim=1) == y).sum())
    release_freed_memory()
    loss = loss_sum / n
    if task == "classification":
        return EvalStats(loss=loss, accuracy=correct / n, samples=n)
    return EvalStats(loss=loss, accuracy=float("nan"), samples=n, rmse=math.sqrt(loss))


class Evaluator:
    """A server's trainer: it evaluates the model it holds, and never trains."""

    def __init__(self, *, model: torch.nn.Module, dataset: Dataset) -> None:
        self._model, self._dataset = model, dataset
        self._handoff = Handoff()

    async def train(self, ctx: RoundContext) -> TrainStats:
        raise RuntimeError("a server process does not train")

    async def evaluate(self, ctx: RoundContext) -> EvalStats:
        ds = self._dataset
        return await self._handoff.run(evaluate_model, ctx.model, ds.x_test, ds.y_test, ds.task)
