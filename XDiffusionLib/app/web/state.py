"""The page's state: every field's name and default, in one place.

trame mirrors one flat state dictionary between the server and the page. The session
(``session.py``), its feature modules (``loading``, ``picking``, ``running``, ``viewing``,
``exporting``) and the page (``ui.py``) all take the names from here, and nothing here imports
them back. Sampling fields, their defaults, choices and limits derive from the one settings home,
``XDiffusionLib.settings``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...maps import DIFFERENCE_TITLE
from ...settings import DEFAULTS, MAX_GUIDANCE, MAX_SAMPLES, MAX_STEPS, MAX_VIEWS, SAMPLERS


@dataclass(frozen=True)
class SamplingField:
    """One sampling setting as the page shows it: state key, label, HTML input limits."""

    key: str
    label: str
    kind: str  # "int", "float" or "choice"
    minimum: float | None = None
    maximum: float | None = None

    @property
    def name(self) -> str:
        return f"xd_{self.key}"

    @property
    def default(self):
        return getattr(DEFAULTS, self.key)


SAMPLING_FIELDS: tuple[SamplingField, ...] = (
    SamplingField("views", "views", "int", 1, MAX_VIEWS),
    SamplingField("steps", "steps", "int", 1, MAX_STEPS),
    SamplingField("sampler", "sampler", "choice"),
    SamplingField("guidance", "guidance", "float", 0, MAX_GUIDANCE),
    SamplingField("seed", "seed", "int", None, None),
    SamplingField("samples", "samples", "int", 1, MAX_SAMPLES),
)
# Form values the page sends along with these triggers (a value typed just before a click may
# otherwise reach the server after the click).
RECONSTRUCT_FIELDS: tuple[str, ...] = ("xd_model_dir", *(f.name for f in SAMPLING_FIELDS), "xd_compare")
EXPORT_FIELDS: tuple[str, ...] = ("xd_export_what", "xd_export_format")

EXPORT_WHAT_TITLES = {"reconstruction": "reconstruction", "uncertainty": "uncertainty",
                      "difference": DIFFERENCE_TITLE}
# Only the reconstruction is an image of the head: DICOM is offered for it alone.
DICOM_WHATS = ("reconstruction",)


def initial_state(*, max_upload_bytes: int, allow_server_paths: bool, model_shown: str,
                  sample_choices: list[dict], export_format_titles: dict[str, str]) -> dict:
    """Every field of the page with its value before anything was loaded."""
    return {
        "trame__title": "XDiffusion",
        "trame__favicon": "xdiffusion_static/favicon.svg",  # relative: under the hub's /s/<token>/ too
        # messages
        "xd_error": "",
        "xd_info": "",
        "xd_busy": "",
        # 1. volume
        "xd_max_upload_bytes": int(max_upload_bytes),
        "xd_max_upload_mb": round(max_upload_bytes / (1 << 20)),
        "xd_upload_percent": -1,  # -1: no upload running
        "xd_allow_paths": bool(allow_server_paths),
        "xd_server_path": "",
        "xd_sample_choices": sample_choices,
        "xd_sample": "kmeans_t1",
        "xd_volume_name": "",
        "xd_volume_info": "",
        "xd_volume_choices": [],  # a 4D file: its volumes, to pick one in the page
        "xd_volume_pick": 0,
        "xd_volume_pick_name": "",
        # 2. input slices; per view: its canonical index, position in mm, whether it is an input
        "xd_view_index": {},
        "xd_view_label": {},
        "xd_view_is_input": {},
        "xd_confirm": "",  # a long run waits for the page's yes
        "xd_confirm_thick": False,  # ... and is the thick-slice run
        "xd_quick_open": False,  # the quick picks' menu
        "xd_quick_how": "spread",  # quick picks: "all", "every" (n-th) or "spread" (K over the head)
        "xd_quick_n": 5,
        "xd_view_position_note": {},  # what the position label's coordinate is (hover text)
        "xd_view_lines": {},  # the input slices crossing each view: [{x1, y1, x2, y2, index}] in pixels
        "xd_pick_plane": "",
        "xd_picks": [],
        # a thick-slice scan: all acquired slices onto a finer grid in one click (``thick_slices``)
        "xd_thick_button": "",  # the button's words ("" : not offered)
        "xd_thick_offer": "",  # what it does (the plan, in the library's words)
        "xd_thick_note": "",  # why a thick-slice scan is not offered it (the model's limit ...)
        # 3. model and sampling (defaults and limits: XDiffusionLib.settings)
        "xd_model_dir": model_shown,
        "xd_samplers": list(SAMPLERS),
        "xd_limits": {f.key: {"min": f.minimum, "max": f.maximum} for f in SAMPLING_FIELDS},
        **{f.name: f.default for f in SAMPLING_FIELDS},
        "xd_compare": True,
        # 4. run
        "xd_worker_warm": False,
        "xd_running": False,
        "xd_progress": 0.0,
        "xd_progress_message": "",
        "xd_elapsed": "",
        "xd_remaining": "",
        "xd_stale": False,  # the result shown is from before the running reconstruction
        # 5. result
        "xd_has_result": False,
        "xd_layout": "input",
        "xd_result_plane": "axial",
        "xd_show_overlay": False,  # off: the anatomy first, the classes on request
        "xd_has_overlay": False,
        "xd_overlay_legend": [],  # the overlay's classes as drawn: [{name, color}]
        "xd_input_slices": [],  # input slices of the plane the comparison shows
        "xd_view_titles": {},  # comparison view tag -> its title (a thick-slice run's real view: "Acquired")
        "xd_colorbars": {},  # view tag -> {gradient, low, high, label}
        "xd_metrics": [],
        "xd_metrics_note": "",
        "xd_result_note": "",  # shown beside the metrics: why a view or score is missing (a thick-slice run)
        "xd_export_what": "reconstruction",
        "xd_export_whats": [],
        "xd_export_format": "nifti",
        "xd_export_formats": [{"title": t, "value": k} for k, t in export_format_titles.items()],
        "xd_download_name": "",
    }
