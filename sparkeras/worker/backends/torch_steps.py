"""The PyTorch backend's split step: autograd on the share-scaled loss, then the optimizer on the sum."""

from __future__ import annotations

from typing import Any

import numpy as np

from sparkeras.worker.backends import GradientSteps


class TorchSteps(GradientSteps):
    """Keras' torch ``train_step``, with the global sum between ``backward`` and ``optimizer.apply``."""

    def __init__(self, model: Any, collective: Any, sync_batch_norm: bool) -> None:
        super().__init__(model, collective, global_sum(collective) if sync_batch_norm else None)

    def _backward(self, x: Any, y: Any, share: float | None, sample_weight: Any = None) -> None:
        import torch
        from keras import ops, tree

        model = self.model
        x = tree.map_structure(ops.convert_to_tensor, x)
        y_pred = model(x, training=True)
        model.zero_grad()
        if share is None:
            loss = sum(torch.sum(t) for t in tree.flatten(y_pred)) * 0.0
        else:
            if y is not None:  # a model whose loss reads no labels trains with y=None, as in Keras' fit(x)
                y = tree.map_structure(ops.convert_to_tensor, y)
            if sample_weight is not None:
                sample_weight = ops.convert_to_tensor(sample_weight)
            unscaled = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            model._loss_tracker.update_state(unscaled, sample_weight=tree.flatten(x)[0].shape[0])
            loss = model.optimizer.scale_loss(unscaled * share)
        loss.backward()
        with torch.no_grad():
            grads = [torch.zeros(v.shape) if v.value.grad is None else v.value.grad for v in self.variables]
            self.buffer[:] = torch.cat([g.reshape(-1).float().cpu() for g in grads]).numpy()
            if share is not None:
                model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        model.zero_grad()

    def local_gradients(self, x: Any, y: Any, share: float, sample_weight: Any = None) -> None:
        self._backward(x, y, share, sample_weight)

    def empty_pass(self, x: Any) -> None:
        self._backward(x, None, None)

    def apply_sum(self) -> None:
        import torch

        total = torch.from_numpy(self.buffer)
        grads = [part.reshape(shape).to(v.value.device, v.value.dtype)
                 for part, shape, v in zip(torch.split(total, self.sizes), self.shapes, self.variables)]
        with torch.no_grad():
            self.model.optimizer.apply(grads, self.variables)


def global_sum(collective: Any) -> Any:
    """A sum over the tasks as an autograd function, whose gradient is a sum too."""
    import torch

    def reduce(t: Any) -> Any:
        x = t.detach().cpu().numpy()
        return torch.from_numpy(np.ascontiguousarray(collective.allreduce(x, "sum").astype(x.dtype))).to(t.device)

    class GlobalSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            return reduce(x)

        @staticmethod
        def backward(ctx: Any, dy: Any) -> Any:
            return reduce(dy)

    return GlobalSum.apply
