"""The page: a control panel on the left, the slice views on the right.

Panel, top to bottom: volume (upload, shipped sample, path on the server), input slices (chips
with remove), model settings, Reconstruct / Cancel with a progress bar, and once there is a result:
plane, segmentation overlay, metrics and export. The views are trame-slicer's streamed slice views;
``view_overlay`` adds a title, the slice index, "use this slice" and a slider to each of them.
Elements the browser tests look for carry ``id="xd-..."``.
"""

from __future__ import annotations

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v

from .session import EXPORT_FIELDS, RECONSTRUCT_FIELDS
from .views import COMPARE_TITLES, VIEW_PLANE

_TITLE_STYLE = ("position: absolute; top: 4px; left: 8px; right: 8px; display: flex; align-items: center; gap: 8px;"
                " color: white; font: 13px sans-serif; text-shadow: 0 0 3px black; pointer-events: none;")
_SLIDER_STYLE = "position: absolute; bottom: 0; left: 8px; right: 8px;"


def _fields(names) -> str:
    """A JavaScript object of the page's current values of ``names``, sent with a trigger."""
    return "{" + ", ".join(f"{name}: {name}" for name in names) + "}"


def build_page(session) -> VAppLayout:
    with VAppLayout(session.server, template_name="main", full_height=True) as layout:
        layout.root.theme = "dark"
        html.Style(".xd-panel .v-card-title { font-size: 15px; } .xd-panel .v-card { margin-bottom: 8px; }")
        with v.VAppBar(density="compact"):
            v.VAppBarTitle("XDiffusion: a 3D MRI volume from a few slices")
            with v.VBtnToggle(v_model=("xd_layout",), mandatory=True, density="compact", variant="outlined",
                              classes="mr-4"):
                v.VBtn("Input views", value="input", id="xd-layout-input")
                v.VBtn("Comparison", value="compare", disabled=("!xd_has_result",), id="xd-layout-compare")
        with v.VNavigationDrawer(permanent=True, width=390, classes="xd-panel pa-2"):
            _volume_card()
            _slices_card()
            _model_card()
            _run_card()
            _result_card()
        with v.VMain():
            with html.Div(style="display: flex; flex-direction: column; height: calc(100vh - 48px);"):
                v.VAlert(v_if="xd_error", type="error", density="compact", text=("xd_error",), closable=True,
                         click_close="xd_error = ''", id="xd-error", classes="ma-1", style="flex: none;")
                v.VAlert(v_if="xd_info && !xd_error", type="info", density="compact", text=("xd_info",),
                         closable=True, click_close="xd_info = ''", id="xd-info", classes="ma-1",
                         style="flex: none;")
                with html.Div(style="flex: 1; display: flex; min-height: 0;", id="xd-views"):
                    session.layout_manager.initialize_layout_grid(layout)
    return layout


def _volume_card() -> None:
    with v.VCard(variant="tonal"):
        v.VCardTitle("1. Volume")
        with v.VCardText():
            html.Div("Upload a volume (.nii, .nii.gz, .nrrd, .mha, or a .zip of a DICOM series), "
                     "up to {{ xd_max_upload_mb }} MB:", classes="text-caption")
            html.Input(type="file", id="xd-upload", accept=".nii,.gz,.nrrd,.mha,.zip",
                       change="window.xdiffusionUpload($event.target, xd_max_upload_bytes)",
                       disabled=("xd_running",), style="width: 100%; margin: 4px 0 10px 0;")
            with html.Div(style="display: flex; gap: 6px; align-items: center;"):
                v.VSelect(v_model=("xd_sample",), items=("xd_sample_choices",), label="Shipped sample",
                          density="compact", hide_details=True, id="xd-sample")
                v.VBtn("Open", click="trigger('xd_load_sample', [{xd_sample: xd_sample}])",
                       disabled=("xd_running",), id="xd-open-sample")
            with html.Div(v_if="xd_allow_paths", style="display: flex; gap: 6px; align-items: center;",
                          classes="mt-2"):
                v.VTextField(v_model=("xd_server_path",), label="Path on the server (file or DICOM folder inside the data folders)",
                             density="compact", hide_details=True, id="xd-path")
                v.VBtn("Open", click="trigger('xd_load_path', [{xd_server_path: xd_server_path}])",
                       disabled=("xd_running",), id="xd-open-path")
            html.Div("{{ xd_busy }}", v_if="xd_busy", classes="text-caption mt-2", id="xd-busy")
            html.Div("{{ xd_volume_name }}: {{ xd_volume_info }}", v_if="xd_volume_name",
                     classes="text-body-2 mt-2", id="xd-volume")


def _slices_card() -> None:
    with v.VCard(variant="tonal"):
        v.VCardTitle("2. Input slices")
        with v.VCardText():
            html.Div("Scroll a view to a slice and press 'Use this slice'. All input slices come from one plane.",
                     v_if="!xd_picks.length", classes="text-caption")
            with html.Div(v_if="xd_picks.length", id="xd-picks"):
                html.Span("{{ xd_pick_plane }}: ", classes="text-body-2")
                v.VChip("{{ i }}", v_for="i in xd_picks", key="i", closable=True, size="small", classes="ma-1",
                        click_close="trigger('xd_unpick', [i])", disabled=("xd_running",))
                v.VBtn("Clear", size="x-small", variant="text", click="trigger('xd_clear_picks')",
                       disabled=("xd_running",))


def _model_card() -> None:
    with v.VCard(variant="tonal"):
        v.VCardTitle("3. Model settings")
        with v.VCardText():
            v.VTextField(v_model=("xd_model_dir",), label="Model folder (config.json + model.safetensors)",
                         density="compact", hide_details=True, disabled=("!xd_allow_paths || xd_running",),
                         id="xd-model", classes="mb-2")
            with html.Div(style="display: grid; grid-template-columns: 1fr 1fr 1fr; gap: 6px;"):
                v.VTextField(v_model=("xd_views",), label="views", type="number", density="compact",
                             hide_details=True, id="xd-views-count")
                v.VTextField(v_model=("xd_steps",), label="steps", type="number", density="compact",
                             hide_details=True, id="xd-steps")
                v.VSelect(v_model=("xd_sampler",), items=("xd_samplers",), label="sampler", density="compact",
                          hide_details=True, id="xd-sampler")
                v.VTextField(v_model=("xd_guidance",), label="guidance", type="number", step="0.5",
                             density="compact", hide_details=True, id="xd-guidance")
                v.VTextField(v_model=("xd_seed",), label="seed", type="number", density="compact",
                             hide_details=True, id="xd-seed")
                v.VTextField(v_model=("xd_samples",), label="samples", type="number", density="compact",
                             hide_details=True, id="xd-samples-count")
            v.VCheckbox(v_model=("xd_compare",), density="compact", hide_details=True, id="xd-compare",
                        label="The loaded volume is complete: compare with it (difference, metrics)")


def _run_card() -> None:
    with v.VCard(variant="tonal"):
        with v.VCardText():
            with html.Div(style="display: flex; gap: 8px;"):
                v.VBtn("Reconstruct", color="primary", id="xd-reconstruct",
                       click=f"trigger('xd_reconstruct', [{_fields(RECONSTRUCT_FIELDS)}])",
                       disabled=("xd_running || !xd_picks.length || !xd_volume_name",))
                v.VBtn("Cancel", color="warning", click="trigger('xd_cancel')", v_show="xd_running",
                       id="xd-cancel")
            with html.Div(v_show="xd_running || xd_progress > 0", classes="mt-2", id="xd-progress"):
                v.VProgressLinear(model_value=("xd_progress",), height=16, color="primary", rounded=True)
                html.Div("{{ Math.round(xd_progress) }}% {{ xd_progress_message }}", classes="text-caption",
                         id="xd-progress-text")


def _result_card() -> None:
    with v.VCard(variant="tonal", v_if="xd_has_result", id="xd-results"):
        v.VCardTitle("4. Result")
        with v.VCardText():
            with v.VBtnToggle(v_model=("xd_result_plane",), mandatory=True, density="compact", variant="outlined"):
                for plane in ("axial", "coronal", "sagittal"):
                    v.VBtn(plane, value=plane, id=f"xd-plane-{plane}")
            v.VSwitch(v_model=("xd_show_overlay",), label="Segmentation overlay (automatic tissue classes)",
                      disabled=("!xd_has_overlay",), density="compact", hide_details=True, id="xd-overlay",
                      color="primary")
            html.Div("Metrics", classes="text-subtitle-2 mt-2")
            html.Div("{{ xd_metrics_note }}", classes="text-caption")
            with v.VTable(density="compact", v_if="xd_metrics.length", id="xd-metrics"):
                with html.Tbody():
                    with html.Tr(v_for="row in xd_metrics", key="row.key", title=("row.note",)):
                        html.Td("{{ row.title }}")
                        html.Td("{{ row.value }}", style="white-space: nowrap;")
            html.Div("Export", classes="text-subtitle-2 mt-3")
            with html.Div(style="display: flex; gap: 6px;"):
                v.VSelect(v_model=("xd_export_what",), items=("xd_export_whats",), density="compact",
                          hide_details=True, id="xd-export-what")
                v.VSelect(v_model=("xd_export_format",), items=("xd_export_formats",), density="compact",
                          hide_details=True, id="xd-export-format", classes="xd-export-format")
            v.VBtn("Export", click=f"trigger('xd_export', [{_fields(EXPORT_FIELDS)}])", classes="mt-2", id="xd-export",
                   disabled=("xd_running",))
            html.A("Download {{ xd_download_name }}", v_if="xd_download_url", href=("xd_download_url",),
                   raw_attrs=["download"], id="xd-download", classes="d-block mt-2")


def view_overlay(session, view_id: str, view) -> None:
    """Title, slice index, 'use this slice' (input views) and a slider, drawn over one slice view."""
    from trame_slicer.app.logic.slice_view_logic import connect_slice_view_slider_to_state
    from trame_slicer.app.ui.slider import Slider

    tag = view.get_singleton_tag()
    # A transparent box over the whole view: the tests screenshot exactly this area.
    html.Div(id=f"xd-view-{tag}", style="position: absolute; inset: 0; pointer-events: none;")
    with html.Div(style=_TITLE_STYLE):
        if tag in VIEW_PLANE:
            plane = VIEW_PLANE[tag]
            html.Span(f"{plane.capitalize()} " + "{{ xd_view_index['" + tag + "'] ?? '' }}",
                      id=f"xd-title-{tag}")
            v.VChip("input slice", size="x-small", color="primary", variant="flat",
                    v_if=f"xd_pick_plane === '{plane}' && xd_picks.includes(xd_view_index['{tag}'])")
            html.Div(style="flex: 1;")
            v.VBtn("Use this slice", size="x-small", color="primary", click=f"trigger('xd_pick', ['{tag}'])",
                   disabled=("!xd_volume_name || xd_running",), id=f"xd-use-{tag}",
                   style="pointer-events: auto;")
        else:
            html.Span(COMPARE_TITLES.get(tag, tag), id=f"xd-title-{tag}")
    with html.Div(style=_SLIDER_STYLE):
        Slider(typed_state=connect_slice_view_slider_to_state(session.server, view), theme="dark", dense=True)
