"""Elastic Weight Consolidation (Kirkpatrick et al., 2017) over LoRA parameters.

Penalty: lambda/2 * sum_i F_i (theta_i - theta_prev_i)^2, with F the diagonal empirical Fisher on
the previous task's data.

What theta is, here: the base model already holds the previous task's knowledge (it is the previous
fine-tuned or merged model), and training only moves the fresh LoRA parameters. So theta are the
LoRA parameters, theta_prev their initial values (B = 0, which reproduces the base exactly), and F
is estimated at that point. This costs one extra copy of the (small) LoRA parameters instead of the
model-sized Fisher of full EWC. A consequence: at B = 0 the gradients with respect to the LoRA A
matrices are zero, so F_A = 0 and only B (hence the update B A) is anchored; A may rotate freely,
which changes nothing while B stays near 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def fisher_diagonal(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the answer loss per trainable parameter, one batch per sample
    (batches of size 1 give the per-sample empirical Fisher). Runs in eval mode: no dropout."""
    params = trainable(model)
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()
    count = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {name: f / max(count, 1) for name, f in fisher.items()}


class EWCPenalty:
    """Callable returning lambda/2 * sum F (theta - theta_prev)^2 for the model's current parameters."""

    def __init__(self, model: torch.nn.Module, fisher: dict[str, torch.Tensor], strength: float):
        self.params = trainable(model)
        self.anchor = {name: p.detach().clone() for name, p in self.params.items()}
        self.fisher = fisher
        self.strength = strength

    def __call__(self) -> torch.Tensor:
        total = sum((self.fisher[name] * (p - self.anchor[name]) ** 2).sum() for name, p in self.params.items())
        return 0.5 * self.strength * total

    def stats(self) -> dict[str, float]:
        values = torch.cat([f.flatten() for f in self.fisher.values()])
        return {
            "lambda": self.strength,
            "fisher_mean": float(values.mean()),
            "fisher_max": float(values.max()),
            "fisher_nonzero_fraction": float((values > 0).float().mean()),
        }
