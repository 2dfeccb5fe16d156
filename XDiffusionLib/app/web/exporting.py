"""Feature: export in one click. The page's Export button asks for the file and the browser
downloads it as soon as it is written (``static/xdiffusion.js``: ``xdiffusionDownload``).

The reconstruction goes out as NIfTI, NRRD or a DICOM pseudo-MRI series; the uncertainty and the
difference are not images of the head, so DICOM is not offered for them.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

from ...model.files import default_model_dir
from ...slicer.display import uncertainty_info_of
from ...slicer.nodes import output_name, volume_from_node
from .results import EXPORT_FORMAT_TITLES, export_result
from .state import DICOM_WHATS, EXPORT_WHAT_TITLES, export_fields, take_form
from .transfer import safe_filename


class Exporting:
    """The export choices follow the result shown (``on_result_shown``, ``on_result_removed``)."""

    def __init__(self, page, reports, workspace, transfers):
        self.state, self.page, self.names = page.state, page.data, page.name
        self.mine = page.data.exporting
        self.reports, self.workspace, self.transfers = reports, workspace, transfers
        self.run = None  # the run whose result is shown (its settings and provenance go in the files)
        exporting = page.get_sub_state(page.name.exporting)
        exporting.bind_changes({exporting.name.what: self._on_what_changed})

    def formats_for(self, what: str) -> list[dict]:
        return [{"title": title, "value": key} for key, title in EXPORT_FORMAT_TITLES.items()
                if key != "dicom" or what in DICOM_WHATS]

    def refresh_formats(self) -> None:
        formats = self.formats_for(str(self.mine.what))
        with self.state:
            self.mine.formats = formats
            if self.mine.format not in [f["value"] for f in formats]:
                self.mine.format = formats[0]["value"]

    def _on_what_changed(self, _what: str) -> None:
        self.refresh_formats()

    def on_result_shown(self, run, result) -> None:
        """What there is to export of ``run``'s result, the reconstruction chosen."""
        self.run = run
        whats = [key for key, node in (("reconstruction", result.reconstruction), ("uncertainty", result.uncertainty),
                                       ("difference", result.difference)) if node is not None or key == "reconstruction"]
        with self.state:
            self.mine.whats = [{"title": EXPORT_WHAT_TITLES[key], "value": key} for key in whats]
            self.mine.what = "reconstruction"
        self.refresh_formats()

    def on_result_removed(self) -> None:
        self.run = None
        with self.state:
            self.mine.download_name = ""

    async def export(self, fields=None) -> dict | None:
        """Write the chosen output; returns ``{"url", "name"}`` for the page to download at once."""
        reports, transfers = self.reports, self.transfers
        take_form(self.state, fields, export_fields(self.names))
        result = self.workspace.comparison.result
        run = self.run
        if result is None or run is None:
            reports.error("nothing to export yet: reconstruct first")
            return None
        what, fmt = str(self.mine.what), str(self.mine.format)
        node = {"reconstruction": result.reconstruction, "uncertainty": result.uncertainty,
                "difference": result.difference}.get(what)
        if node is None:
            reports.error(f"there is no {what} to export")
            return None
        if fmt == "dicom" and what not in DICOM_WHATS:
            reports.error("DICOM export is for the reconstruction (a pseudo-MRI series); "
                          f"export the {what} as NIfTI or NRRD")
            return None
        volume = volume_from_node(node)
        info = uncertainty_info_of(node) if what == "uncertainty" else None  # its level and units go in the file
        input_node = self.workspace.input_node
        stem = output_name(input_node.GetName() if input_node is not None else "volume", what)
        stem = safe_filename(stem.replace(" ", "_"))
        provenance = None
        if what == "reconstruction":
            # The folder itself, so the DICOM names the model by its name and weights checksum.
            used = run.settings.model_dir or (str(default_model_dir()) if default_model_dir().is_dir() else None)
            provenance = replace(run.provenance(), model=used) if used else run.provenance()
        folder = transfers.new_download_folder()
        with self.state:
            self.page.messages.busy = f"exporting the {what}"
        try:
            path = await asyncio.to_thread(export_result, volume, fmt, folder, stem, provenance, what, info)
        except Exception as error:  # noqa: BLE001 - shown in the page
            transfers.discard_download(folder)  # nothing of a failed export stays
            # The page knows the file by its download name, not by the session's folder.
            reports.failure(error, "export", ((str(folder) + os.sep, ""), (str(folder), "")))
            return None
        url = transfers.add_download(path, path.name)
        with self.state:
            self.page.messages.busy, self.page.messages.info = "", f"{path.name}: downloading"
            self.mine.download_name = path.name
        return {"url": url, "name": path.name}
