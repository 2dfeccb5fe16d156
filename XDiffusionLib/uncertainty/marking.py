"""What every output file says it is, inside the file: the one home of that text.

A reconstruction is an AI-generated pseudo-MRI, never an acquisition; a file name suffix is lost on
the first copy, so the header says it too. Every NIfTI / NRRD / MetaImage output is written with
``file_metadata``: a result and its uncertainty by ``sampling.result.write_result`` (the CLI,
reconstruct-batch, the worker), single volumes by the demo and by ``slicer.export`` (the Slicer
module and the web app, with the meaning the uncertainty node records); the DICOM exporter takes
``NOT_FOR_DIAGNOSIS`` as its SeriesDescription. What the uncertainty means (``UncertaintyInfo``)
comes with the result (``sampling.result.ReconstructionResult.info``), never from the model folder.

Keys: NIfTI keeps only ``descrip`` (80 bytes, so the short form); NRRD and MetaImage keep every key
(``XDiffusion_content``, ``XDiffusion_notice``, and for the uncertainty its level and units from
``UncertaintyInfo.metadata``).
"""

from __future__ import annotations

from ..errors import XDiffusionError
from ..maps import DIFFERENCE_TITLE, DIFFERENCE_UNITS
from .intervals import UncertaintyInfo

NOT_FOR_DIAGNOSIS = "AI-generated pseudo-MRI (X-Diffusion) - not for diagnosis"
OUTPUTS = ("reconstruction", "uncertainty", "difference")

_SHORT = {  # NIfTI descrip, at most 79 ASCII characters
    "reconstruction": "XDiffusion AI-generated pseudo-MRI - NOT FOR DIAGNOSIS",
    "difference": "XDiffusion difference real - generated (intensity units); not for diagnosis",
}


def file_metadata(what: str, info: UncertaintyInfo | None = None) -> dict[str, str]:
    """Header key-value pairs for an output file of kind ``what`` (one of ``OUTPUTS``); the
    uncertainty needs its ``info`` (its level and units go into the file)."""
    if what not in OUTPUTS:
        raise XDiffusionError(f"unknown output {what!r}: one of {', '.join(OUTPUTS)}")
    notice = {"XDiffusion_content": what, "XDiffusion_notice": NOT_FOR_DIAGNOSIS}
    if what == "uncertainty":
        if info is None:
            raise XDiffusionError("the uncertainty's file needs what it means (its level and units)")
        return {**info.metadata(), **notice}
    if what == "difference":
        return {"descrip": _SHORT[what], **notice, "XDiffusion_difference": DIFFERENCE_TITLE,
                "XDiffusion_difference_units": DIFFERENCE_UNITS}
    return {"descrip": _SHORT[what], **notice}
