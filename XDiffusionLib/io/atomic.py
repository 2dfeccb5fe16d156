"""Putting fully written files and folders in place in one step, so readers never see half of one.

Everything is first written under a temporary name next to its final place (same file system, so
``os.replace`` is one atomic rename). Temporary names are hidden (they start with ".") and carry
the writer's process id and host: readers that scan folders skip hidden names
(``io.formats.is_volume_file``), and the next writer in the same folder removes the leftovers of a
writer that was killed (its process is gone), so nothing a reader could mistake for data stays.

Before the rename every temporary is checked to be whole (``check_complete``): some writers
(ITK's NIfTI writer on a full disk) print an error and return normally, leaving a file cut short
that an unchecked rename would put under its final name. The check reads what the format itself
declares (header sizes, gzip/zlib end-of-stream and trailer, PNG's end chunk, safetensors
offsets) and names the real output, never the hidden temporary. A write that fails says why in the
user's words where the machine tells (``write_failed``): a full disk, or the process's file size
limit (``ulimit -f``), rather than what the writer saw of it ("the compressed data is cut short").
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import XDiffusionError
from .checksums import read_safetensors_header, safetensors_data_end

try:
    import resource  # Unix only: the process's file size limit (ulimit -f)
except ImportError:  # Windows
    resource = None

_MARK = ".xdpart-"
# This host's tag: a process id means something only on the host that wrote it (shared folders).
# Temporary names and evaluation.cohort's heartbeats carry it next to their writer's process id.
HOST_TAG = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\..*" + re.escape(_MARK) + r"(\d+)-([0-9a-f]{8})-")


def _prefix(final: Path) -> str:
    return f".{final.name}{_MARK}{os.getpid()}-{HOST_TAG}-"


def temporary_file(final: str | os.PathLike, suffix: str = "") -> Path:
    """A new empty hidden file next to ``final`` to write ``final``'s content into; ``suffix``
    ends its name (writers that pick the format by the name need the real suffix)."""
    final = Path(final)
    handle, name = tempfile.mkstemp(dir=final.parent, prefix=_prefix(final), suffix=suffix)
    os.close(handle)
    return Path(name)


@contextmanager
def atomic_file(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """The one way to write a file in place: yields a hidden temporary next to ``final`` to write;
    when the block ends normally it replaces ``final`` in one rename (readable by all, like any
    other output), and on any error it is removed, leaving ``final`` as it was."""
    final = Path(final)
    temporary = temporary_file(final, suffix or "".join(final.suffixes[-2:]))
    try:
        try:
            yield temporary
        except OSError as error:
            # Writing the temporary failed (a full disk: Python's own writes raise): name the real
            # output, not the hidden temporary or no file at all, keeping the error's kind.
            if error.filename == str(temporary) or (error.filename is None and error.errno in _WRITE_ERRORS):
                raise OSError(error.errno, error.strerror, str(final)) from None
            raise
        os.chmod(temporary, 0o644)  # mkstemp makes owner-only files
        check_complete(temporary, final)
        os.replace(temporary, final)
    except BaseException:
        remove_quietly(temporary)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = False) -> Path:
    """``path`` whole or not at all: ``write(handle)`` fills the temporary file (text: UTF-8, no
    newline translation, for csv) that then replaces ``path``."""
    with atomic_file(path) as temporary:
        mode = {"mode": "wb"} if binary else {"mode": "w", "newline": "", "encoding": "utf-8"}
        with open(temporary, **mode) as handle:
            write(handle)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, **dump_options) -> Path:
    """``data`` as indented JSON ending in a newline, written in place in one step."""
    return write_text_atomic(path, json.dumps(data, indent=2, **dump_options) + "\n")


def temporary_directory(final: str | os.PathLike) -> Path:
    """A new empty hidden folder next to ``final`` to build ``final`` in."""
    final = Path(final)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=_prefix(final)))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``folder`` whose writer (a process on this host) has ended; returns them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or match.group(2) != HOST_TAG or process_alive(int(match.group(1))):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue  # another writer is cleaning up too, or it is not ours to remove
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host may still run (ours, or one we cannot tell about).

    psutil's process table answers (``os.kill(pid, 0)`` is no liveness check on Windows). A
    number that names no single process (zero or less) counts as alive: its files are kept. So
    does every process where psutil is not installed: 3D Slicer's Python does not bundle it (the
    Slicer module installs it with the worker's packages), and the module must work before that.
    """
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        import psutil  # optional where this runs inside 3D Slicer (see above)
    except ImportError:
        return True  # we cannot tell: keep its files
    try:
        return psutil.pid_exists(pid)
    except OSError:
        return True  # we cannot tell: keep its files


def remove_quietly(path: str | os.PathLike) -> None:
    """Remove a temporary file or folder if it is still there."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        pass  # already gone, or not ours to remove


def current_umask() -> int:
    """The process's umask, read without ``os.umask()`` (which would change it for every thread for
    a moment): outputs get the usual permissions, not mkstemp's/mkdtemp's owner-only ones."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def replace_directory(ready: Path, final: Path) -> Path:
    """Move the complete folder ``ready`` to ``final`` (same file system), replacing any folder
    there. It gets a folder's usual permissions first (``temporary_directory`` makes it owner-only)."""
    os.chmod(ready, 0o777 & ~current_umask())
    if final.exists():
        # A folder cannot be renamed over a non-empty one: move the old one aside first.
        old = temporary_directory(final)
        os.replace(final, old / final.name)
        os.replace(ready, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(ready, final)
    return final


# -- is a written file whole? ------------------------------------------------------------------

_READ = 1 << 20
_LOW_SPACE = 4 << 20  # below this many free bytes a short file is put down to a full disk
# What a write on a full disk (or past the file size limit, or a quota) raises, naming no file.
_WRITE_ERRORS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NRRD_TYPES = {**dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t",
                                "char"), 1),
               **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t",
                                "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
               **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32",
                                "uint32_t", "float"), 4),
               **dict.fromkeys(("longlong", "long long", "long long int", "signed long long",
                                "signed long long int", "int64", "int64_t", "ulonglong", "unsigned long long",
                                "unsigned long long int", "uint64", "uint64_t", "double"), 8)}
_META_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def check_complete(path: str | os.PathLike, final: str | os.PathLike | None = None) -> None:
    """Raise a one-line XDiffusionError naming ``final`` (default ``path``) unless the file at
    ``path`` is whole as far as its format (by ``final``'s name) says: NIfTI, NRRD and MetaImage
    volumes hold every voxel their header declares, compressed streams end with their trailer,
    PNG ends with its end chunk, JSON parses, safetensors holds every tensor. Other formats must
    at least not be empty."""
    path = Path(path)
    final = Path(final) if final is not None else path
    try:
        problem = _problem(path, final.name.lower())
    except OSError as error:
        raise XDiffusionError(f"{final}: writing failed ({error.strerror or error})") from None
    if problem is not None:
        raise write_failed(final, path, problem)


def write_failed(final: str | os.PathLike, temporary: str | os.PathLike,
                 detail: str | BaseException) -> XDiffusionError:
    """The one-line error for ``final`` when its ``temporary`` could not be written whole: why in the
    user's words where the machine tells (no space left on the device; the file reached this
    process's file size limit), else ``detail``: what the writer or ``check_complete`` saw, or the
    writer's exception (its reason only: an OSError's file name is the hidden temporary)."""
    temporary = Path(temporary)
    full = isinstance(detail, OSError) and detail.errno == errno.ENOSPC
    if isinstance(detail, BaseException):
        lines = str(detail).strip().splitlines() or [type(detail).__name__]
        detail = (getattr(detail, "strerror", None) or lines[-1])[:160]
    if full or _free_bytes(temporary.parent) < _LOW_SPACE:
        detail = "no space left on device"
    else:
        limit = _file_size_limit()
        try:
            size = temporary.stat().st_size
        except OSError:
            size = -1
        if limit is not None and size >= limit:
            detail = f"the file reached this process's file size limit of {limit} bytes, ulimit -f"
    return XDiffusionError(f"{final}: writing failed ({detail}); nothing was written under this name")


def _file_size_limit() -> int | None:
    """The largest file this process may write (RLIMIT_FSIZE), or None for no limit."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _free_bytes(folder: Path) -> int:
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows): cannot tell
        return 1 << 62
    return stats.f_bavail * stats.f_frsize


def _problem(path: Path, name: str) -> str | None:
    """What is wrong with the written file (a few words), or None when it is whole."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_problem(path, name.endswith(".gz"))
    if name.endswith(".nrrd"):
        return _nrrd_problem(path)
    if name.endswith(".mha"):
        return _metaimage_problem(path)
    if name.endswith(".gz"):
        return _stream_problem(path, 0, None, gzip_only=True)
    if name.endswith(".png"):
        with open(path, "rb") as stream:
            head = stream.read(8)
            stream.seek(max(0, size - len(_PNG_END)))
            tail = stream.read()
        return None if head == b"\x89PNG\r\n\x1a\n" and tail == _PNG_END else "the PNG file is cut short"
    if name.endswith(".json"):
        try:
            json.loads(path.read_bytes())
        except ValueError:
            return "the JSON text is cut short"
        return None
    if name.endswith(".safetensors"):
        return _safetensors_problem(path, size)
    return None


def _short(have: int, want: int) -> str | None:
    return None if have >= want else f"{have} of {want} bytes"


def _read_head(path: Path, compressed: bool, count: int) -> bytes:
    with open(path, "rb") as stream:
        if not compressed:
            return stream.read(count)
        inflater, head = zlib.decompressobj(31), b""
        while len(head) < count and (chunk := stream.read(1 << 16)):
            head += inflater.decompress(chunk, count - len(head))
            if inflater.unconsumed_tail or inflater.eof:
                break
        return head


def _nifti_problem(path: Path, compressed: bool) -> str | None:
    try:
        head = _read_head(path, compressed, 540)
    except zlib.error:
        return "the gzip stream is corrupt"
    if len(head) < 348:
        return "the NIfTI header is cut short"
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            break
        if size == 540 and len(head) >= 540:
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            dims = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        return "not a NIfTI header"
    count = 1
    for extent in dims[1:1 + max(0, min(int(dims[0]), 7))]:
        count *= max(int(extent), 1)
    want = max(offset, 348) + count * max(int(bitpix), 8) // 8
    if compressed:
        return _stream_problem(path, 0, want, gzip_only=True)
    return _short(path.stat().st_size, want)


def _stream_problem(path: Path, start: int, want: int | None, gzip_only: bool) -> str | None:
    """Whether the compressed stream(s) from byte ``start`` on end properly (zlib checks the trailer)
    and, with ``want``, inflate to at least ``want`` bytes. Inflated in bounded pieces (a bomb costs
    no memory)."""
    mode = 31 if gzip_only else 47  # gzip; or zlib/gzip by the header (MetaImage writes zlib)
    inflater, total = zlib.decompressobj(mode), 0
    try:
        with open(path, "rb") as stream:
            stream.seek(start)
            chunk = stream.read(_READ)
            while chunk:
                while True:  # inflate this chunk in pieces of at most _READ bytes
                    piece = inflater.decompress(chunk, _READ)
                    total += len(piece)
                    chunk = inflater.unconsumed_tail
                    if inflater.eof or (not chunk and len(piece) < _READ):
                        break
                if inflater.eof:
                    rest = inflater.unused_data + stream.read(_READ)
                    if not rest.strip(b"\0"):
                        break  # the end (ITK pads nothing, but zero padding is harmless)
                    inflater, chunk = zlib.decompressobj(mode), rest  # another gzip member
                else:
                    chunk = stream.read(_READ)
    except zlib.error:
        return "the compressed data is corrupt"
    if not inflater.eof:
        return "the compressed data is cut short"
    return None if want is None else _short(total, want)


def _text_header(path: Path, end: Callable[[bytes], int]) -> tuple[bytes, int] | None:
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    stop = end(head)
    return (head[:stop], stop) if stop >= 0 else None


def _header_fields(header: bytes, separator: str) -> dict[str, str]:
    """``key<separator>value`` lines of a text header (NRRD ": ", MetaImage "="), stripped."""
    fields = {}
    for line in header.decode("latin-1").splitlines():
        key, found, value = line.partition(separator)
        if found:
            fields[key.strip()] = value.strip()
    return fields


def _nrrd_problem(path: Path) -> str | None:
    found = _text_header(path, lambda head: head.find(b"\n\n") + 2 if b"\n\n" in head else -1)
    if found is None:
        return "the NRRD header is cut short"
    header, start = found
    fields = {key.lower(): value for key, value in _header_fields(header, ": ").items()}
    if "data file" in fields or "datafile" in fields:
        return None  # a detached header: its data file is another file
    try:
        count = 1
        for extent in fields["sizes"].split():
            count *= int(extent)
        want = count * _NRRD_TYPES[fields["type"].lower()]
    except (KeyError, ValueError):
        return None  # a header this check does not know: leave it to the readers
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        return _stream_problem(path, start, want, gzip_only=True)
    if encoding == "raw":
        return _short(path.stat().st_size - start, want)
    return None


def _metaimage_problem(path: Path) -> str | None:
    def end(head: bytes) -> int:
        match = re.search(rb"ElementDataFile\s*=\s*([^\r\n]*)\r?\n", head)
        return match.end() if match else -1

    found = _text_header(path, end)
    if found is None:
        return "the MetaImage header is cut short"
    header, start = found
    fields = _header_fields(header, "=")
    if fields.get("ElementDataFile", "").upper() != "LOCAL":
        return None  # data in another file
    try:
        count = int(fields.get("ElementNumberOfChannels", "1"))
        for extent in fields["DimSize"].split():
            count *= int(extent)
        want = count * _META_TYPES[fields["ElementType"]]
    except (KeyError, ValueError):
        return None
    if fields.get("CompressedData", "False").lower() == "true":
        return _stream_problem(path, start, want, gzip_only=False)
    return _short(path.stat().st_size - start, want)


def _safetensors_problem(path: Path, size: int) -> str | None:
    try:
        offset, header = read_safetensors_header(path)
    except XDiffusionError:
        return "the safetensors header is cut short"
    return _short(size, offset + safetensors_data_end(header))
