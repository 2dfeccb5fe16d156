"""Feature: loading a volume (upload, shipped sample, path on the server, one volume of a 4D file).

A 4D upload is not refused outright: the page offers its volumes in a picker and the file is kept
until one is chosen (or another volume is loaded). Reading runs in a thread; the Slicer work on
the server's event loop.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import XDiffusionError

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
    def __init__(self, app):
        self.app = app
        self._pending: _Pending4D | None = None

    def on_upload_started(self, name: str, size: int) -> None:
        from .transfer import megabytes

        self.app.push(xd_busy=f"uploading {name} ({megabytes(int(size))})", xd_upload_percent=0,
                      xd_error="", xd_info="")

    def on_upload_progress(self, percent) -> None:
        self.app.push(xd_upload_percent=max(0, min(100, int(percent))))

    async def load_upload(self, token: str, name: str) -> None:
        app = self.app
        app.push(xd_upload_percent=-1)
        try:
            path = app.transfers.take_upload(token)
        except XDiffusionError as error:
            app.report_error(str(error))
            return
        keep = False
        try:
            root = app.transfers.upload_root(path)
            target = path
            # The page knows the file by its own name, not by the server's folders: a zip's unpacked
            # folder is shown as the zip ("scan.zip/series: ..."), the upload's folder not at all.
            shown = ((str(app.transfers.unzipped_folder(path)), path.name), (str(path.parent) + os.sep, ""),
                     (str(path.parent), ""))
            if path.name.lower().endswith(".zip"):
                try:
                    target = await asyncio.to_thread(app.transfers.unpack_zip, path)
                except XDiffusionError as error:  # the page shows why, like any other refused file
                    app.report_error(str(error))
                    return
            # Self-contained: a header inside may not name a data file elsewhere on the server.
            keep = await self._load(target, display=name, shown=shown, within=root, upload=path)
        finally:
            if not keep:
                app.transfers.discard(path)

    async def load_server_path(self, fields=None) -> None:
        app = self.app
        app.take(fields, ("xd_server_path",))
        if not app.allow_server_paths:
            app.report_error("loading paths on the server is off for this app (it serves other computers); "
                             "upload the file instead")
            return
        text = str(app.state.xd_server_path or "").strip()
        if not text:
            app.report_error("type the path of a volume file or DICOM folder on the server first")
            return
        try:
            path, root = app.data_roots.resolve(text)
        except XDiffusionError as error:
            app.report_error(str(error))
            return
        await self._load(path, display=text, within=root)

    async def load_sample(self, fields=None) -> None:
        from ...data.samples import sample_path

        self.app.take(fields, ("xd_sample",))
        name = str(self.app.state.xd_sample or "")
        try:
            path = sample_path(name)
        except XDiffusionError as error:
            self.app.report_error(str(error))
            return
        await self._load(path, display=f"sample {name}")

    async def load_picked_volume(self, fields=None) -> None:
        """Load the volume of the waiting 4D file that the page's picker names."""
        self.app.take(fields, ("xd_volume_pick",))
        pending = self._pending
        if pending is None:
            self.app.report_error("there is no 4D file waiting for a volume to be picked: load one first")
            return
        try:
            index = int(self.app.state.xd_volume_pick)
        except (TypeError, ValueError):
            self.app.report_error(f"volume {self.app.state.xd_volume_pick!r} is not a volume number")
            return
        await self._load(pending.path, display=pending.display, shown=pending.shown, within=pending.within,
                         upload=pending.upload, volume_index=index)

    def _forget_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and pending.upload is not None:
            self.app.transfers.discard(pending.upload)
        self.app.push(xd_volume_choices=[], xd_volume_pick=0, xd_volume_pick_name="")

    async def _load(self, path: Path, display: str, shown: tuple[tuple[str, str], ...] = (),
                    within: Path | None = None, upload: Path | None = None, volume_index: int | None = None) -> bool:
        """Read and show ``path``; True when the file is kept (a 4D file waiting for a pick).
        ``shown``: (server path, what the page calls it) pairs replaced in an error message, in order."""
        from ...inputs import check_intensity_volume
        from ...io import read_volume
        from ...io.readers import MultiVolumeError, header_slice_thickness, volume_suffix

        app = self.app
        if app.state.xd_running:
            app.report_error("a reconstruction is running: cancel it or wait before loading another volume")
            return False
        if self._pending is not None and self._pending.path != path:
            self._forget_pending()
        app.push(xd_busy=f"reading {Path(display).name}", xd_error="", xd_info="")
        try:
            # An upload's voxels are bounded per session (``Transfers.max_voxels``), before decompression.
            limit = app.transfers.max_voxels if upload is not None else None
            volume = await asyncio.to_thread(read_volume, path, volume_index, within=within, max_voxels=limit)
            check_intensity_volume(volume, str(path))  # refused as it opens, in the library's words
            # A DICOM series states its slices' thickness: a thick-slice run models that slab.
            thickness = await asyncio.to_thread(header_slice_thickness, path)
        except MultiVolumeError as error:
            # The page's own choice instead of the command line's --volume.
            self._pending = _Pending4D(Path(path), display, shown, within, upload)
            name = Path(display).name
            app.push(xd_busy="", xd_volume_choices=[{"title": f"volume {i}", "value": i} for i in range(error.count)],
                     xd_volume_pick=0, xd_volume_pick_name=name)
            app.report_info(f"{name} {error.what}: pick the volume to open below the upload field")
            return True
        except XDiffusionError as error:
            app.report_error(str(error), shown)
            return self._pending is not None
        except Exception as error:  # noqa: BLE001 - any failure to read is the user's file, not a crash
            app.report_error(f"{Path(display).name}: cannot read it ({type(error).__name__}: {error})")
            return self._pending is not None
        if self._pending is not None:
            self._forget_pending()
        suffix = volume_suffix(path.name)
        stem = path.name[: -len(suffix)] if suffix else path.name
        if volume_index is not None:
            stem = f"{stem}_volume{volume_index}"
        self.set_volume(volume, stem or "volume", thickness)
        app.push(xd_busy="", xd_info=f"loaded {display}" + (f", volume {volume_index}" if volume_index is not None
                                                             else ""))
        return False

    def set_volume(self, volume, name: str, thickness: float | None = None) -> None:
        """Show ``volume`` in the input views; everything of the previous volume is removed. A
        thick-slice scan (``thickness``: its slices' thickness from the header, if stated) is offered
        all its acquired slices onto a finer grid (``thick_slices``)."""
        from ...slicer.nodes import add_volume_node
        from .views import fit

        app = self.app
        self.clear_scene()
        app.volume = volume
        app.input_node = add_volume_node(app.scene, volume, name)
        for tag in INPUT_VIEWS:
            view = app.view_manager.get_view(tag)
            view.set_background_volume_id(app.input_node.GetID())
            view.set_foreground_volume_id(None)
            view.fit_view_to_content()  # Slicer's: the middle slice
            fit(view, volume.grid)  # ours: the whole slice in view
        shape = "x".join(str(s) for s in volume.shape)
        spacing = " x ".join(f"{s:g}" for s in volume.spacing)
        app.push(xd_volume_name=name, xd_volume_info=f"{shape} voxels, {spacing} mm",
                 xd_picks=[], xd_pick_plane="", xd_layout="input")
        for tag in INPUT_VIEWS:
            app.picking.on_view_modified(app.view_manager.get_view(tag))
        app.thick_slices.offer(volume, thickness)
        app.release_memory()  # the previous volume and its results

    def clear_scene(self) -> None:
        from ...slicer.nodes import remove_nodes_added_since

        app = self.app
        for tag in INPUT_VIEWS:
            app.view_manager.get_view(tag).set_background_volume_id(None)
        app.viewing.remove_result()
        remove_nodes_added_since(app.scene, app.baseline)
        app.volume = app.input_node = None
        app.thick_slices.forget()

    def close(self) -> None:
        if self._pending is not None and self._pending.upload is not None:
            self.app.transfers.discard(self._pending.upload)
        self._pending = None
