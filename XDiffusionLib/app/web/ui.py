"""The page: a control panel on the left, the slice views on the right, the result below them.

Panel, top to bottom: volume (upload with its percentage, shipped sample, path on the server, the
volume picker of a 4D file), input slices (chips), model settings (locked while a run goes),
Reconstruct / Cancel with progress, elapsed time and time left. Above the views: the comparison's
plane, previous / next input slice, overlay and reset; below them: metrics and export. Everything
fits a 1280x720 laptop screen without scrolling. Each view (``view_overlay``) shows its title, slice
index, position in mm, an "input slice" badge, a colour bar with units where colours mean values,
and a slider. Field names come from ``state``; elements the browser tests look for carry
``id="xd-..."``.
"""

from __future__ import annotations

from trame.ui.vuetify3 import VAppLayout
from trame_client.widgets.core import HtmlElement
from trame.widgets import html
from trame.widgets import vuetify3 as v

from .state import EXPORT_FIELDS, RECONSTRUCT_FIELDS, SAMPLING_FIELDS
from .views import COMPARE_ROLES, COMPARE_TITLES, GENERATED_MARK, GENERATED_ROLES, VIEW_PLANE

_TITLE_STYLE = ("position: absolute; top: 2px; left: 6px; right: 6px; display: flex; align-items: center; gap: 6px;"
                " color: white; font: 13px sans-serif; text-shadow: 0 0 3px black; pointer-events: none;"
                " white-space: nowrap; overflow: hidden; height: 20px;")
_SLIDER_STYLE = "position: absolute; bottom: 0; left: 8px; right: 8px;"
# One line between the image and the slider, in the band the fit keeps free (``views.FIT_MARGINS``).
_COLORBAR_STYLE = ("position: absolute; left: 8px; right: 8px; bottom: 26px; height: 20px; display: flex; gap: 6px;"
                   " align-items: center; color: white; font: 11px sans-serif; pointer-events: none;"
                   " white-space: nowrap; overflow: hidden;")
_RUNNING = "xd_running"


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


def build_page(server, layout_manager) -> VAppLayout:
    with VAppLayout(server, template_name="main", full_height=True) as layout:
        layout.root.theme = "dark"
        with v.VAppBar(density="compact", height=40):
            v.VAppBarTitle("XDiffusion: a 3D MRI volume from a few slices", classes="text-body-1")
            html.Span("AI-generated pseudo-MRI: research and review, not diagnosis",
                      classes="text-caption mr-4 text-medium-emphasis")
            with v.VBtnToggle(v_model=("xd_layout",), mandatory=True, density="compact", variant="outlined",
                              classes="mr-2"):
                v.VBtn("Input views", value="input", id="xd-layout-input", size="small")
                v.VBtn("Comparison", value="compare", disabled=("!xd_has_result",), id="xd-layout-compare",
                       size="small")
        with v.VNavigationDrawer(permanent=True, width=340, classes="xd-panel pa-1"):
            _volume_card()
            _slices_card()
            _model_card()
            _run_card()
        with v.VMain():
            with html.Div(style="position: relative; display: flex; flex-direction: column; height: calc(100vh - 40px);"):
                _view_toolbar()
                # Messages have their own line above the views (the gestures' hint when there is
                # none): never over the anatomy, and the views never change size for them.
                with html.Div(classes="xd-alerts", id="xd-status"):
                    v.VAlert(v_if="xd_error", type="error", density="compact", text=("xd_error",),
                             closable=True, click_close="xd_error = ''", id="xd-error")
                    v.VAlert(v_if="xd_info && !xd_error", type="info", density="compact", text=("xd_info",),
                             closable=True, click_close="xd_info = ''", id="xd-info")
                    html.Span(_GESTURES, v_if="!xd_error && !xd_info", classes="text-caption text-medium-emphasis xd-hint")
                with html.Div(style="flex: 1; display: flex; min-height: 0; position: relative;", id="xd-views"):
                    layout_manager.initialize_layout_grid(layout)
                _result_bar()
    return layout


def _volume_card() -> None:
    with v.VCard(variant="tonal"):
        v.VCardTitle("1. Volume")
        with v.VCardText():
            html.Div("Upload NIfTI, NRRD, MHA or DICOM .zip, max {{ xd_max_upload_mb }} MB",
                     classes="text-caption", title=".nii, .nii.gz, .nrrd, .mha, or a .zip of one DICOM series folder",
                     style="white-space: nowrap; overflow: hidden; text-overflow: ellipsis;")
            html.Input(type="file", id="xd-upload", accept=".nii,.gz,.nrrd,.mha,.zip",
                       change="window.xdiffusionUpload($event.target, xd_max_upload_bytes)",
                       disabled=(_RUNNING,), style="width: 100%; margin: 2px 0 6px 0;")
            with html.Div(v_if="xd_upload_percent >= 0", id="xd-upload-progress", classes="mb-1"):
                v.VProgressLinear(model_value=("xd_upload_percent",), height=6, color="primary")
                html.Div("uploaded {{ xd_upload_percent }}%", classes="text-caption", id="xd-upload-percent")
            with html.Div(style="display: flex; gap: 6px; align-items: center;"):
                v.VSelect(v_model=("xd_sample",), items=("xd_sample_choices",), label="Shipped sample",
                          density="compact", hide_details=True, id="xd-sample")
                v.VBtn("Open", click="trigger('xd_load_sample', [{xd_sample: xd_sample}])",
                       disabled=(_RUNNING,), id="xd-open-sample", size="small")
            with html.Div(v_if="xd_allow_paths", style="display: flex; gap: 6px; align-items: center;",
                          classes="mt-1"):
                v.VTextField(v_model=("xd_server_path",), label="Path on the server (file or DICOM folder)",
                             density="compact", hide_details=True, id="xd-path")
                v.VBtn("Open", click="trigger('xd_load_path', [{xd_server_path: xd_server_path}])",
                       disabled=(_RUNNING,), id="xd-open-path", size="small")
            with html.Div(v_if="xd_volume_choices.length", style="display: flex; gap: 6px; align-items: center;",
                          classes="mt-1", id="xd-volume-picker"):
                v.VSelect(v_model=("xd_volume_pick",), items=("xd_volume_choices",),
                          label=("`Volume of ${xd_volume_pick_name}`",), density="compact", hide_details=True,
                          id="xd-volume-pick", classes="xd-volume-pick")
                v.VBtn("Open", click="trigger('xd_load_volume_pick', [{xd_volume_pick: xd_volume_pick}])",
                       disabled=(_RUNNING,), id="xd-open-volume-pick", size="small")
            html.Div("{{ xd_busy }}", v_if="xd_busy", classes="text-caption mt-1", id="xd-busy")
            html.Div("{{ xd_volume_name }}: {{ xd_volume_info }}", v_if="xd_volume_name",
                     classes="text-body-2 mt-1", id="xd-volume")


def _slices_card() -> None:
    with v.VCard(variant="tonal"):
        # The quick picks open from the title line: they take no row of the panel, and stay in reach
        # however many picks there are.
        with html.Div(classes="v-card-title", style="display: flex; align-items: center;"):
            html.Span("2. Input slices")
            v.VSpacer()
            _quick_picks()
        with v.VCardText():
            _thick_slices_offer()
            html.Div("Scroll a view to a slice and press 'Use this slice' (one plane per reconstruction).",
                     v_if="!xd_picks.length", classes="text-caption")
            # Many picks scroll inside a short box: Reconstruct and the progress stay in view.
            with html.Div(v_if="xd_picks.length", id="xd-picks", classes="xd-picks"):
                html.Span("{{ xd_pick_plane }} ({{ xd_picks.length }}): ", classes="text-body-2",
                          id="xd-picks-count")
                v.VChip("{{ i }}", v_for="i in xd_picks", key="i", closable=True, size="small", classes="ma-1",
                        click_close="trigger('xd_unpick', [i])", disabled=(_RUNNING,))
                v.VBtn("Clear", size="x-small", variant="text", click="trigger('xd_clear_picks')",
                       disabled=(_RUNNING,))


def _thick_slices_offer() -> None:
    """A thick-slice scan: every acquired slice onto a finer grid, in one click (``thick_slices``)."""
    v.VBtn("{{ xd_thick_button }}", v_if="xd_thick_button", size="small", color="primary", variant="tonal",
           block=True, prepend_icon="mdi-view-sequential", id="xd-thick-run", classes="mb-1 text-none xd-thick-run",
           title=("xd_thick_offer",), disabled=(_RUNNING,),
           click=f"trigger('xd_reconstruct_thick', [{_fields(RECONSTRUCT_FIELDS)}])")
    # Two lines at most; the whole reason on hover.
    html.Div("{{ xd_thick_note }}", v_if="xd_thick_note", classes="text-caption text-medium-emphasis xd-clamp",
             id="xd-thick-note", title=("xd_thick_note",))


def _quick_picks() -> None:
    """All acquired slices, every n-th, K spread over the head (``picking.Picking.quick_pick``)."""
    with v.VMenu(v_model=("xd_quick_open",), close_on_content_click=False, location="bottom end"):
        with html.Template(v_slot_activator="{ props }"):
            v.VBtn("Quick pick", v_bind="props", size="x-small", variant="tonal", id="xd-quick-open",
                   disabled=(_RUNNING + " || !xd_volume_name",))
        with v.VCard(id="xd-quick", width=320):
            with v.VCardText(style="display: flex; gap: 6px; align-items: center;"):
                v.VSelect(v_model=("xd_quick_how",), label="Quick pick", density="compact", hide_details=True,
                          items=([{"title": "K spread over the head", "value": "spread"},
                                  {"title": "every n-th acquired slice", "value": "every"},
                                  {"title": "all acquired slices", "value": "all"}],),
                          id="xd-quick-how", classes="xd-quick-how")
                v.VTextField(v_model=("xd_quick_n",), label=("xd_quick_how === 'spread' ? 'K' : 'n'",), type="number",
                             min=1, density="compact", hide_details=True, id="xd-quick-n", style="flex: none; width: 56px;",
                             disabled=("xd_quick_how === 'all'",))
                v.VBtn("Pick", size="small", id="xd-quick-pick",
                       click="xd_quick_open = false; trigger('xd_quick_pick', [xd_quick_how, xd_quick_n])")


def _model_card() -> None:
    with v.VCard(variant="tonal"):
        v.VCardTitle("3. Model settings")
        with v.VCardText():
            # A text area that grows: a long folder path wraps instead of being cut off.
            v.VTextarea(v_model=("xd_model_dir",), label="Model folder (config.json + model.safetensors)",
                        density="compact", hide_details=True, rows=1, auto_grow=True, no_resize=True,
                        disabled=("!xd_allow_paths || " + _RUNNING,), id="xd-model", classes="mb-2",
                        style="word-break: break-all;")
            # Views, steps, samples, seed in one row; sampler and guidance below: no label is cut off.
            order = ("views", "steps", "samples", "seed", "sampler", "guidance")
            by_key = {field.key: field for field in SAMPLING_FIELDS}
            # Each field holds its largest value whole (steps 1000; seeds are rarely longer).
            with html.Div(style="display: grid; grid-template-columns: 0.95fr 1.25fr 1.15fr 0.95fr; gap: 6px;",
                          classes="xd-settings"):
                for key in order:
                    _sampling_field(by_key[key])
            v.VCheckbox(v_model=("xd_compare",), density="compact", hide_details=True, id="xd-compare",
                        disabled=(_RUNNING,), label="Compare with the loaded volume",
                        title=("The loaded volume is complete: the difference view and the metrics compare the "
                               "result with it. Only the chosen slices go to the model either way."))


def _sampling_field(field) -> None:
    ident = {"views": "xd-views-count", "samples": "xd-samples-count"}.get(field.key, f"xd-{field.key}")
    span = "grid-column: span 2;" if field.key in ("sampler", "guidance") else ""
    if field.kind == "choice":
        v.VSelect(v_model=(field.name,), items=("xd_samplers",), label=field.label, density="compact",
                  hide_details=True, id=ident, disabled=(_RUNNING,), classes="xd-sampler", style=span)
        return
    limits = {}
    if field.minimum is not None:
        limits["min"] = field.minimum
    if field.maximum is not None:
        limits["max"] = field.maximum
    hint = f"{field.label}: {field.minimum:g} to {field.maximum:g}" if field.maximum else field.label
    v.VTextField(v_model=(field.name,), label=field.label, type="number", density="compact", hide_details=True,
                 id=ident, disabled=(_RUNNING,), title=hint, step="0.5" if field.kind == "float" else "1",
                 style=span, **limits)


def _run_card() -> None:
    with v.VCard(variant="tonal"):
        with v.VCardText():
            with html.Div(style="display: flex; gap: 8px; align-items: center;"):
                v.VBtn("Reconstruct", color="primary", id="xd-reconstruct",
                       click=f"trigger('xd_reconstruct', [{_fields(RECONSTRUCT_FIELDS)}])",
                       disabled=(_RUNNING + " || !xd_picks.length || !xd_volume_name",))
                v.VBtn("Cancel", color="warning", click="trigger('xd_cancel')", v_show=_RUNNING, id="xd-cancel")
                html.Span("model loaded, ready", v_if="xd_worker_warm && !xd_running",
                          classes="text-caption text-success", id="xd-worker-ready")
                html.Span("loading the model in the background", v_if="!xd_worker_warm && !xd_running",
                          classes="text-caption text-medium-emphasis", id="xd-worker-warming")
            # A long run waits for the page's yes (``running.Running.reconstruct``).
            with v.VDialog(model_value=("!!xd_confirm",), max_width=460, persistent=True):
                with v.VCard(id="xd-confirm"):
                    v.VCardTitle("A long run")
                    v.VCardText("{{ xd_confirm }}")
                    with v.VCardActions():
                        v.VSpacer()
                        v.VBtn("Not now", click="xd_confirm = ''", id="xd-confirm-no")
                        v.VBtn("Start", color="primary", id="xd-confirm-yes",
                               click=(f"xd_confirm = ''; trigger('xd_reconstruct', [{_fields(RECONSTRUCT_FIELDS)},"
                                      " true, xd_confirm_thick])"))
            with html.Div(v_show="xd_running || xd_progress > 0", classes="mt-2", id="xd-progress"):
                v.VProgressLinear(model_value=("xd_progress",), height=12, color="primary", rounded=True)
                html.Div("{{ Math.round(xd_progress) }}% {{ xd_progress_message }}", classes="text-caption",
                         id="xd-progress-text")
                html.Div("elapsed {{ xd_elapsed }}{{ xd_remaining ? ' · about ' + xd_remaining + ' left' : '' }}",
                         v_if="xd_elapsed", classes="text-caption", id="xd-elapsed")


_GESTURES = "left-drag: window/level · right-drag: zoom · middle-drag: pan · wheel: slices"


def _view_toolbar() -> None:
    with html.Div(style="flex: none; display: flex; gap: 8px; align-items: center; padding: 2px 6px; height: 36px;",
                  id="xd-toolbar"):
        with html.Template(v_if="xd_has_result && xd_layout === 'compare'"):
            with v.VBtnToggle(v_model=("xd_result_plane",), mandatory=True, density="compact",
                              variant="outlined"):
                for plane in ("axial", "coronal", "sagittal"):
                    v.VBtn(plane, value=plane, id=f"xd-plane-{plane}", size="small")
            v.VBtn("input", prepend_icon="mdi-chevron-left", size="small", variant="tonal",
                   click="trigger('xd_previous_input')", disabled=("!xd_input_slices.length",),
                   id="xd-previous-input", title="previous input slice")
            v.VBtn("input", append_icon="mdi-chevron-right", size="small", variant="tonal",
                   click="trigger('xd_next_input')", disabled=("!xd_input_slices.length",), id="xd-next-input",
                   title="next input slice")
            v.VSwitch(v_model=("xd_show_overlay",), label="tissue overlay", disabled=("!xd_has_overlay",),
                      density="compact", hide_details=True, id="xd-overlay", color="primary",
                      style="flex: none;")
            v.VChip("stale: from the previous run", v_if="xd_stale", color="warning", size="small",
                    id="xd-stale")
        html.Div(style="flex: 1;")
        v.VBtn("Reset view", size="small", variant="tonal", click="trigger('xd_reset_views')",
               disabled=("!xd_volume_name",), id="xd-reset", title=_GESTURES)


def _result_bar() -> None:
    with html.Div(v_if="xd_has_result", id="xd-results",
                  style="flex: none; display: flex; flex-wrap: wrap; gap: 2px 8px; align-items: center; padding: 2px 6px;"
                        " border-top: 1px solid #333;"):
        html.Div("previous run", v_if="xd_stale", classes="text-caption text-warning")
        html.Div("{{ xd_metrics_note }}", v_if="!xd_metrics.length", classes="text-caption", id="xd-metrics-note")
        with v.VTable(density="compact", v_if="xd_metrics.length", id="xd-metrics", classes="xd-metrics",
                      title=("xd_metrics_note",)):
            with html.Thead():
                with html.Tr():
                    html.Th("{{ row.short }}", v_for="row in xd_metrics", key="row.key", title=("row.note",))
            with html.Tbody():
                with html.Tr():
                    html.Td("{{ row.value }}", v_for="row in xd_metrics", key="row.key",
                            title=("row.why || row.note",))
        # Why a view or a score is missing, or reads inf / n/a: one line beside the table (all of it on hover).
        html.Div("{{ xd_result_note }}", v_if="xd_result_note && xd_metrics.length", id="xd-result-note",
                 classes="text-caption text-medium-emphasis", title=("xd_result_note + '. ' + xd_metrics_note",),
                 style="flex: 1 1 200px; min-width: 0; white-space: nowrap; overflow: hidden; text-overflow: ellipsis;")
        html.Div(style="flex: 1;")
        with html.Div(style="display: flex; gap: 6px; align-items: center;"):
            v.VSelect(v_model=("xd_export_what",), items=("xd_export_whats",), density="compact",
                      hide_details=True, id="xd-export-what", classes="xd-export-what", style="flex: none; width: 190px;",
                      label="Export")
            v.VSelect(v_model=("xd_export_format",), items=("xd_export_formats",), density="compact",
                      hide_details=True, id="xd-export-format", classes="xd-export-format",
                      style="flex: none; width: 200px;", label="as")
            v.VBtn("Export", id="xd-export", disabled=(_RUNNING,), color="primary", variant="tonal",
                   click=f"trigger('xd_export', [{_fields(EXPORT_FIELDS)}]).then(window.xdiffusionDownload)")


def view_overlay(server, view) -> None:
    """Title, slice index and position, input badge, colour bar and slider over one slice view."""
    from trame_slicer.app.logic.slice_view_logic import connect_slice_view_slider_to_state
    from trame_slicer.app.ui.slider import Slider

    tag = view.get_singleton_tag()
    role = COMPARE_ROLES.get(tag, "input")
    # A transparent box over the whole view: the tests screenshot exactly this area.
    html.Div(id=f"xd-view-{tag}", style="position: absolute; inset: 0; pointer-events: none;")
    if role == "generated":  # unmistakable: a coloured frame around the whole generated image
        html.Div(id=f"xd-generated-frame-{tag}", style=f"position: absolute; inset: 0; pointer-events: none;"
                 f" border: 3px solid {GENERATED_MARK}; z-index: 1;")
    lines = f"xd_view_lines['{tag}']"
    # The input slices of another plane where they cross this view (Slicer's slice intersections).
    with html.Svg(id=f"xd-lines-{tag}", style="position: absolute; left: 0; top: 0; width: 100%; height: 100%;"
                  " pointer-events: none; overflow: hidden;"):
        SvgLine(v_for=f"line in ({lines} || [])", key="line.index", x1=("line.x1",), y1=("line.y1",),
                  x2=("line.x2",), y2=("line.y2",), stroke="#4fc3f7", stroke_width="1", stroke_dasharray="6 4",
                  stroke_opacity="0.85", shape_rendering="crispEdges", classes="xd-input-line")
    index = f"xd_view_index['{tag}']"
    with html.Div(style=_TITLE_STYLE, id=f"xd-titlebar-{tag}"):
        if tag in VIEW_PLANE:
            html.Span(VIEW_PLANE[tag].capitalize(), id=f"xd-title-{tag}")
        else:
            html.Span("{{ xd_view_titles['" + tag + "'] || '" + COMPARE_TITLES.get(tag, tag) + "' }}",
                      id=f"xd-title-{tag}")
            if role == "generated":
                v.VChip("AI-generated", size="x-small", variant="flat", color=GENERATED_MARK,
                        id=f"xd-generated-badge-{tag}", title="made by the model, not acquired: not for diagnosis")
            html.Span("{{ xd_result_plane }}", v_if=f"{index} != null")
        html.Span("{{ " + index + " }}", v_if=f"{index} != null", id=f"xd-index-{tag}",
                  style="font-weight: bold;")
        html.Span("{{ xd_view_label['" + tag + "'] }}", v_if=f"{index} != null", id=f"xd-position-{tag}",
                  classes="text-medium-emphasis", title=(f"xd_view_position_note['{tag}']",),
                  style="pointer-events: auto; overflow: hidden; text-overflow: ellipsis; min-width: 0;")
        v.VChip("input slice", size="x-small", color="primary", variant="flat", id=f"xd-badge-{tag}", style="flex: none;",
                v_if=f"xd_view_is_input['{tag}']")
        if role in GENERATED_ROLES:  # only what the previous run made is stale, never the real volume
            v.VChip("stale", size="x-small", color="warning", variant="flat", v_if="xd_stale",
                    id=f"xd-stale-{tag}")
        html.Div(style="flex: 1;")
        if tag in VIEW_PLANE:
            v.VBtn("Use this slice", size="x-small", color="primary", click=f"trigger('xd_pick', ['{tag}'])",
                   disabled=("!xd_volume_name || xd_running",), id=f"xd-use-{tag}",
                   style="pointer-events: auto;")
    if role in ("real", "generated"):  # the tissue overlay's classes, where its colours are drawn
        with html.Div(v_if="xd_show_overlay && xd_overlay_legend.length", style=_COLORBAR_STYLE,
                      id=f"xd-legend-{tag}", classes="xd-legend"):
            with html.Span(v_for="item in xd_overlay_legend", key="item.name",
                           style="display: inline-flex; align-items: center; gap: 3px; margin-right: 6px;"):
                html.Span(style=("{ background: item.color, width: '10px', height: '10px', border: '1px solid #888',"
                                 " display: 'inline-block' }",), classes="xd-legend-swatch")
                html.Span("{{ item.name }}", classes="xd-legend-name")
    if tag not in VIEW_PLANE:
        bar = f"xd_colorbars['{tag}']"
        with html.Div(v_if=bar, style=_COLORBAR_STYLE, id=f"xd-colorbar-{tag}"):
            html.Span("{{ " + bar + ".low }}", id=f"xd-colorbar-low-{tag}")
            html.Div(style=(f"{{ background: {bar}.gradient, height: '10px', border: '1px solid #888',"
                            " flex: '1 1 60px', minWidth: '40px' }",), classes="xd-colorbar-gradient")
            html.Span("{{ " + bar + ".high }}", id=f"xd-colorbar-high-{tag}")
            html.Span("{{ " + bar + ".label }}", id=f"xd-colorbar-label-{tag}", title=(f"{bar}.label",),
                      style="overflow: hidden; text-overflow: ellipsis; flex: 0 1 auto; min-width: 0;")
    with html.Div(style=_SLIDER_STYLE, id=f"xd-slider-{tag}"):
        Slider(typed_state=connect_slice_view_slider_to_state(server, view), theme="dark", dense=True)
