"""The page's state, typed: one dataclass per feature, gathered in ``PageState``, declared once.

trame mirrors one flat dictionary between the server and the page. trame-server's ``TypedState``
lays these dataclasses over it: the session and its features read and write typed attributes
(``page.data.running.progress = 50.0``) and bind callbacks to their changes, and the page
(``ui.py``) takes every key it names from the same mapping (``page.name.running.progress`` is the
key ``PageState__running__RunningState__progress``); no key is spelled by hand, and a field the
dataclasses do not declare cannot be written (``typed_page``). Each feature writes
its own section and the status lines (``messages``), and reads any. Nothing here imports the
features back. Sampling fields, their defaults, choices and limits derive from the one settings
home, ``XDiffusionLib.settings``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, get_type_hints

from ...maps import DIFFERENCE_TITLE
from ...settings import DEFAULTS, MAX_GUIDANCE, MAX_SAMPLES, MAX_STEPS, MAX_VIEWS, SAMPLERS

if TYPE_CHECKING:
    from trame_server.state import State
    from trame_server.utils.typed_state import TypedState

TITLE = "XDiffusion"
FAVICON = "xdiffusion_static/favicon.svg"  # relative: under the hub's /s/<token>/ too


@dataclass(frozen=True)
class SamplingField:
    """One sampling setting as the page shows it: its key (a field of ``SamplingState`` and of
    ``settings.ReconstructionSettings``), label, HTML input limits."""

    key: str
    label: str
    kind: str  # "int", "float" or "choice"
    minimum: float | None = None
    maximum: float | None = None


SAMPLING_FIELDS: tuple[SamplingField, ...] = (
    SamplingField("views", "views", "int", 1, MAX_VIEWS),
    SamplingField("steps", "steps", "int", 1, MAX_STEPS),
    SamplingField("sampler", "sampler", "choice"),
    SamplingField("guidance", "guidance", "float", 0, MAX_GUIDANCE),
    SamplingField("seed", "seed", "int", None, None),
    SamplingField("samples", "samples", "int", 1, MAX_SAMPLES),
)

EXPORT_WHAT_TITLES = {"reconstruction": "reconstruction", "uncertainty": "uncertainty",
                      "difference": DIFFERENCE_TITLE}
# Only the reconstruction is an image of the head: DICOM is offered for it alone.
DICOM_WHATS = ("reconstruction",)


@dataclass
class MessagesState:
    """The status lines: an error or a note above the views; in the volume card what the session
    is busy with and the running upload's percentage. Any feature writes them; an error ends the others."""

    error: str = ""
    info: str = ""
    busy: str = ""
    upload_percent: int = -1  # -1: no upload running


@dataclass
class LoadingState:
    """1. Volume: upload, shipped sample, path on the server, one volume of a 4D file (``loading``)."""

    max_upload_bytes: int = 0
    max_upload_mb: int = 0
    allow_paths: bool = False
    server_path: str = ""
    sample_choices: list[dict] = field(default_factory=list)
    sample: str = "kmeans_t1"
    volume_name: str = ""
    volume_info: str = ""
    volume_choices: list[dict] = field(default_factory=list)  # a 4D file: its volumes, to pick one
    volume_pick: int | str = 0  # as the page sends it: a number, checked when it is loaded
    volume_pick_name: str = ""


@dataclass
class PickingState:
    """2. Input slices, and what each view shows, by view tag (``picking``)."""

    view_index: dict[str, int | None] = field(default_factory=dict)  # canonical slice index
    view_label: dict[str, str] = field(default_factory=dict)  # position in mm
    view_position_note: dict[str, str] = field(default_factory=dict)  # what the position means (hover)
    view_is_input: dict[str, bool] = field(default_factory=dict)
    view_lines: dict[str, list[dict]] = field(default_factory=dict)  # input slices crossing it: [{x1, y1, x2, y2, index}]
    pick_plane: str = ""
    picks: list[int] = field(default_factory=list)
    quick_open: bool = False  # the quick picks' menu
    quick_how: str = "spread"  # "all", "every" (n-th) or "spread" (K over the head)
    quick_n: int | str = 5  # a number field: text once edited


@dataclass
class ThickSlicesState:
    """A thick-slice scan: all acquired slices onto a finer grid in one click (``thick_slices``)."""

    button: str = ""  # the button's words ("": not offered)
    offer: str = ""  # what it does (the plan, in the library's words)
    note: str = ""  # why a thick-slice scan is not offered it (the model's limit ...)


@dataclass
class SamplingState:
    """3. The sampling settings' fields (``SAMPLING_FIELDS``), as the page holds them: numbers, or
    the text a field sends once edited; ``running.options_from_page`` parses and checks them."""

    views: int | str = DEFAULTS.views
    steps: int | str = DEFAULTS.steps
    sampler: str = DEFAULTS.sampler
    guidance: float | str = DEFAULTS.guidance
    seed: int | str = DEFAULTS.seed
    samples: int | str = DEFAULTS.samples


@dataclass
class SettingsState:
    """3. The model and the comparison (defaults and limits: ``XDiffusionLib.settings``)."""

    model_dir: str = ""
    samplers: list[str] = field(default_factory=lambda: list(SAMPLERS))
    limits: dict[str, dict] = field(default_factory=lambda: {f.key: {"min": f.minimum, "max": f.maximum}
                                                             for f in SAMPLING_FIELDS})
    compare: bool = True


@dataclass
class RunningState:
    """4. The run (``running``)."""

    worker_warm: bool = False
    running: bool = False
    progress: float = 0.0
    progress_message: str = ""
    elapsed: str = ""
    remaining: str = ""
    stale: bool = False  # the result shown is from before the running reconstruction
    confirm: str = ""  # a long run waits for the page's yes
    confirm_thick: bool = False  # ... and is the thick-slice run


@dataclass
class ViewingState:
    """5. The layout and the result (``viewing``)."""

    has_result: bool = False
    layout: str = "input"
    result_plane: str = "axial"
    show_overlay: bool = False  # off: the anatomy first, the classes on request
    has_overlay: bool = False
    overlay_legend: list[dict] = field(default_factory=list)  # the overlay's classes as drawn: [{name, color}]
    input_slices: list[int] = field(default_factory=list)  # input slices of the plane the comparison shows
    view_titles: dict[str, str] = field(default_factory=dict)  # comparison view tag -> its title
    colorbars: dict[str, dict] = field(default_factory=dict)  # view tag -> {gradient, low, high, label}
    metrics: list[dict] = field(default_factory=list)
    metrics_note: str = ""
    result_note: str = ""  # beside the metrics: why a view or score is missing (a thick-slice run)


@dataclass
class ExportingState:
    """5. Export (``exporting``)."""

    what: str = "reconstruction"
    whats: list[dict] = field(default_factory=list)
    format: str = "nifti"
    formats: list[dict] = field(default_factory=list)
    download_name: str = ""


@dataclass
class PageState:
    messages: MessagesState = field(default_factory=MessagesState)
    loading: LoadingState = field(default_factory=LoadingState)
    picking: PickingState = field(default_factory=PickingState)
    thick_slices: ThickSlicesState = field(default_factory=ThickSlicesState)
    settings: SettingsState = field(default_factory=SettingsState)
    sampling: SamplingState = field(default_factory=SamplingState)
    running: RunningState = field(default_factory=RunningState)
    viewing: ViewingState = field(default_factory=ViewingState)
    exporting: ExportingState = field(default_factory=ExportingState)


def initial_state(*, max_upload_bytes: int, allow_server_paths: bool, model_shown: str,
                  sample_choices: list[dict], export_format_titles: dict[str, str]) -> PageState:
    """Every field of the page with its value before anything was loaded."""
    return PageState(
        loading=LoadingState(max_upload_bytes=int(max_upload_bytes), max_upload_mb=round(max_upload_bytes / (1 << 20)),
                             allow_paths=bool(allow_server_paths), sample_choices=sample_choices),
        settings=SettingsState(model_dir=model_shown),
        exporting=ExportingState(formats=[{"title": t, "value": k} for k, t in export_format_titles.items()]),
    )


def typed_page(state: State) -> TypedState[PageState]:
    """``PageState`` laid over the trame ``state``, as a session holds it. trame-server's proxies
    take any attribute: a misspelt field (``page.data.running.progres = 5``) would become a Python
    attribute the page never sees, silently; here writing a field its dataclass does not declare
    raises AttributeError, in the data proxies and the name proxies alike."""
    # trame-server: loaded by a session, not with the page's declarations (ui.py and the features import them)
    from trame_server.utils.typed_state import TypedState

    page = TypedState(state, PageState)
    _declared_fields_only(page.data, PageState)
    _declared_fields_only(page.name, PageState)
    return page


def _declared_fields_only(proxy, dataclass_type: type) -> None:
    """Make ``proxy`` (a ``TypedState`` proxy of ``dataclass_type``) and its nested proxies refuse
    an undeclared attribute. Each ``TypedState`` builds its own proxy classes, so only this page's change."""
    declared = tuple(f.name for f in fields(dataclass_type))
    proxy_class = type(proxy)
    plain_setattr = proxy_class.__setattr__

    def __setattr__(instance, name: str, value) -> None:
        if name not in declared:
            near = difflib.get_close_matches(name, declared, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise AttributeError(f"{dataclass_type.__name__} has no field {name!r}{hint}: the page state takes "
                                 f"only the fields its dataclasses declare (app/web/state.py)")
        plain_setattr(instance, name, value)

    proxy_class.__setattr__ = __setattr__
    types = get_type_hints(dataclass_type)
    for name in declared:
        if is_dataclass(types[name]):
            _declared_fields_only(getattr(proxy, name), types[name])


def sampling_names(names: PageState) -> tuple[str, ...]:
    """The keys of the sampling fields, in ``SAMPLING_FIELDS``' order."""
    return tuple(getattr(names.sampling, f.key) for f in SAMPLING_FIELDS)


# Form values the page sends along with the Reconstruct and Export triggers (a value typed just
# before a click may otherwise reach the server after the click).
def reconstruct_fields(names: PageState) -> tuple[str, ...]:
    return (names.settings.model_dir, *sampling_names(names), names.settings.compare)


def export_fields(names: PageState) -> tuple[str, ...]:
    return (names.exporting.what, names.exporting.format)


if tuple(f.name for f in fields(SamplingState)) != tuple(f.key for f in SAMPLING_FIELDS):
    raise AssertionError("SamplingState and SAMPLING_FIELDS name the same settings, in the same order")


def take_form(state, fields, names: tuple[str, ...]) -> None:
    """Bring the form values a trigger sent along (``fields``: key -> value) into the trame
    ``state`` first, those of ``names`` only: a value typed just before a click may otherwise reach
    the server after the click."""
    if isinstance(fields, dict):
        with state:
            for name in names:
                if name in fields:
                    state[name] = fields[name]
