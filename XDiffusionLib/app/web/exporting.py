"""Feature: export in one click. The page's Export button asks for the file and the browser
downloads it as soon as it is written (``static/xdiffusion.js``: ``xdiffusionDownload``).

The reconstruction goes out as NIfTI, NRRD or a DICOM pseudo-MRI series; the uncertainty and the
difference are not images of the head, so DICOM is not offered for them.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

from .results import EXPORT_FORMAT_TITLES
from .state import DICOM_WHATS, EXPORT_FIELDS


class Exporting:
    def __init__(self, app):
        self.app = app
        app.state.change("xd_export_what")(self._on_what_changed)

    def formats_for(self, what: str) -> list[dict]:
        return [{"title": title, "value": key} for key, title in EXPORT_FORMAT_TITLES.items()
                if key != "dicom" or what in DICOM_WHATS]

    def refresh_formats(self) -> None:
        what = str(self.app.state.xd_export_what)
        formats = self.formats_for(what)
        changes = {"xd_export_formats": formats}
        if self.app.state.xd_export_format not in [f["value"] for f in formats]:
            changes["xd_export_format"] = formats[0]["value"]
        self.app.push(**changes)

    def _on_what_changed(self, **_) -> None:
        self.refresh_formats()

    async def export(self, fields=None) -> dict | None:
        """Write the chosen output; returns ``{"url", "name"}`` for the page to download at once."""
        from ...slicer.display import uncertainty_info_of
        from ...slicer.nodes import output_name, volume_from_node
        from ...model.files import default_model_dir
        from .results import export_result
        from .transfer import safe_filename

        app = self.app
        app.take(fields, EXPORT_FIELDS)
        result = app.comparison.result
        run = app.running.run
        if result is None or run is None:
            app.report_error("nothing to export yet: reconstruct first")
            return None
        what, fmt = str(app.state.xd_export_what), str(app.state.xd_export_format)
        node = {"reconstruction": result.reconstruction, "uncertainty": result.uncertainty,
                "difference": result.difference}.get(what)
        if node is None:
            app.report_error(f"there is no {what} to export")
            return None
        if fmt == "dicom" and what not in DICOM_WHATS:
            app.report_error("DICOM export is for the reconstruction (a pseudo-MRI series); "
                             f"export the {what} as NIfTI or NRRD")
            return None
        volume = volume_from_node(node)
        info = uncertainty_info_of(node) if what == "uncertainty" else None  # its level and units go in the file
        stem = output_name(app.input_node.GetName() if app.input_node is not None else "volume", what)
        stem = safe_filename(stem.replace(" ", "_"))
        provenance = None
        if what == "reconstruction":
            # The folder itself, so the DICOM names the model by its name and weights checksum.
            used = run.settings.model_dir or (str(default_model_dir()) if default_model_dir().is_dir() else None)
            provenance = replace(run.provenance(), model=used) if used else run.provenance()
        folder = app.transfers.new_download_folder()
        app.push(xd_busy=f"exporting the {what}")
        try:
            path = await asyncio.to_thread(export_result, volume, fmt, folder, stem, provenance, what, info)
        except Exception as error:  # noqa: BLE001 - shown in the page
            app.transfers.discard_download(folder)  # nothing of a failed export stays
            # The page knows the file by its download name, not by the session's folder.
            app.report_failure(error, "export", ((str(folder) + os.sep, ""), (str(folder), "")))
            return None
        url = app.transfers.add_download(path, path.name)
        app.push(xd_busy="", xd_download_name=path.name, xd_info=f"{path.name}: downloading")
        return {"url": url, "name": path.name}
