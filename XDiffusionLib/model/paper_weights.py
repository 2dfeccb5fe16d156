"""Pretrained base weights for the paper profile, from a LOCAL diffusers-format folder only.

The folder has the Stable Diffusion image-variations layout (what the paper fine-tunes):
``unet/``, ``vae/``, ``image_encoder/`` (each a ``config.json`` plus weights), and optionally
``cc_projection/`` (a converted Zero-1-to-3: ``config.json`` + ``diffusion_pytorch_model.*`` holding
a Linear(768 + 4 -> 768)). Nothing is ever downloaded: the path must exist, and every loader runs
with ``local_files_only=True``.

- A 4-channel base U-Net (SD image variations) becomes the 8-channel X-Diffusion U-Net: the 4
  pretrained input channels are copied, the 4 new ones (the concat latent) start at zero, so the
  fresh model ignores the concat path until fine-tuning teaches it (Zero-1-to-3's recipe).
  An 8-channel base (converted Zero-1-to-3) is copied as is.
- ``cc_projection``: without one it keeps its identity initialisation. From a Zero-1-to-3 one
  (pose width 4: [polar, sin az, cos az, radius], a different pose than X-Diffusion's) the CLIP
  columns and the bias are copied and the pose columns start at zero; one with exactly this
  model's shape is copied whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import XDiffusionError
from .config import XDiffusionConfig
from .paper import PAPER_OPTIONS, PaperDenoiser, paper_config

SUBFOLDERS = ("unet", "vae", "image_encoder")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                     "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
LAYOUT = "a base folder holds unet/, vae/, image_encoder/ (Stable Diffusion image-variations layout, diffusers format)"


def check_base_folder(folder: str | os.PathLike) -> Path:
    """The folder as a Path after checking every part the loader reads; XDiffusionError naming the first missing one."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise XDiffusionError(
            f"{folder}: base weights folder not found ({LAYOUT}; model hub ids are never downloaded: "
            "pass a local folder)"
        )
    for name in SUBFOLDERS:
        sub = path / name
        if not sub.is_dir():
            raise XDiffusionError(f"{sub}: missing subfolder ({LAYOUT})")
        if not (sub / "config.json").is_file():
            raise XDiffusionError(f"{sub / 'config.json'}: missing file ({LAYOUT})")
        names = TRANSFORMERS_WEIGHTS if name == "image_encoder" else DIFFUSERS_WEIGHTS
        if not any((sub / n).is_file() for n in names):
            raise XDiffusionError(f"{sub}: no weights file (expected one of {', '.join(names[:2])})")
    projection = path / "cc_projection"
    if projection.is_dir() and _projection_file(projection) is None:
        raise XDiffusionError(f"{projection}: no weights file (expected one of {', '.join(DIFFUSERS_WEIGHTS[:2])})")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise XDiffusionError(f"{path}: unreadable JSON ({error})") from None
    if not isinstance(data, dict):
        raise XDiffusionError(f"{path}: expected a JSON object")
    return data


def _single(value: Any, path: Path, key: str) -> int:
    """Diffusers allows per-level lists; this profile uses one value for all levels."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise XDiffusionError(f"{path}: {key} {list(value)} differs per level; the paper profile needs one value")
        value = value[0]
    return int(value)


def paper_config_from_base(folder: str | os.PathLike, **changes: Any) -> XDiffusionConfig:
    """A paper config whose U-Net, VAE and CLIP sizes are those of the base folder (``changes`` on top)."""
    from transformers import CLIPVisionConfig  # transformers: slow to import, only for the paper profile

    path = check_base_folder(folder)
    unet_path, vae_path = path / "unet" / "config.json", path / "vae" / "config.json"
    unet, vae = _read_json(unet_path), _read_json(vae_path)
    try:
        clip = CLIPVisionConfig.from_pretrained(str(path / "image_encoder"), local_files_only=True)
        down = list(unet["down_block_types"])
        model = dict(
            block_out_channels=tuple(int(c) for c in unet["block_out_channels"]),
            layers_per_block=_single(unet.get("layers_per_block", 2), unet_path, "layers_per_block"),
            attention_levels=tuple(i for i, kind in enumerate(down) if "CrossAttn" in kind),
            attention_head_dim=_single(unet.get("attention_head_dim", 8), unet_path, "attention_head_dim"),
            norm_num_groups=int(unet.get("norm_num_groups", 32)),
        )
        options = dict(
            latent_channels=int(unet.get("out_channels", 4)),
            cross_attention_dim=int(unet["cross_attention_dim"]),
            transformer_layers=_single(unet.get("transformer_layers_per_block", 1), unet_path, "transformer_layers_per_block"),
            scaling_factor=float(vae.get("scaling_factor", PAPER_OPTIONS["scaling_factor"])),
            vae_block_out_channels=[int(c) for c in vae["block_out_channels"]],
            vae_layers_per_block=int(vae.get("layers_per_block", 2)),
            vae_norm_num_groups=int(vae.get("norm_num_groups", 32)),
            clip_hidden_size=clip.hidden_size,
            clip_intermediate_size=clip.intermediate_size,
            clip_layers=clip.num_hidden_layers,
            clip_heads=clip.num_attention_heads,
            clip_patch_size=clip.patch_size,
            clip_image_size=clip.image_size,
        )
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise XDiffusionError(f"{path}: base config not understood ({type(error).__name__}: {error})") from None
    if int(vae.get("latent_channels", 4)) != options["latent_channels"]:
        raise XDiffusionError(f"{vae_path}: latent_channels {vae.get('latent_channels')} != the U-Net's {options['latent_channels']}")
    if clip.projection_dim != options["cross_attention_dim"]:
        raise XDiffusionError(
            f"{path / 'image_encoder'}: projection_dim {clip.projection_dim} != the U-Net's cross_attention_dim "
            f"{options['cross_attention_dim']}"
        )
    options.update(changes.pop("profile_options", {}) or {})
    return paper_config(**{**model, **changes, "profile_options": options})


def _projection_file(folder: Path) -> Path | None:
    for name in DIFFUSERS_WEIGHTS[:2]:
        if (folder / name).is_file():
            return folder / name
    return None


def _load_part(cls, folder: Path):
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, RuntimeError, EnvironmentError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise XDiffusionError(f"{folder}: could not load the base weights ({first})") from None


def _copy_state(target: torch.nn.Module, source: dict[str, torch.Tensor], where: Path, expand: tuple[str, ...] = ()) -> list[str]:
    """Copy ``source`` into ``target`` (strict); tensors named in ``expand`` may gain zero input channels."""
    own = target.state_dict()
    missing, unexpected = sorted(set(own) - set(source)), sorted(set(source) - set(own))
    if missing or unexpected:
        names = (missing or unexpected)[:3]
        kind = "lacks" if missing else "has unexpected"
        raise XDiffusionError(f"{where}: the base {kind} tensors {names} for this config (architecture mismatch)")
    notes = []
    new_state = {}
    for name, tensor in own.items():
        value = source[name]
        if value.shape != tensor.shape:
            grows = (
                name in expand and value.ndim == tensor.ndim == 4 and value.shape[0] == tensor.shape[0]
                and value.shape[2:] == tensor.shape[2:] and value.shape[1] < tensor.shape[1]
            )
            if not grows:
                raise XDiffusionError(
                    f"{where}: tensor {name} has shape {tuple(value.shape)}, this config needs {tuple(tensor.shape)}"
                )
            grown = torch.zeros_like(tensor)
            grown[:, : value.shape[1]] = value.to(tensor.dtype)
            notes.append(f"{name}: {value.shape[1]} -> {tensor.shape[1]} input channels (new ones zero)")
            value = grown
        new_state[name] = value.to(tensor.dtype)
    target.load_state_dict(new_state, strict=True)
    return notes


def _load_projection(model: PaperDenoiser, folder: Path) -> list[str]:
    file = _projection_file(folder)
    try:
        state = load_file(str(file)) if file.suffix == ".safetensors" else torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's folder's problem
        raise XDiffusionError(f"{file}: unreadable weights ({type(error).__name__})") from None
    weights = [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    biases = [k for k, v in state.items() if k.endswith("bias") and v.ndim == 1]
    if len(weights) != 1 or len(biases) != 1:
        raise XDiffusionError(f"{file}: expected one Linear (a 2D weight and a bias), found {sorted(state)[:4]}")
    weight, bias = state[weights[0]], state[biases[0]]
    target = model.cc_projection
    context = model.context_dim
    if weight.shape == target.weight.shape and bias.shape == target.bias.shape:
        with torch.no_grad():
            target.weight.copy_(weight)
            target.bias.copy_(bias)
        return ["cc_projection: copied whole"]
    if weight.shape[0] != context or weight.shape[1] < context or bias.shape[0] != context:
        raise XDiffusionError(
            f"{file}: projection {tuple(weight.shape)} does not fit context width {context} "
            f"(this model's is {tuple(target.weight.shape)})"
        )
    with torch.no_grad():
        target.weight.zero_()
        target.weight[:, :context] = weight[:, :context]
        target.bias.copy_(bias)
    return [f"cc_projection: CLIP columns and bias copied, {target.in_features - context} pose columns zero"]


def load_base_weights(model: PaperDenoiser, folder: str | os.PathLike) -> list[str]:
    """Load a local base folder into ``model`` in place; returns notes on what was adapted."""
    # diffusers and transformers: slow to import, only when base weights are loaded
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    path = check_base_folder(folder)
    notes = []
    unet = _load_part(UNet2DConditionModel, path / "unet")
    notes += _copy_state(model.unet, unet.state_dict(), path / "unet", expand=("conv_in.weight",))
    del unet
    vae = _load_part(AutoencoderKL, path / "vae")
    notes += _copy_state(model.vae, vae.state_dict(), path / "vae")
    del vae
    encoder = _load_part(CLIPVisionModelWithProjection, path / "image_encoder")
    notes += _copy_state(model.image_encoder, encoder.state_dict(), path / "image_encoder")
    del encoder
    if (path / "cc_projection").is_dir():
        notes += _load_projection(model, path / "cc_projection")
    model._feature_cache = []
    return notes


def build_paper_from_base(
    folder: str | os.PathLike, config: XDiffusionConfig | None = None, **changes: Any
) -> tuple[PaperDenoiser, XDiffusionConfig]:
    """A paper model initialised from a local base folder. Without ``config`` the sizes come from the base."""
    if config is None:
        config = paper_config_from_base(folder, **changes)
    elif changes:
        raise ValueError("pass either a config or changes, not both")
    if config.profile != "paper":
        raise XDiffusionError(f"base weights are for the paper profile, the config's profile is {config.profile!r}")
    model = PaperDenoiser(config)
    load_base_weights(model, folder)
    return model, config
