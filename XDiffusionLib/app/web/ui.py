"""The page: a control panel on the left, the slice views on the right, the result below them.

Panel, top to bottom: volume (upload with its percentage, shipped sample, path on the server, the
volume picker of a 4D file), input slices (chips), model settings (locked while a run goes),
Reconstruct / Cancel with progress, elapsed time and time left. Above the views: the comparison's
plane, previous / next input slice, overlay and reset; below them: metrics and export. Everything
fits a 1280x720 laptop screen without scrolling. Each view (``view_overlay``) shows its title, slice
index, position in mm, an "input slice" badge, a colour bar with units where colours mean values,
and a slider. Every state key comes from the typed state's name mapping (``names``, a name proxy of
``state.PageState``) and every trigger is the name trame gave a feature's function (``Triggers``):
the page spells neither. Elements the browser tests look for carry ``id="xd-..."``.
"""

from __future__ import annotations

from dataclasses import dataclass

from trame.ui.vuetify3 import VAppLayout
from trame_client.widgets.core import HtmlElement
from trame.widgets import html
from trame.widgets import vuetify3 as v
from trame_slicer.app.logic.slice_view_logic import connect_slice_view_slider_to_state
from trame_slicer.app.ui.slider import Slider

from .state import SAMPLING_FIELDS, PageState, export_fields, reconstruct_fields
from .views import COMPARE_ROLES, COMPARE_TITLES, GENERATED_MARK, GENERATED_ROLES, VIEW_PLANE

_TITLE_STYLE = ("position: absolute; top: 2px; left: 6px; right: 6px; display: flex; align-items: center; gap: 6px;"
                " color: white; font: 13px sans-serif; text-shadow: 0 0 3px black; pointer-events: none;"
                " white-space: nowrap; overflow: hidden; height: 20px;")
_SLIDER_STYLE = "position: absolute; bottom: 0; left: 8px; right: 8px;"
# One line between the image and the slider, in the band the fit keeps free (``views.FIT_MARGINS``).
_COLORBAR_STYLE = ("position: absolute; left: 8px; right: 8px; bottom: 26px; height: 20px; display: flex; gap: 6px;"
                   " align-items: center; color: white; font: 11px sans-serif; pointer-events: none;"
                   " white-space: nowrap; overflow: hidden;")


@dataclass(frozen=True)
class Triggers:
    """The page's triggers: each the name trame gave a feature's function (``ctrl.trigger_name``)."""

    upload_started: str
    upload_progress: str
    upload_failed: str
    load_upload: str
    load_path: str
    load_sample: str
    load_volume_pick: str
    pick: str
    unpick: str
    clear_picks: str
    quick_pick: str
    reconstruct: str
    reconstruct_thick: str
    cancel: str
    previous_input: str
    next_input: str
    reset_views: str
    export: str


class SvgLine(HtmlElement):
    """An SVG ``<line>`` (trame's html widgets have ``<svg>`` but no ``<line>``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("line", **kwargs)
        self.props += ["x1", "y1", "x2", "y2", "stroke", ("stroke_width", "stroke-width"),
                       ("stroke_dasharray", "stroke-dasharray"), ("stroke_opacity", "stroke-opacity"),
                       ("shape_rendering", "shape-rendering")]


def _fields(names) -> str:
    """A JavaScript object of the page's current values of ``names``, sent with a trigger."""
    return "{" + ", ".join(f"{name}: {name}" for name in names) + "}"


def _shown(expression: str) -> str:
    """A template that shows the value of the JavaScript ``expression``."""
    return "{{ " + expression + " }}"


def _call(trigger: str, *args: str) -> str:
    """JavaScript that calls ``trigger`` with ``args`` (JavaScript expressions)."""
    return f"trigger('{trigger}', [{', '.join(args)}])" if args else f"trigger('{trigger}')"


_GESTURES = "left-drag: window/level · right-drag: zoom · middle-drag: pan · wheel: slices"


def build_page(server, layout_manager, names: PageState, triggers: Triggers) -> VAppLayout:
    """The page; ``names``: the state's name mapping (``TypedState.name``)."""
    return _Page(names, triggers).build(server, layout_manager)


class _Page:
    def __init__(self, names: PageState, triggers: Triggers):
        self.n, self.t = names, triggers
        self.running = names.running.running  # disables whatever a run locks

    def build(self, server, layout_manager) -> VAppLayout:
        n = self.n
        with VAppLayout(server, template_name="main", full_height=True) as layout:
            layout.root.theme = "dark"
            with v.VAppBar(density="compact", height=40):
                v.VAppBarTitle("XDiffusion: a 3D MRI volume from a few slices", classes="text-body-1")
                html.Span("AI-generated pseudo-MRI: research and review, not diagnosis",
                          classes="text-caption mr-4 text-medium-emphasis")
                with v.VBtnToggle(v_model=(n.viewing.layout,), mandatory=True, density="compact", variant="outlined",
                                  classes="mr-2"):
                    v.VBtn("Input views", value="input", id="xd-layout-input", size="small")
                    v.VBtn("Comparison", value="compare", disabled=(f"!{n.viewing.has_result}",),
                           id="xd-layout-compare", size="small")
            with v.VNavigationDrawer(permanent=True, width=340, classes="xd-panel pa-1"):
                self._volume_card()
                self._slices_card()
                self._model_card()
                self._run_card()
            with v.VMain():
                with html.Div(style="position: relative; display: flex; flex-direction: column;"
                                    " height: calc(100vh - 40px);"):
                    self._view_toolbar()
                    # Messages have their own line above the views (the gestures' hint when there is
                    # none): never over the anatomy, and the views never change size for them.
                    error, info = n.messages.error, n.messages.info
                    with html.Div(classes="xd-alerts", id="xd-status"):
                        v.VAlert(v_if=error, type="error", density="compact", text=(error,),
                                 closable=True, click_close=f"{error} = ''", id="xd-error")
                        v.VAlert(v_if=f"{info} && !{error}", type="info", density="compact", text=(info,),
                                 closable=True, click_close=f"{info} = ''", id="xd-info")
                        html.Span(_GESTURES, v_if=f"!{error} && !{info}",
                                  classes="text-caption text-medium-emphasis xd-hint")
                    with html.Div(style="flex: 1; display: flex; min-height: 0; position: relative;", id="xd-views"):
                        layout_manager.initialize_layout_grid(layout)
                    self._result_bar()
        return layout

    def _volume_card(self) -> None:
        n, t, loading = self.n, self.t, self.n.loading
        percent = n.messages.upload_percent
        with v.VCard(variant="tonal"):
            v.VCardTitle("1. Volume")
            with v.VCardText():
                html.Div(f"Upload NIfTI, NRRD, MHA or DICOM .zip, max {_shown(loading.max_upload_mb)} MB",
                         classes="text-caption",
                         title=".nii, .nii.gz, .nrrd, .mha, or a .zip of one DICOM series folder",
                         style="white-space: nowrap; overflow: hidden; text-overflow: ellipsis;")
                # The upload script (static/xdiffusion.js) finds the triggers it calls on the input.
                html.Input(type="file", id="xd-upload", accept=".nii,.gz,.nrrd,.mha,.zip",
                           change=f"window.xdiffusionUpload($event.target, {loading.max_upload_bytes})",
                           disabled=(self.running,), style="width: 100%; margin: 2px 0 6px 0;",
                           raw_attrs=[f'data-trigger-started="{t.upload_started}"',
                                      f'data-trigger-progress="{t.upload_progress}"',
                                      f'data-trigger-failed="{t.upload_failed}"',
                                      f'data-trigger-load="{t.load_upload}"'])
                with html.Div(v_if=f"{percent} >= 0", id="xd-upload-progress", classes="mb-1"):
                    v.VProgressLinear(model_value=(percent,), height=6, color="primary")
                    html.Div(f"uploaded {_shown(percent)}%", classes="text-caption", id="xd-upload-percent")
                with html.Div(style="display: flex; gap: 6px; align-items: center;"):
                    v.VSelect(v_model=(loading.sample,), items=(loading.sample_choices,), label="Shipped sample",
                              density="compact", hide_details=True, id="xd-sample")
                    v.VBtn("Open", click=_call(t.load_sample, _fields([loading.sample])),
                           disabled=(self.running,), id="xd-open-sample", size="small")
                with html.Div(v_if=loading.allow_paths, style="display: flex; gap: 6px; align-items: center;",
                              classes="mt-1"):
                    v.VTextField(v_model=(loading.server_path,), label="Path on the server (file or DICOM folder)",
                                 density="compact", hide_details=True, id="xd-path")
                    v.VBtn("Open", click=_call(t.load_path, _fields([loading.server_path])),
                           disabled=(self.running,), id="xd-open-path", size="small")
                with html.Div(v_if=f"{loading.volume_choices}.length",
                              style="display: flex; gap: 6px; align-items: center;", classes="mt-1",
                              id="xd-volume-picker"):
                    v.VSelect(v_model=(loading.volume_pick,), items=(loading.volume_choices,),
                              label=(f"`Volume of ${{{loading.volume_pick_name}}}`",), density="compact",
                              hide_details=True, id="xd-volume-pick", classes="xd-volume-pick")
                    v.VBtn("Open", click=_call(t.load_volume_pick, _fields([loading.volume_pick])),
                           disabled=(self.running,), id="xd-open-volume-pick", size="small")
                html.Div(_shown(n.messages.busy), v_if=n.messages.busy, classes="text-caption mt-1", id="xd-busy")
                html.Div(f"{_shown(loading.volume_name)}: {_shown(loading.volume_info)}", v_if=loading.volume_name,
                         classes="text-body-2 mt-1", id="xd-volume")

    def _slices_card(self) -> None:
        t, picking = self.t, self.n.picking
        picks = picking.picks
        with v.VCard(variant="tonal"):
            # The quick picks open from the title line: they take no row of the panel, and stay in reach
            # however many picks there are.
            with html.Div(classes="v-card-title", style="display: flex; align-items: center;"):
                html.Span("2. Input slices")
                v.VSpacer()
                self._quick_picks()
            with v.VCardText():
                self._thick_slices_offer()
                html.Div("Scroll a view to a slice and press 'Use this slice' (one plane per reconstruction).",
                         v_if=f"!{picks}.length", classes="text-caption")
                # Many picks scroll inside a short box: Reconstruct and the progress stay in view.
                with html.Div(v_if=f"{picks}.length", id="xd-picks", classes="xd-picks"):
                    html.Span(f"{_shown(picking.pick_plane)} ({_shown(picks + '.length')}): ", classes="text-body-2",
                              id="xd-picks-count")
                    v.VChip("{{ i }}", v_for=f"i in {picks}", key="i", closable=True, size="small", classes="ma-1",
                            click_close=_call(t.unpick, "i"), disabled=(self.running,))
                    v.VBtn("Clear", size="x-small", variant="text", click=_call(t.clear_picks),
                           disabled=(self.running,))

    def _thick_slices_offer(self) -> None:
        """A thick-slice scan: every acquired slice onto a finer grid, in one click (``thick_slices``)."""
        thick = self.n.thick_slices
        v.VBtn(_shown(thick.button), v_if=thick.button, size="small", color="primary", variant="tonal",
               block=True, prepend_icon="mdi-view-sequential", id="xd-thick-run",
               classes="mb-1 text-none xd-thick-run", title=(thick.offer,), disabled=(self.running,),
               click=_call(self.t.reconstruct_thick, _fields(reconstruct_fields(self.n))))
        # Two lines at most; the whole reason on hover.
        html.Div(_shown(thick.note), v_if=thick.note, classes="text-caption text-medium-emphasis xd-clamp",
                 id="xd-thick-note", title=(thick.note,))

    def _quick_picks(self) -> None:
        """All acquired slices, every n-th, K spread over the head (``picking.Picking.quick_pick``)."""
        picking = self.n.picking
        with v.VMenu(v_model=(picking.quick_open,), close_on_content_click=False, location="bottom end"):
            with html.Template(v_slot_activator="{ props }"):
                v.VBtn("Quick pick", v_bind="props", size="x-small", variant="tonal", id="xd-quick-open",
                       disabled=(f"{self.running} || !{self.n.loading.volume_name}",))
            with v.VCard(id="xd-quick", width=320):
                with v.VCardText(style="display: flex; gap: 6px; align-items: center;"):
                    v.VSelect(v_model=(picking.quick_how,), label="Quick pick", density="compact", hide_details=True,
                              items=([{"title": "K spread over the head", "value": "spread"},
                                      {"title": "every n-th acquired slice", "value": "every"},
                                      {"title": "all acquired slices", "value": "all"}],),
                              id="xd-quick-how", classes="xd-quick-how")
                    v.VTextField(v_model=(picking.quick_n,), label=(f"{picking.quick_how} === 'spread' ? 'K' : 'n'",),
                                 type="number", min=1, density="compact", hide_details=True, id="xd-quick-n",
                                 style="flex: none; width: 56px;", disabled=(f"{picking.quick_how} === 'all'",))
                    v.VBtn("Pick", size="small", id="xd-quick-pick",
                           click=f"{picking.quick_open} = false; "
                                 + _call(self.t.quick_pick, picking.quick_how, picking.quick_n))

    def _model_card(self) -> None:
        settings = self.n.settings
        with v.VCard(variant="tonal"):
            v.VCardTitle("3. Model settings")
            with v.VCardText():
                # A text area that grows: a long folder path wraps instead of being cut off.
                v.VTextarea(v_model=(settings.model_dir,), label="Model folder (config.json + model.safetensors)",
                            density="compact", hide_details=True, rows=1, auto_grow=True, no_resize=True,
                            disabled=(f"!{self.n.loading.allow_paths} || {self.running}",), id="xd-model",
                            classes="mb-2", style="word-break: break-all;")
                # Views, steps, samples, seed in one row; sampler and guidance below: no label is cut off.
                order = ("views", "steps", "samples", "seed", "sampler", "guidance")
                by_key = {field.key: field for field in SAMPLING_FIELDS}
                # Each field holds its largest value whole (steps 1000; seeds are rarely longer).
                with html.Div(style="display: grid; grid-template-columns: 0.95fr 1.25fr 1.15fr 0.95fr; gap: 6px;",
                              classes="xd-settings"):
                    for key in order:
                        self._sampling_field(by_key[key])
                v.VCheckbox(v_model=(settings.compare,), density="compact", hide_details=True, id="xd-compare",
                            disabled=(self.running,), label="Compare with the loaded volume",
                            title=("The loaded volume is complete: the difference view and the metrics compare the "
                                   "result with it. Only the chosen slices go to the model either way."))

    def _sampling_field(self, field) -> None:
        name = getattr(self.n.sampling, field.key)
        ident = {"views": "xd-views-count", "samples": "xd-samples-count"}.get(field.key, f"xd-{field.key}")
        span = "grid-column: span 2;" if field.key in ("sampler", "guidance") else ""
        if field.kind == "choice":
            v.VSelect(v_model=(name,), items=(self.n.settings.samplers,), label=field.label, density="compact",
                      hide_details=True, id=ident, disabled=(self.running,), classes="xd-sampler", style=span)
            return
        limits = {}
        if field.minimum is not None:
            limits["min"] = field.minimum
        if field.maximum is not None:
            limits["max"] = field.maximum
        hint = f"{field.label}: {field.minimum:g} to {field.maximum:g}" if field.maximum else field.label
        v.VTextField(v_model=(name,), label=field.label, type="number", density="compact", hide_details=True,
                     id=ident, disabled=(self.running,), title=hint, step="0.5" if field.kind == "float" else "1",
                     style=span, **limits)

    def _run_card(self) -> None:
        n, t, run = self.n, self.t, self.n.running
        form = _fields(reconstruct_fields(n))
        with v.VCard(variant="tonal"):
            with v.VCardText():
                with html.Div(style="display: flex; gap: 8px; align-items: center;"):
                    v.VBtn("Reconstruct", color="primary", id="xd-reconstruct", click=_call(t.reconstruct, form),
                           disabled=(f"{self.running} || !{n.picking.picks}.length || !{n.loading.volume_name}",))
                    v.VBtn("Cancel", color="warning", click=_call(t.cancel), v_show=self.running, id="xd-cancel")
                    html.Span("model loaded, ready", v_if=f"{run.worker_warm} && !{run.running}",
                              classes="text-caption text-success", id="xd-worker-ready")
                    html.Span("loading the model in the background", v_if=f"!{run.worker_warm} && !{run.running}",
                              classes="text-caption text-medium-emphasis", id="xd-worker-warming")
                # A long run waits for the page's yes (``running.Running.reconstruct``).
                with v.VDialog(model_value=(f"!!{run.confirm}",), max_width=460, persistent=True):
                    with v.VCard(id="xd-confirm"):
                        v.VCardTitle("A long run")
                        v.VCardText(_shown(run.confirm))
                        with v.VCardActions():
                            v.VSpacer()
                            v.VBtn("Not now", click=f"{run.confirm} = ''", id="xd-confirm-no")
                            v.VBtn("Start", color="primary", id="xd-confirm-yes",
                                   click=f"{run.confirm} = ''; " + _call(t.reconstruct, form, "true", run.confirm_thick))
                with html.Div(v_show=f"{run.running} || {run.progress} > 0", classes="mt-2", id="xd-progress"):
                    v.VProgressLinear(model_value=(run.progress,), height=12, color="primary", rounded=True)
                    html.Div(f"{_shown(f'Math.round({run.progress})')}% {_shown(run.progress_message)}",
                             classes="text-caption", id="xd-progress-text")
                    html.Div(f"elapsed {_shown(run.elapsed)}"
                             + _shown(f"{run.remaining} ? ' · about ' + {run.remaining} + ' left' : ''"),
                             v_if=run.elapsed, classes="text-caption", id="xd-elapsed")

    def _view_toolbar(self) -> None:
        n, t, viewing = self.n, self.t, self.n.viewing
        with html.Div(style="flex: none; display: flex; gap: 8px; align-items: center; padding: 2px 6px; height: 36px;",
                      id="xd-toolbar"):
            with html.Template(v_if=f"{viewing.has_result} && {viewing.layout} === 'compare'"):
                with v.VBtnToggle(v_model=(viewing.result_plane,), mandatory=True, density="compact",
                                  variant="outlined"):
                    for plane in ("axial", "coronal", "sagittal"):
                        v.VBtn(plane, value=plane, id=f"xd-plane-{plane}", size="small")
                v.VBtn("input", prepend_icon="mdi-chevron-left", size="small", variant="tonal",
                       click=_call(t.previous_input), disabled=(f"!{viewing.input_slices}.length",),
                       id="xd-previous-input", title="previous input slice")
                v.VBtn("input", append_icon="mdi-chevron-right", size="small", variant="tonal",
                       click=_call(t.next_input), disabled=(f"!{viewing.input_slices}.length",), id="xd-next-input",
                       title="next input slice")
                v.VSwitch(v_model=(viewing.show_overlay,), label="tissue overlay", disabled=(f"!{viewing.has_overlay}",),
                          density="compact", hide_details=True, id="xd-overlay", color="primary",
                          style="flex: none;")
                v.VChip("stale: from the previous run", v_if=n.running.stale, color="warning", size="small",
                        id="xd-stale")
            html.Div(style="flex: 1;")
            v.VBtn("Reset view", size="small", variant="tonal", click=_call(t.reset_views),
                   disabled=(f"!{n.loading.volume_name}",), id="xd-reset", title=_GESTURES)

    def _result_bar(self) -> None:
        n, viewing, exporting = self.n, self.n.viewing, self.n.exporting
        metrics = viewing.metrics
        with html.Div(v_if=viewing.has_result, id="xd-results",
                      style="flex: none; display: flex; flex-wrap: wrap; gap: 2px 8px; align-items: center;"
                            " padding: 2px 6px; border-top: 1px solid #333;"):
            html.Div("previous run", v_if=n.running.stale, classes="text-caption text-warning")
            html.Div(_shown(viewing.metrics_note), v_if=f"!{metrics}.length", classes="text-caption",
                     id="xd-metrics-note")
            with v.VTable(density="compact", v_if=f"{metrics}.length", id="xd-metrics", classes="xd-metrics",
                          title=(viewing.metrics_note,)):
                with html.Thead():
                    with html.Tr():
                        html.Th("{{ row.short }}", v_for=f"row in {metrics}", key="row.key", title=("row.note",))
                with html.Tbody():
                    with html.Tr():
                        html.Td("{{ row.value }}", v_for=f"row in {metrics}", key="row.key",
                                title=("row.why || row.note",))
            # Why a view or a score is missing, or reads inf / n/a: one line beside the table (all of it on hover).
            html.Div(_shown(viewing.result_note), v_if=f"{viewing.result_note} && {metrics}.length",
                     id="xd-result-note", classes="text-caption text-medium-emphasis",
                     title=(f"{viewing.result_note} + '. ' + {viewing.metrics_note}",),
                     style="flex: 1 1 200px; min-width: 0; white-space: nowrap; overflow: hidden;"
                           " text-overflow: ellipsis;")
            html.Div(style="flex: 1;")
            with html.Div(style="display: flex; gap: 6px; align-items: center;"):
                v.VSelect(v_model=(exporting.what,), items=(exporting.whats,), density="compact",
                          hide_details=True, id="xd-export-what", classes="xd-export-what",
                          style="flex: none; width: 190px;", label="Export")
                v.VSelect(v_model=(exporting.format,), items=(exporting.formats,), density="compact",
                          hide_details=True, id="xd-export-format", classes="xd-export-format",
                          style="flex: none; width: 200px;", label="as")
                v.VBtn("Export", id="xd-export", disabled=(self.running,), color="primary", variant="tonal",
                       click=_call(self.t.export, _fields(export_fields(n))) + ".then(window.xdiffusionDownload)")


def view_overlay(server, view, names: PageState, triggers: Triggers) -> None:
    """Title, slice index and position, input badge, colour bar and slider over one slice view."""
    picking, viewing = names.picking, names.viewing
    tag = view.get_singleton_tag()
    role = COMPARE_ROLES.get(tag, "input")
    # A transparent box over the whole view: the tests screenshot exactly this area.
    html.Div(id=f"xd-view-{tag}", style="position: absolute; inset: 0; pointer-events: none;")
    if role == "generated":  # unmistakable: a coloured frame around the whole generated image
        html.Div(id=f"xd-generated-frame-{tag}", style=f"position: absolute; inset: 0; pointer-events: none;"
                 f" border: 3px solid {GENERATED_MARK}; z-index: 1;")
    lines = f"{picking.view_lines}['{tag}']"
    # The input slices of another plane where they cross this view (Slicer's slice intersections).
    with html.Svg(id=f"xd-lines-{tag}", style="position: absolute; left: 0; top: 0; width: 100%; height: 100%;"
                  " pointer-events: none; overflow: hidden;"):
        SvgLine(v_for=f"line in ({lines} || [])", key="line.index", x1=("line.x1",), y1=("line.y1",),
                x2=("line.x2",), y2=("line.y2",), stroke="#4fc3f7", stroke_width="1", stroke_dasharray="6 4",
                stroke_opacity="0.85", shape_rendering="crispEdges", classes="xd-input-line")
    index = f"{picking.view_index}['{tag}']"
    with html.Div(style=_TITLE_STYLE, id=f"xd-titlebar-{tag}"):
        if tag in VIEW_PLANE:
            html.Span(VIEW_PLANE[tag].capitalize(), id=f"xd-title-{tag}")
        else:
            html.Span(_shown(f"{viewing.view_titles}['{tag}'] || '{COMPARE_TITLES.get(tag, tag)}'"),
                      id=f"xd-title-{tag}")
            if role == "generated":
                v.VChip("AI-generated", size="x-small", variant="flat", color=GENERATED_MARK,
                        id=f"xd-generated-badge-{tag}", title="made by the model, not acquired: not for diagnosis")
            html.Span(_shown(viewing.result_plane), v_if=f"{index} != null")
        html.Span(_shown(index), v_if=f"{index} != null", id=f"xd-index-{tag}", style="font-weight: bold;")
        html.Span(_shown(f"{picking.view_label}['{tag}']"), v_if=f"{index} != null", id=f"xd-position-{tag}",
                  classes="text-medium-emphasis", title=(f"{picking.view_position_note}['{tag}']",),
                  style="pointer-events: auto; overflow: hidden; text-overflow: ellipsis; min-width: 0;")
        v.VChip("input slice", size="x-small", color="primary", variant="flat", id=f"xd-badge-{tag}",
                style="flex: none;", v_if=f"{picking.view_is_input}['{tag}']")
        if role in GENERATED_ROLES:  # only what the previous run made is stale, never the real volume
            v.VChip("stale", size="x-small", color="warning", variant="flat", v_if=names.running.stale,
                    id=f"xd-stale-{tag}")
        html.Div(style="flex: 1;")
        if tag in VIEW_PLANE:
            v.VBtn("Use this slice", size="x-small", color="primary", click=_call(triggers.pick, f"'{tag}'"),
                   disabled=(f"!{names.loading.volume_name} || {names.running.running}",), id=f"xd-use-{tag}",
                   style="pointer-events: auto;")
    if role in ("real", "generated"):  # the tissue overlay's classes, where its colours are drawn
        legend = viewing.overlay_legend
        with html.Div(v_if=f"{viewing.show_overlay} && {legend}.length", style=_COLORBAR_STYLE,
                      id=f"xd-legend-{tag}", classes="xd-legend"):
            with html.Span(v_for=f"item in {legend}", key="item.name",
                           style="display: inline-flex; align-items: center; gap: 3px; margin-right: 6px;"):
                html.Span(style=("{ background: item.color, width: '10px', height: '10px', border: '1px solid #888',"
                                 " display: 'inline-block' }",), classes="xd-legend-swatch")
                html.Span("{{ item.name }}", classes="xd-legend-name")
    if tag not in VIEW_PLANE:
        bar = f"{viewing.colorbars}['{tag}']"
        with html.Div(v_if=bar, style=_COLORBAR_STYLE, id=f"xd-colorbar-{tag}"):
            html.Span(_shown(f"{bar}.low"), id=f"xd-colorbar-low-{tag}")
            html.Div(style=(f"{{ background: {bar}.gradient, height: '10px', border: '1px solid #888',"
                            " flex: '1 1 60px', minWidth: '40px' }",), classes="xd-colorbar-gradient")
            html.Span(_shown(f"{bar}.high"), id=f"xd-colorbar-high-{tag}")
            html.Span(_shown(f"{bar}.label"), id=f"xd-colorbar-label-{tag}", title=(f"{bar}.label",),
                      style="overflow: hidden; text-overflow: ellipsis; flex: 0 1 auto; min-width: 0;")
    with html.Div(style=_SLIDER_STYLE, id=f"xd-slider-{tag}"):
        Slider(typed_state=connect_slice_view_slider_to_state(server, view), theme="dark", dense=True)
