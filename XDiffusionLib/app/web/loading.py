"""Feature: loading a volume (upload, shipped sample, path on the server, one volume of a 4D file).

A 4D upload is not refused outright: the page offers its volumes in a picker and the file is kept
until one is chosen (or another volume is loaded). Reading runs in a thread; the Slicer work on
the server's event loop. What comes of a new volume elsewhere (the picks, the thick-slice offer,
the result removed) is for the features listening to ``volume_closing`` and ``volume_loaded``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from ...data.samples import sample_path
from ...errors import XDiffusionError
from ...inputs import check_intensity_volume
from ...io import read_volume
from ...io.readers import MultiVolumeError, header_slice_thickness, volume_suffix
from ...slicer.nodes import add_volume_node, remove_nodes_added_since
from .signals import Signal
from .state import take_form
from .transfer import megabytes
from .views import fit

INPUT_VIEWS = ("Red", "Green", "Yellow")


@dataclass
class _Pending4D:
    """A 4D file waiting for the user to pick one of its volumes."""

    path: Path
    display: str
    shown: tuple[tuple[str, str], ...]
    within: Path | None
    upload: Path | None  # the uploaded file, removed once done with


class Loading:
    """Reads a volume and shows it in the input views. ``volume_closing`` (no arguments): the
    loaded volume and everything made from it are about to go; ``volume_loaded(volume,
    thickness)``: a new one is shown (``thickness``: its slices' thickness from the header, if stated)."""

    def __init__(self, page, reports, workspace, transfers, data_roots, allow_server_paths: bool):
        self.state, self.page, self.names = page.state, page.data, page.name
        self.mine = page.data.loading
        self.reports, self.workspace = reports, workspace
        self.transfers, self.data_roots, self.allow_server_paths = transfers, data_roots, bool(allow_server_paths)
        self.volume_closing = Signal()
        self.volume_loaded = Signal()
        self._pending: _Pending4D | None = None

    def on_upload_started(self, name: str, size: int) -> None:
        with self.state:
            messages = self.page.messages
            messages.busy, messages.upload_percent = f"uploading {name} ({megabytes(int(size))})", 0
            messages.error = messages.info = ""

    def on_upload_progress(self, percent) -> None:
        with self.state:
            self.page.messages.upload_percent = max(0, min(100, int(percent)))

    async def load_upload(self, token: str, name: str) -> None:
        transfers = self.transfers
        with self.state:
            self.page.messages.upload_percent = -1
        try:
            path = transfers.take_upload(token)
        except XDiffusionError as error:
            self.reports.error(str(error))
            return
        keep = False
        try:
            root = transfers.upload_root(path)
            target = path
            # The page knows the file by its own name, not by the server's folders: a zip's unpacked
            # folder is shown as the zip ("scan.zip/series: ..."), the upload's folder not at all.
            shown = ((str(transfers.unzipped_folder(path)), path.name), (str(path.parent) + os.sep, ""),
                     (str(path.parent), ""))
            if path.name.lower().endswith(".zip"):
                try:
                    target = await asyncio.to_thread(transfers.unpack_zip, path)
                except XDiffusionError as error:  # the page shows why, like any other refused file
                    self.reports.error(str(error))
                    return
            # Self-contained: a header inside may not name a data file elsewhere on the server.
            keep = await self._load(target, display=name, shown=shown, within=root, upload=path)
        finally:
            if not keep:
                transfers.discard(path)

    async def load_server_path(self, fields=None) -> None:
        take_form(self.state, fields, (self.names.loading.server_path,))
        if not self.allow_server_paths:
            self.reports.error("loading paths on the server is off for this app (it serves other computers); "
                               "upload the file instead")
            return
        text = str(self.mine.server_path or "").strip()
        if not text:
            self.reports.error("type the path of a volume file or DICOM folder on the server first")
            return
        try:
            path, root = self.data_roots.resolve(text)
        except XDiffusionError as error:
            self.reports.error(str(error))
            return
        await self._load(path, display=text, within=root)

    async def load_sample(self, fields=None) -> None:
        take_form(self.state, fields, (self.names.loading.sample,))
        name = str(self.mine.sample or "")
        try:
            path = sample_path(name)
        except XDiffusionError as error:
            self.reports.error(str(error))
            return
        await self._load(path, display=f"sample {name}")

    async def load_picked_volume(self, fields=None) -> None:
        """Load the volume of the waiting 4D file that the page's picker names."""
        take_form(self.state, fields, (self.names.loading.volume_pick,))
        pending = self._pending
        if pending is None:
            self.reports.error("there is no 4D file waiting for a volume to be picked: load one first")
            return
        picked = self.mine.volume_pick
        try:
            index = int(picked)
        except (TypeError, ValueError):
            self.reports.error(f"volume {picked!r} is not a volume number")
            return
        await self._load(pending.path, display=pending.display, shown=pending.shown, within=pending.within,
                         upload=pending.upload, volume_index=index)

    def _forget_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and pending.upload is not None:
            self.transfers.discard(pending.upload)
        with self.state:
            self.mine.volume_choices, self.mine.volume_pick, self.mine.volume_pick_name = [], 0, ""

    async def _load(self, path: Path, display: str, shown: tuple[tuple[str, str], ...] = (),
                    within: Path | None = None, upload: Path | None = None, volume_index: int | None = None) -> bool:
        """Read and show ``path``; True when the file is kept (a 4D file waiting for a pick).
        ``shown``: (server path, what the page calls it) pairs replaced in an error message, in order."""
        reports, messages = self.reports, self.page.messages
        if self.page.running.running:
            reports.error("a reconstruction is running: cancel it or wait before loading another volume")
            return False
        if self._pending is not None and self._pending.path != path:
            self._forget_pending()
        with self.state:
            messages.busy, messages.error, messages.info = f"reading {Path(display).name}", "", ""
        try:
            # An upload's voxels are bounded per session (``Transfers.max_voxels``), before decompression.
            limit = self.transfers.max_voxels if upload is not None else None
            volume = await asyncio.to_thread(read_volume, path, volume_index, within=within, max_voxels=limit)
            check_intensity_volume(volume, str(path))  # refused as it opens, in the library's words
            # A DICOM series states its slices' thickness: a thick-slice run models that slab.
            thickness = await asyncio.to_thread(header_slice_thickness, path)
        except MultiVolumeError as error:
            # The page's own choice instead of the command line's --volume.
            self._pending = _Pending4D(Path(path), display, shown, within, upload)
            name = Path(display).name
            with self.state:
                messages.busy = ""
                self.mine.volume_choices = [{"title": f"volume {i}", "value": i} for i in range(error.count)]
                self.mine.volume_pick, self.mine.volume_pick_name = 0, name
            reports.info(f"{name} {error.what}: pick the volume to open below the upload field")
            return True
        except XDiffusionError as error:
            reports.error(str(error), shown)
            return self._pending is not None
        except Exception as error:  # noqa: BLE001 - any failure to read is the user's file, not a crash
            reports.error(f"{Path(display).name}: cannot read it ({type(error).__name__}: {error})")
            return self._pending is not None
        if self._pending is not None:
            self._forget_pending()
        suffix = volume_suffix(path.name)
        stem = path.name[: -len(suffix)] if suffix else path.name
        if volume_index is not None:
            stem = f"{stem}_volume{volume_index}"
        self.set_volume(volume, stem or "volume", thickness)
        with self.state:
            messages.busy = ""
            messages.info = f"loaded {display}" + (f", volume {volume_index}" if volume_index is not None else "")
        return False

    def set_volume(self, volume, name: str, thickness: float | None = None) -> None:
        """Show ``volume`` in the input views; everything of the previous volume is removed."""
        workspace = self.workspace
        self.clear_scene()
        workspace.volume = volume
        workspace.input_node = add_volume_node(workspace.scene, volume, name)
        for tag in INPUT_VIEWS:
            view = workspace.view(tag)
            view.set_background_volume_id(workspace.input_node.GetID())
            view.set_foreground_volume_id(None)
            view.fit_view_to_content()  # Slicer's: the middle slice
            fit(view, volume.grid)  # ours: the whole slice in view
        shape = "x".join(str(s) for s in volume.shape)
        spacing = " x ".join(f"{s:g}" for s in volume.spacing)
        with self.state:
            self.mine.volume_name, self.mine.volume_info = name, f"{shape} voxels, {spacing} mm"
        self.volume_loaded.emit(volume, thickness)

    def clear_scene(self) -> None:
        workspace = self.workspace
        for tag in INPUT_VIEWS:
            workspace.view(tag).set_background_volume_id(None)
        self.volume_closing.emit()
        remove_nodes_added_since(workspace.scene, workspace.baseline)
        workspace.volume = workspace.input_node = None

    def close(self) -> None:
        if self._pending is not None and self._pending.upload is not None:
            self.transfers.discard(self._pending.upload)
        self._pending = None
