"""Build a residual training run's anchor bank ahead of `xdiffusion train`, in parallel shards,
reusing a bank already built for the first sources.

    python scripts/build_anchor_bank.py --model XDiffusionLib/model/weights/compact \
        --data synth-train synth-varied --out RUN_DIR --reuse OLD_RUN/anchor_bank.npz --processes 2

Entry j of source i depends only on (seed, i, j) (`training/anchor_bank.py`), so a bank built
earlier with the same seed, entries per source and model settings for a prefix of the sources is
exactly this bank's first part. The result is RUN_DIR/anchor_bank.npz, which
`xdiffusion train --data <the same sources> --out RUN_DIR` then loads instead of rebuilding.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.model.checkpoint import check_model_folder
from XDiffusionLib.training.anchor_bank import BANK_FILE, AnchorBank, anchor_settings, build_bank, merge_banks
from XDiffusionLib.training.data import find_volume_sources


def _shard(args: tuple) -> AnchorBank:
    sources, config, per_volume, seed, volumes = args
    return build_bank(sources, config, per_volume, seed, progress=False, volumes=volumes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder whose config the run uses (as --init)")
    parser.add_argument("--config", default="{}", help="model config overrides as JSON (as train --config)")
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--per-volume", type=int, default=1, help="entries per source (train's anchors_per_volume)")
    parser.add_argument("--seed", type=int, default=0, help="train's --seed")
    parser.add_argument("--reuse", default=None, help="a bank built with the same settings for a prefix of the sources")
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args(argv)

    base = check_model_folder(args.model)
    config = type(base).from_dict({**base.to_dict(), **json.loads(args.config)})
    sources = find_volume_sources(args.data)
    done: list[AnchorBank] = []
    start = 0
    if args.reuse:
        old = AnchorBank.load(Path(args.reuse))
        prefix = [str(s) for s in sources[: len(old.sources)]]
        if (old.sources != prefix or old.side != config.side or len(old) != len(old.sources) * args.per_volume
                or not old.matches(config)):
            raise XDiffusionError(f"{args.reuse}: not a bank of the first {len(old.sources)} sources with "
                                  f"{args.per_volume} entries each at side {config.side} and anchor settings "
                                  f"{anchor_settings(config)} (it has {old.anchor})")
        done, start = [old], len(old.sources)
    remaining = list(range(start, len(sources)))
    chunks = [remaining[i:: args.processes] for i in range(args.processes)]
    jobs = [(sources, config, args.per_volume, args.seed, chunk) for chunk in chunks if chunk]
    with ProcessPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        shards = list(pool.map(_shard, jobs))
    # Put the interleaved shards' entries back in source order.
    by_source = {}
    for shard in shards:
        for k, source in enumerate(shard.sources):
            lo, hi = k * args.per_volume, (k + 1) * args.per_volume
            by_source[source] = AnchorBank(shard.cubes[lo:hi], shard.anchors[lo:hi], shard.axes[lo:hi],
                                           shard.positions[lo:hi], shard.points[lo:hi], [source], shard.anchor)
    ordered = [by_source[str(sources[i])] for i in remaining]
    bank = merge_banks(done + ordered)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bank.save(out / BANK_FILE)
    print(f"{out / BANK_FILE}: {len(bank)} entries from {len(bank.sources)} sources "
          f"({len(remaining)} built, {start} reused)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
