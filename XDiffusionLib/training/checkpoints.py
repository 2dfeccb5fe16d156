"""Training checkpoints on disk: atomic, pickle-free, resumable bit for bit.

A checkpoint is a folder ``RUN_DIR/checkpoints/step-XXXXXX`` holding

- ``model.safetensors`` + ``config.json``: the trained weights (``save_pretrained`` format);
- ``ema.safetensors``: the EMA weights, same tensor names as the model;
- ``training_state.safetensors``: optimizer state tensors (flattened by name) and RNG states
  as uint8 tensors;
- ``training_state.json``: step, LR-scheduler state, optimizer param groups, training settings,
  data sources, seed.

It is built in ``checkpoints/.tmp-XXXX`` and renamed into place with ``os.replace``, so a
``step-*`` folder is always complete; an interrupted save leaves only a ``.tmp-*`` folder,
which the next save removes.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import safetensors.torch

from ..errors import XDiffusionError
from ..io.atomic import atomic_file, replace_directory
from ..model.checkpoint import check_model_folder, save_pretrained
from ..model.config import XDiffusionConfig
from ..model.factory import build_denoiser

CHECKPOINTS = "checkpoints"
STATE_JSON = "training_state.json"
STATE_TENSORS = "training_state.safetensors"
EMA_FILE = "ema.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / STATE_JSON).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_resume(path: Path) -> Path:
    """A checkpoint folder from ``--resume`` given a checkpoint folder or a run folder."""
    path = Path(path)
    if (path / STATE_JSON).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise XDiffusionError(f"no checkpoint to resume from in {path}")
    return latest


# What a resume reads from training_state.json, and the JSON type each must have.
_STATE_FIELDS: dict[str, type] = {"step": int, "train_config": dict, "data_sources": list, "optimizer": dict,
                                  "lr_scheduler": dict, "ema": dict}


def read_training_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``training_state.json``, checked before a resume uses it: one line naming the
    file for anything unreadable, missing or of the wrong type (not a traceback from the trainer)."""
    path = Path(folder) / STATE_JSON
    damaged = "the checkpoint is damaged: resume from another one (--resume RUN_DIR/checkpoints/step-N)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XDiffusionError(f"{path}: missing, {Path(folder)} is not a checkpoint folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = getattr(error, "msg", None) or getattr(error, "strerror", None) or type(error).__name__
        raise XDiffusionError(f"{path}: not a readable training state ({reason}); {damaged}") from None
    if not isinstance(data, dict):
        raise XDiffusionError(f"{path}: not a training state (expected a JSON object); {damaged}")
    missing = [key for key in _STATE_FIELDS if key not in data]
    if missing:
        raise XDiffusionError(f"{path}: no {', '.join(missing)} in it; {damaged}")
    for key, kind in _STATE_FIELDS.items():
        value = data[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise XDiffusionError(f"{path}: {key!r} is {type(value).__name__}, expected {kind.__name__}; {damaged}")
    if data["step"] < 0:
        raise XDiffusionError(f"{path}: step {data['step']} is negative; {damaged}")
    if not isinstance(data["optimizer"].get("param_groups"), list):
        raise XDiffusionError(f"{path}: the optimizer state has no param_groups; {damaged}")
    updates = data["ema"].get("num_updates")
    if not isinstance(updates, int) or isinstance(updates, bool):
        raise XDiffusionError(f"{path}: the EMA state has no num_updates count; {damaged}")
    return data


def check_checkpoint_weights(folder: Path) -> XDiffusionConfig:
    """The checkpoint's model config, once its weights and EMA weights are known to fit it (and
    to match the checksums recorded at save time): a config.json from another model is one line
    here, not a size-mismatch traceback when the trainer loads the weights."""
    return check_model_folder(Path(folder), extra_weights=(EMA_FILE,))


def write_checkpoint(run_dir: Path, step: int, fill: Callable[[Path], None], keep_last: int) -> Path:
    """Create checkpoint ``step`` atomically: ``fill(tmp_dir)`` writes the files, then the folder is renamed.

    Keeps the newest ``keep_last`` checkpoints (0 keeps all).
    """
    folder = Path(run_dir) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".tmp-*"):  # leftovers of an interrupted save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        fill(tmp)
        final = replace_directory(tmp, folder / checkpoint_name(step))  # may re-reach a step after a resume
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    with atomic_file(path) as tmp:
        safetensors.torch.save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise XDiffusionError(f"checkpoint file missing: {path}")
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as error:  # a truncated or foreign file
        raise XDiffusionError(f"cannot read {path}: {error}") from None


# --- optimizer state without pickle -------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_jsonable(v) for v in value["__tuple__"])
        return {k: _from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.state.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = _jsonable(value)
    meta = {"param_groups": _jsonable(state_dict["param_groups"]), "state_scalars": scalars}
    return tensors, meta


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optimizer.state."):
            continue
        param_id, key = name[len("optimizer.state."):].split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, entries in meta.get("state_scalars", {}).items():
        state.setdefault(int(param_id), {}).update(_from_jsonable(entries))
    return {"state": state, "param_groups": _from_jsonable(meta["param_groups"])}


# --- RNG states as uint8 tensors ----------------------------------------------------------------

def rng_state_tensors(rank: int) -> dict[str, torch.Tensor]:
    """This process's global RNG states (torch CPU, CUDA, numpy) as uint8 tensors.

    The trainer draws every random number of a step from a generator seeded by (seed, step,
    rank), so these are saved for completeness (code outside the trainer may use the globals).
    """
    tensors = {f"rng.rank{rank}.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors[f"rng.rank{rank}.cuda"] = torch.cuda.get_rng_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    extra = np.array([pos, has_gauss], dtype=np.int64).view(np.uint8)
    tensors[f"rng.rank{rank}.numpy"] = torch.from_numpy(
        np.concatenate([keys.astype(np.uint32).view(np.uint8), extra, np.array([cached], np.float64).view(np.uint8)])
    )
    return tensors


def restore_rng_state(tensors: dict[str, torch.Tensor], rank: int) -> None:
    prefix = f"rng.rank{rank}."
    if prefix + "torch" in tensors:
        torch.set_rng_state(tensors[prefix + "torch"])
    if prefix + "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[prefix + "cuda"])
    if prefix + "numpy" in tensors:
        raw = tensors[prefix + "numpy"].numpy()
        keys = raw[: 624 * 4].view(np.uint32)
        pos, has_gauss = raw[624 * 4: 624 * 4 + 16].view(np.int64)
        cached = raw[624 * 4 + 16:].view(np.float64)[0]
        np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), float(cached)))


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the generator that draws everything random in one rank's training step."""
    return int(np.random.SeedSequence([int(seed), int(step), int(rank)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def export_ema_model(checkpoint: Path, out_dir: Path) -> Path:
    """Write a checkpoint's EMA weights as a model folder (``save_pretrained`` format) at ``out_dir``.

    For evaluating intermediate checkpoints with ``xdiffusion evaluate --model`` / ``reconstruct --model``.
    """
    checkpoint = Path(checkpoint)
    config = XDiffusionConfig.load_json(checkpoint / "config.json")
    model = build_denoiser(config)
    model.load_state_dict(load_tensors(checkpoint / EMA_FILE), strict=True)
    return save_pretrained(model, config, out_dir)
