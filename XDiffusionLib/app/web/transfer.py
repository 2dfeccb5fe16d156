"""Files in and out of one session over plain HTTP (not the websocket): uploads and downloads.

- ``POST upload?name=FILE``: the request body is the file. It is streamed to the session's private
  folder and cut off as soon as it passes the size limit, so a huge upload costs neither memory nor
  much disk. The answer is JSON: ``{"ok": true, "token": ...}`` (the page then asks the session to
  load that token) or ``{"ok": false, "error": "one line"}`` with status 400/413.
- ``GET download/TOKEN``: a file the session exported, as an attachment. The page downloads each
  export at once; a session keeps its ``MAX_KEPT_DOWNLOADS`` newest (older ones are only disk).
Tokens are random and only name files inside the session's folder; paths never come from the page.
An upload is self-contained: it is read only if every file it reads lies in its own upload folder
(``upload_root``; a header naming /etc/passwd as its data file is refused, ``io.readers``).
"""

from __future__ import annotations

import lzma
import re
import secrets
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from aiohttp import web

from ...errors import XDiffusionError
from ...io.names import safe_file_name
from ...io.readers import volume_suffix

CHUNK = 1 << 20
_MAX_ZIP_MEMBERS = 20000
# Uploads waiting to be loaded: a page uploads one file and loads it; more pending ones are only
# disk used by a client that never loads them, so the oldest beyond this are removed.
MAX_PENDING_UPLOADS = 2
# Exports waiting to be downloaded: the page downloads each at once, so older ones are only disk
# used by a client that exports again and again (each up to the largest volume a session may hold).
MAX_KEPT_DOWNLOADS = 2


MB = 1 << 20  # the page and --max-upload-mb count in MiB, shown as "MB"


def megabytes(count: int) -> str:
    return f"{count / MB:.1f} MB" if count < 10 * MB else f"{count / MB:.0f} MB"


def safe_filename(name: str) -> str:
    """The last path component of ``name`` as a harmless file name (``io.names.safe_file_name``)."""
    return safe_file_name(re.split(r"[\\/]", str(name or ""))[-1], fallback="upload")


class Transfers:
    """Uploads and downloads of one session, in ``folder`` (created here, removed by ``close``)."""

    def __init__(self, folder: Path, max_upload_bytes: int):
        self.folder = Path(folder)
        self.max_upload_bytes = int(max_upload_bytes)
        (self.folder / "uploads").mkdir(parents=True, exist_ok=True)
        (self.folder / "downloads").mkdir(parents=True, exist_ok=True)
        self._uploads: dict[str, Path] = {}
        self._downloads: dict[str, tuple[Path, str]] = {}
        # Decompressed, an upload may be far larger than its file (a 3 MB .nii.gz can declare 768^3
        # voxels, 1.7 GB as float32): at most half the upload limit's bytes in voxels, and 256^3.
        self.max_voxels = max(self.max_upload_bytes // 2, 256 ** 3)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/upload", self.handle_upload), web.get("/download/{token}", self.handle_download)]

    def too_large_message(self, name: str, size: int) -> str:
        return (f"{name}: the file is larger than the upload limit of {megabytes(self.max_upload_bytes)}"
                + (f" ({megabytes(size)})" if size else "")
                + "; start the app with a larger --max-upload-mb, or load it from a path on the server")

    # -- uploads ---------------------------------------------------------------------------------

    async def handle_upload(self, request: web.Request) -> web.Response:
        name = safe_filename(request.query.get("name", "upload"))
        length = request.content_length
        if length is not None and length > self.max_upload_bytes:
            return _refuse(413, self.too_large_message(name, length))
        folder = Path(self._new_folder(self.folder / "uploads"))
        path = folder / name
        written = 0
        try:
            with open(path, "wb") as stream:
                async for chunk in request.content.iter_chunked(CHUNK):
                    written += len(chunk)
                    if written > self.max_upload_bytes:
                        raise _TooLarge()
                    stream.write(chunk)
        except _TooLarge:
            shutil.rmtree(folder, ignore_errors=True)
            return _refuse(413, self.too_large_message(name, 0))
        except (ConnectionError, OSError) as error:
            shutil.rmtree(folder, ignore_errors=True)
            return _refuse(400, f"{name}: the upload did not complete ({type(error).__name__})")
        if written == 0:
            shutil.rmtree(folder, ignore_errors=True)
            return _refuse(400, f"{name}: the file is empty")
        token = secrets.token_urlsafe(12)
        self._uploads[token] = path
        while len(self._uploads) > MAX_PENDING_UPLOADS:  # per-session disk: the oldest unloaded go
            self.discard(self._uploads.pop(next(iter(self._uploads))))
        return web.json_response({"ok": True, "token": token, "name": name, "size": written})

    def take_upload(self, token: str) -> Path:
        """The uploaded file of ``token`` (each token is used once)."""
        path = self._uploads.pop(str(token), None)
        if path is None or not path.is_file():
            raise XDiffusionError("the uploaded file is no longer available (a newer upload replaced it, "
                                  "or the session restarted): upload it again")
        return path

    def upload_root(self, path: Path) -> Path:
        """The private folder of the upload ``path`` (its file and, for a zip, what it unpacked):
        everything reading it may open must lie inside."""
        uploads = (self.folder / "uploads").resolve()
        target = Path(path).resolve()
        while target.parent != uploads and uploads in target.parents:
            target = target.parent
        if target.parent != uploads:
            raise XDiffusionError("the uploaded file is no longer available: upload it again")
        return target

    def discard(self, path: Path) -> None:
        """Remove an upload (file or unpacked folder) once it has been read."""
        _remove_folder_in(self.folder / "uploads", path)

    @staticmethod
    def unzipped_folder(path: Path) -> Path:
        """Where the zip upload ``path`` is unpacked (inside its own upload folder)."""
        return Path(path).parent / "unzipped"

    def unpack_zip(self, path: Path) -> Path:
        """A zip upload (a DICOM series folder, or one volume file) unpacked next to it; returns what
        ``read_volume`` should read: the one volume file inside, or the one folder holding files."""
        target = self.unzipped_folder(path)
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if not members:
                    raise XDiffusionError(f"{path.name}: the zip file is empty")
                if len(members) > _MAX_ZIP_MEMBERS:
                    raise XDiffusionError(f"{path.name}: the zip file holds more than {_MAX_ZIP_MEMBERS} files")
                unpacked = sum(m.file_size for m in members)
                if unpacked > self.max_upload_bytes:
                    raise XDiffusionError(self.too_large_message(path.name + " (unpacked)", unpacked))
                for member in members:
                    parts = Path(member.filename.replace("\\", "/")).parts
                    if member.filename.startswith("/") or ".." in parts or not parts:
                        raise XDiffusionError(f"{path.name}: unsafe path {member.filename!r} in the zip file")
                    _check_member(path.name, member, len(parts))
                for member in members:
                    parts = Path(member.filename.replace("\\", "/")).parts
                    destination = target.joinpath(*[safe_filename(p) for p in parts])
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as source, open(destination, "wb") as sink:
                        shutil.copyfileobj(source, sink, CHUNK)
        except (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as error:
            raise XDiffusionError(f"{path.name}: not a readable zip file ({error})") from None
        except OSError as error:  # a full disk, a name the system refuses
            raise XDiffusionError(f"{path.name}: could not unpack the zip file ({error.strerror or error})") from None
        files = [p for p in target.rglob("*") if p.is_file()]
        volumes = [p for p in files if volume_suffix(p) not in (None, ".dcm")]
        if len(volumes) == 1:
            return volumes[0]
        folders = {p.parent for p in files}
        if len(folders) != 1:
            raise XDiffusionError(f"{path.name}: the zip file holds files in {len(folders)} folders; "
                                  "zip one DICOM series folder or one volume file")
        return folders.pop()

    # -- downloads -------------------------------------------------------------------------------

    def new_download_folder(self) -> Path:
        return Path(self._new_folder(self.folder / "downloads"))

    def add_download(self, path: Path, filename: str) -> str:
        """Offer ``path`` for download as ``filename``; returns the relative URL."""
        token = secrets.token_urlsafe(12)
        self._downloads[token] = (Path(path), safe_filename(filename))
        while len(self._downloads) > MAX_KEPT_DOWNLOADS:  # per-session disk: the oldest exports go
            self.discard_download(self._downloads.pop(next(iter(self._downloads)))[0])
        return f"download/{token}"

    def discard_download(self, path: Path) -> None:
        """Remove an export's folder (``new_download_folder``) with everything in it."""
        _remove_folder_in(self.folder / "downloads", path)

    async def handle_download(self, request: web.Request) -> web.StreamResponse:
        entry = self._downloads.get(request.match_info.get("token", ""))
        if entry is None or not entry[0].is_file():
            raise web.HTTPNotFound(text="this download has expired: export again")
        path, filename = entry
        return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                               "Cache-Control": "no-store"})

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _new_folder(parent: Path) -> str:
        return tempfile.mkdtemp(dir=parent)


# Zip members this app unpacks: stored or compressed by Python's own methods, unencrypted, and in
# at most this many folders (a DICOM export nests a few; 3000 would exceed any path length).
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                zipfile.ZIP_LZMA: "lzma"}
_MAX_ZIP_DEPTH = 32


def _check_member(zip_name: str, member: zipfile.ZipInfo, depth: int) -> None:
    """Refuse, before anything is unpacked, a member this app could not unpack."""
    if member.flag_bits & 0x1:
        raise XDiffusionError(f"{zip_name}: {member.filename[:80]!r} is encrypted; upload a zip without a password")
    if member.compress_type not in _ZIP_METHODS:
        raise XDiffusionError(f"{zip_name}: {member.filename[:80]!r} uses compression method {member.compress_type}; "
                              f"zip it again with {', '.join(_ZIP_METHODS.values())}")
    if depth > _MAX_ZIP_DEPTH:
        raise XDiffusionError(f"{zip_name}: a file in the zip is {depth - 1} folders deep (at most "
                              f"{_MAX_ZIP_DEPTH - 1} here)")


def _remove_folder_in(parent: Path, path: Path) -> None:
    """Remove the folder directly inside ``parent`` that holds ``path`` (or is it); nothing outside."""
    parent = Path(parent).resolve()
    target = Path(path).resolve()
    while target.parent != parent and parent in target.parents:
        target = target.parent
    if target.parent == parent:
        shutil.rmtree(target, ignore_errors=True)


class _TooLarge(Exception):
    pass


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)
