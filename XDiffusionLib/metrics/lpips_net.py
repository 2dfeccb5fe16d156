"""A minimal LPIPS network (Zhang et al. 2018) that loads local weights; nothing is downloaded.

Expected weight file (``torch.save`` of a dict of tensors, or ``.safetensors``), ONE file with:
- the backbone in torchvision's layout:
  AlexNet ``features.{0,3,6,8,10}.{weight,bias}`` (torchvision ``alexnet().state_dict()``), or
  VGG16 ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}`` (``vgg16()``);
- the LPIPS linear heads in the ``lpips`` package's layout: ``lin{0..4}.model.1.weight`` with
  shape (1, C_l, 1, 1) (as in its ``weights/v0.1/alex.pth`` / ``vgg.pth``).
Merge the two dicts into one file. Other keys (e.g. ``classifier.*``) are ignored. The
architecture is read off the keys: ``features.28.weight`` present -> VGG16, else AlexNet.

Distance: images in [-1, 1] (N, 3, H, W) -> scaling layer -> features after the ReLU of each
stage -> unit-normalise over channels -> squared difference -> 1x1 linear head -> spatial mean
-> sum over the 5 stages.

Why not the ``lpips`` package (design issue 23 item 6): it builds its backbone with torchvision,
whose wheels are made for one exact torch build (here a local CPU torch; a mismatched torchvision
pulls another torch of several GB), and by default it fetches the backbone's ImageNet weights at
first use, which this tool never does at run time. The few lines here read the same two weight
layouts (torchvision's backbone keys, the package's ``lin*`` heads) from one local file, so a
user's weights made for the package load unchanged.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
from safetensors.torch import load_file

from ..errors import XDiffusionError

# Input normalisation LPIPS applies before the backbone (per RGB channel).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# Backbone layers in torchvision's index order: ("C", out_channels, kernel, stride, padding), "R" ReLU,
# ("M", kernel, stride) max-pool. Taps are indices (after ReLUs) whose outputs LPIPS compares.
_ALEXNET = [("C", 64, 11, 4, 2), "R", ("M", 3, 2), ("C", 192, 5, 1, 2), "R", ("M", 3, 2),
            ("C", 384, 3, 1, 1), "R", ("C", 256, 3, 1, 1), "R", ("C", 256, 3, 1, 1), "R"]
_ALEXNET_TAPS = (1, 4, 7, 9, 11)
_VGG16 = []
for _block, (_channels, _repeat) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
    if _block:
        _VGG16.append(("M", 2, 2))
    for _ in range(_repeat):
        _VGG16 += [("C", _channels, 3, 1, 1), "R"]
_VGG16_TAPS = (3, 8, 15, 22, 29)
ARCHITECTURES = {"alexnet": (_ALEXNET, _ALEXNET_TAPS), "vgg16": (_VGG16, _VGG16_TAPS)}
# Smallest image side that still leaves a 1x1 map at the last tap.
MIN_SIDE = {"alexnet": 31, "vgg16": 16}


def _build_features(layout) -> tuple[nn.Sequential, list[int]]:
    layers: list[nn.Module] = []
    channels_in, tap_channels = 3, []
    for spec in layout:
        if spec == "R":
            layers.append(nn.ReLU(inplace=False))
            tap_channels.append(channels_in)
        elif spec[0] == "C":
            _, out, kernel, stride, padding = spec
            layers.append(nn.Conv2d(channels_in, out, kernel, stride=stride, padding=padding))
            channels_in = out
        else:
            layers.append(nn.MaxPool2d(kernel_size=spec[1], stride=spec[2]))
    return nn.Sequential(*layers), tap_channels


class _LinearHead(nn.Module):
    """1x1 convolution without bias; ``model.1`` matches the lpips package's key names."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(p=0.0), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPSNet(nn.Module):
    """Backbone + linear heads. ``forward(a, b)`` -> (N,) distances for images in [-1, 1]."""

    def __init__(self, architecture: str = "alexnet") -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise XDiffusionError(f"unknown LPIPS backbone {architecture!r}: use one of {', '.join(ARCHITECTURES)}")
        layout, taps = ARCHITECTURES[architecture]
        self.architecture = architecture
        self.features, relu_channels = _build_features(layout)
        relu_positions = [i for i, layer in enumerate(self.features) if isinstance(layer, nn.ReLU)]
        self.taps = tuple(taps)
        tap_channels = [relu_channels[relu_positions.index(t)] for t in self.taps]
        for index, channels in enumerate(tap_channels):
            self.add_module(f"lin{index}", _LinearHead(channels))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def _tapped(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out.append(x)
            if index >= self.taps[-1]:
                break
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self._tapped((a - self.shift) / self.scale)
        fb = self._tapped((b - self.shift) / self.scale)
        total = torch.zeros(a.shape[0], device=a.device, dtype=a.dtype)
        for index, (x, y) in enumerate(zip(fa, fb)):
            x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
            y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
            head = getattr(self, f"lin{index}")
            total = total + head((x - y) ** 2).mean(dim=(1, 2, 3))
        return total


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise XDiffusionError(f"LPIPS weights file {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the user's input problem
        raise XDiffusionError(f"LPIPS weights file {path} cannot be read: {error}") from None
    if not isinstance(state, dict):
        raise XDiffusionError(f"LPIPS weights file {path} does not hold a state dict")
    return state


def load_lpips(path: str, device: torch.device | str = "cpu") -> LPIPSNet:
    """LPIPSNet with the backbone and linear heads from ``path`` (layout in the module docstring)."""
    state = _read_state_dict(path)
    architecture = "vgg16" if "features.28.weight" in state else "alexnet"
    net = LPIPSNet(architecture)
    expected = net.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        raise XDiffusionError(
            f"LPIPS weights file {path} lacks {missing[0]} ({len(missing)} {architecture} keys missing): "
            "it needs torchvision 'features.*' backbone keys and lpips 'linN.model.1.weight' heads"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise XDiffusionError(
                f"LPIPS weights file {path}: {key} has shape {tuple(state[key].shape)}, {architecture} needs {tuple(tensor.shape)}"
            )
    net.load_state_dict({key: state[key] for key in expected})
    return net.eval().to(device)
