"""``xdiffusion train``: train a cross-sectional denoiser on a folder (or folders) of volumes.

Runs on CPU, one GPU, or data-parallel under ``accelerate launch --multi_gpu --num_processes N
-m XDiffusionLib.app.cli train ...`` (on a CPU-only machine too: the processes then talk over gloo;
``--num_processes N`` without ``--multi_gpu`` starts a single process on CPU-only machines) or
``torchrun --nproc_per_node N -m XDiffusionLib.app.cli train ...``. Everything is checked before anything is
written: a bad argument gives one error line and leaves the disk untouched.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from ...errors import XDiffusionError
from ...model.config import INFERENCE_FIELDS, XDiffusionConfig
from ...training.anchor_bank import BANK_FILE
from ...training.config import TrainConfig, model_profile, train_profile

RESUMABLE_OVERRIDES = ("steps", "checkpoint_every", "validate_every")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on volumes (synthetic subjects, BraTS, NIfTI/NRRD/MHA/DICOM folders)",
        description=(
            "Train an X-Diffusion denoiser (paper eq. 2). Writes RUN_DIR/checkpoints/step-XXXXXX, "
            "RUN_DIR/final (EMA weights for `xdiffusion reconstruct --model`), train_log.csv and "
            "validation.csv/.png. Data parallel: `accelerate launch --multi_gpu --num_processes N -m XDiffusionLib.app.cli train ...`."
        ),
    )
    parser.add_argument("--data", nargs="+", metavar="PATH", help="volume files or folders (required unless --resume)")
    parser.add_argument("--profile", help="model/training profile: compact (CPU-sized) or paper")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created)")
    parser.add_argument("--steps", type=int, help="total optimizer steps")
    parser.add_argument("--batch-size", type=int, help="examples per step per process")
    parser.add_argument("--lr", type=float, help="peak learning rate (AdamW)")
    parser.add_argument("--side", type=int, help="model cube side in voxels (model config 'side')")
    parser.add_argument("--checkpoint-every", type=int, metavar="N", help="checkpoint every N steps")
    parser.add_argument("--validate-every", type=int, metavar="N", help="validate every N steps (0: never)")
    parser.add_argument("--val-data", nargs="+", metavar="PATH", help="validation volumes (synthetic, another seed)")
    parser.add_argument("--seed", type=int, help="seed of initial weights and of every step's random draws")
    parser.add_argument("--init", metavar="MODEL_DIR",
                        help="start from this model folder's weights and config (fine-tuning; a new run, fresh "
                             "optimizer); --config may still change its non-network keys, e.g. the anchor's decays")
    parser.add_argument("--resume", nargs="?", const="", metavar="DIR",
                        help="continue RUN_DIR's latest checkpoint, or the checkpoint/run folder DIR")
    parser.add_argument("--mixed-precision", help="no, bf16 or fp16 (bf16 is for GPUs)")
    parser.add_argument("--config", metavar="JSON",
                        help="overrides as a JSON object or a .json file: model config keys and/or training keys")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="stop after N steps of this invocation with a checkpoint (continue with --resume)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _parse_overrides(text: str | None) -> dict:
    if not text:
        return {}
    path = Path(text)
    source = text
    if not text.lstrip().startswith("{"):
        if not path.is_file():
            raise XDiffusionError(f"--config {text}: neither a JSON object nor an existing .json file")
        text, source = path.read_text(), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise XDiffusionError(f"--config {source}: invalid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, dict):
        raise XDiffusionError(f"--config {source}: expected a JSON object")
    return data


def _split_overrides(data: dict) -> tuple[dict, dict]:
    model_keys = {f.name for f in fields(XDiffusionConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - model_keys - train_keys)
    if unknown:
        raise XDiffusionError(f"--config: unknown key(s) {', '.join(unknown)}")
    return ({k: v for k, v in data.items() if k in model_keys}, {k: v for k, v in data.items() if k in train_keys})


def _cli_train_overrides(args) -> dict:
    return {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "checkpoint_every": args.checkpoint_every,
        "validate_every": args.validate_every,
        "seed": args.seed,
        "mixed_precision": args.mixed_precision,
    }


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise XDiffusionError(f"--out {out} is an existing file: give a folder")
    # A folder holding only a cached anchor bank (a run stopped before its first checkpoint) is reused.
    if not resume and out.is_dir() and any(p.name != BANK_FILE for p in out.iterdir()):
        raise XDiffusionError(f"--out {out} already holds files: use --resume to continue it, or another folder")


def prepare_run(args):
    """Check every argument and build the run's configs; nothing is written here."""
    # torch (and the trainer's accelerate, diffusers): loaded when a run is prepared, not with --help.
    from ...training import checkpoints
    from ...training.trainer import RunSpec

    out = Path(args.out)
    resume = args.resume is not None
    _check_out(out, resume)
    model_over, train_over = _split_overrides(_parse_overrides(args.config))
    if args.steps is not None and args.steps <= 0:
        raise XDiffusionError(f"--steps must be a positive number of steps, got {args.steps}")

    if resume:
        folder = checkpoints.resolve_resume(Path(args.resume) if args.resume else out)
        # Every file the trainer will load is checked first: one line naming it, not a traceback.
        meta = checkpoints.read_training_state(folder)
        model_config = checkpoints.check_checkpoint_weights(folder)
        changed = {k: v for k, v in _cli_train_overrides(args).items() if v is not None and k not in RESUMABLE_OVERRIDES}
        if changed or args.profile or args.side or model_over or set(train_over) - set(RESUMABLE_OVERRIDES):
            raise XDiffusionError(
                "--resume continues with the checkpoint's settings: only --steps, --checkpoint-every, "
                "--validate-every, --val-data and --data may be given"
            )
        try:
            saved = TrainConfig.from_dict(meta["train_config"])
        except (XDiffusionError, TypeError, ValueError) as error:
            raise XDiffusionError(f"{folder / checkpoints.STATE_JSON}: its train_config is not usable ({error})") from None
        train_config = TrainConfig.from_dict({**saved.to_dict(), **train_over}).with_overrides(
            **{k: getattr(args, k) for k in RESUMABLE_OVERRIDES}
        )
        if train_config.steps <= int(meta["step"]):
            raise XDiffusionError(f"{folder} is at step {meta['step']}: pass --steps above it to train further")
        data = args.data or meta["data_sources"]
        val_data = args.val_data if args.val_data is not None else meta.get("val_data", [])
        return RunSpec(out, model_config, train_config, list(map(str, data)), list(map(str, val_data)), folder,
                       progress=not args.no_progress)

    if getattr(args, "init", None):
        from ...model.checkpoint import check_model_folder  # torch, as above

        if not args.data:
            raise XDiffusionError("--data is required: volume files or folders to train on")
        base = check_model_folder(args.init)
        # The inference fields (the residual's gain, the anchor's weight rule) were chosen for the old
        # residual: the new run starts from their defaults, unless --config sets them.
        kept = {key: value for key, value in base.to_dict().items() if key not in INFERENCE_FIELDS}
        model_config = type(base).from_dict({**kept, **model_over})
        if model_config.profile != base.profile or model_config.side != base.side:
            raise XDiffusionError(f"--init {args.init}: --config may not change the network's profile or side")
        base_train = train_profile(model_config.profile)
        train_config = TrainConfig.from_dict({**base_train.to_dict(), **train_over}).with_overrides(
            **_cli_train_overrides(args))
        return RunSpec(out, model_config, train_config, list(args.data), list(args.val_data or []), None,
                       progress=not args.no_progress, init_from=Path(args.init))
    if not args.profile:
        raise XDiffusionError("--profile is required: compact (CPU-sized) or paper")
    if not args.data:
        raise XDiffusionError("--data is required: volume files or folders to train on")
    base_train = train_profile(args.profile)
    model_config = model_profile(args.profile, side=args.side, overrides=model_over)
    train_config = TrainConfig.from_dict({**base_train.to_dict(), **train_over}).with_overrides(**_cli_train_overrides(args))
    return RunSpec(out, model_config, train_config, list(args.data), list(args.val_data or []), None,
                   progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    from ...training.trainer import train  # torch: loaded when training runs, not with --help

    if args.stop_after is not None and args.stop_after <= 0:
        raise XDiffusionError(f"--stop-after must be a positive number of steps, got {args.stop_after}")
    spec = prepare_run(args)
    final = train(spec, args.stop_after)
    if final is None:
        print(f"stopped with a checkpoint in {Path(args.out) / 'checkpoints'}: continue with --resume")
    else:
        print(f"trained model (EMA weights): {final}")
    return 0
