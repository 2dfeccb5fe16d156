"""Draws the Sample Data thumbnails of the shipped heads (``<node name>.png``, 128x128): the middle
sagittal slice of each, grey-scale, at the same window as Slicer's automatic one (the 1st to 99th
percentile of the head).

Run once: ``.venv/bin/python XDiffusion/Resources/Icons/make_sample_thumbnails.py``. Not installed
with the extension (only the PNGs are).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from XDiffusionLib.data.samples import SAMPLES
from XDiffusionLib.io import read_volume
from XDiffusionLib.slicer.sample_data import SHOWN
from XDiffusionLib.transforms.orientation import to_canonical


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, (_, node_name) in SHOWN.items():
        canonical = to_canonical(read_volume(SAMPLES[name].path))[0]  # RAS+: [x, y, z]
        array = np.asarray(canonical.array, dtype=np.float64)
        middle = array[array.shape[0] // 2]  # sagittal: [y, z]
        low, high = np.percentile(array[array > array.min()], [1, 99])
        image = np.clip((middle - low) / max(high - low, 1e-6), 0, 1)
        picture = Image.fromarray((255 * image.T[::-1]).astype(np.uint8))  # superior up, anterior right
        spacing = canonical.spacing
        height = max(1, round(picture.height * spacing[2] / spacing[1]))
        picture = picture.resize((picture.width, height), Image.BILINEAR)
        side = max(picture.size)
        square = Image.new("L", (side, side))
        square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
        square.resize((128, 128), Image.LANCZOS).save(here / f"{node_name}.png", optimize=True)


if __name__ == "__main__":
    main()
