"""The shipped held-out heads as 3D Slicer Sample Data, loaded from the installed package.

The Sample Data module lists a source under its category and, when it is clicked (or
``SampleData.downloadSample(name)`` is called), fetches each of its ``uris`` into Slicer's cache with
urllib and loads it. A ``file:`` URI of the shipped file is copied there without any network. The
cached name carries XDiffusion's version, so a later release's sample is never shadowed by an older
copy in the cache. The module registers these when Slicer has started (``XDiffusion.py``).
"""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..data.samples import SAMPLES

CATEGORY = "XDiffusion"
# Held-out heads only (never seen in training): sample name -> (title in Sample Data, node name).
SHOWN = {
    "kmeans_t1": ("T1 head (2x2x3 mm)", "XDiffusionT1Head"),
    "pydeface_mean": ("Mean T1 head", "XDiffusionMeanHead"),
    "mni152_nlin6": ("MNI152 T1 (2 mm)", "XDiffusionMNI152T1"),
}


def sample_data_sources(icons: str | Path | None = None) -> list[dict]:
    """Keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource``, one dict per
    shipped head; ``icons``: the folder with their thumbnails (``<node name>.png``)."""
    sources = []
    for name, (title, node_name) in SHOWN.items():
        sample = SAMPLES[name]
        thumbnail = Path(icons) / f"{node_name}.png" if icons is not None else None
        sources.append({
            "category": CATEGORY,
            "sampleName": title,
            "uris": sample.path.resolve().as_uri(),
            "fileNames": f"XDiffusion-{__version__}-{sample.filename}",
            "nodeNames": node_name,
            "loadFileTypes": "VolumeFile",
            "thumbnailFileName": str(thumbnail) if thumbnail is not None and thumbnail.is_file() else None,
        })
    return sources


__all__ = ["CATEGORY", "SHOWN", "sample_data_sources"]
