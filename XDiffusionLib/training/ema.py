"""Exponential moving average of the model weights: the EMA is what ships for inference.

Kept in float32 whatever the training precision, so a bf16 run still averages exactly, and
stored with the same tensor names as the model so an EMA file loads straight into the model.

Why not diffusers' ``EMAModel`` (issue 23 item 6; Testing/test_training.py compares the two):
it has the same decay schedule (``min(decay, (1 + n) / (10 + n))``) except its first update,
which copies the weights (decay 0, where this class uses 0.1), and its update is
``shadow -= (1 - decay) * (shadow - param)`` where this one is ``torch.lerp`` (a few ulps apart).
The two agree to float rounding after a few dozen updates, but not bit for bit: swapping it in
would change every trained model's weights and make a checkpoint written by this class resume onto different numbers. It
also keeps the shadow in the parameters' dtype (bf16 in a bf16 run) and saves its state as a
list of tensors for ``torch.save`` (pickle), where our checkpoints are pickle-free safetensors
keyed by parameter name (``training.checkpoints``) and resume bit-exactly.
"""

from __future__ import annotations

import torch


class EMA:
    """Shadow copy of a model's trainable parameters, updated after every optimizer step.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so that early weights
    (random initialisation) are forgotten quickly; ``n`` is the number of updates so far.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = [params[name].detach().clone().float() for name in self.names]

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        current = [params[name].detach().float() for name in self.names]
        torch._foreach_lerp_(self.shadow, current, 1.0 - self.current_decay())
        self.num_updates += 1

    def averaged_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's full state dict with the averaged parameters in place of the trained ones."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for name, value in zip(self.names, self.shadow):
            state[name] = value.to(state[name].dtype).clone()
        return state

    def shadow_tensors(self) -> dict[str, torch.Tensor]:
        """The float32 shadow weights by parameter name (what a checkpoint stores for exact resume)."""
        return {name: value for name, value in zip(self.names, self.shadow)}

    def load_shadow(self, tensors: dict[str, torch.Tensor], num_updates: int) -> None:
        missing = [name for name in self.names if name not in tensors]
        if missing:
            raise ValueError(f"EMA weights lack {len(missing)} parameters, e.g. {missing[0]!r}")
        for i, name in enumerate(self.names):
            self.shadow[i].copy_(tensors[name].float())
        self.num_updates = int(num_updates)
