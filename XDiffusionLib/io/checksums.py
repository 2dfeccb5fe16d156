"""SHA-256 checksums of files and of the tensor data of ``.safetensors`` files (no torch needed).

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor names, types,
shapes, offsets and a ``__metadata__`` dict of strings) and the tensor bytes. The checksum of the
weights is the SHA-256 of those tensor bytes, so it can be recorded in the file's own metadata
(``seal_safetensors``) without changing what it covers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

from ..errors import XDiffusionError

_CHUNK = 1 << 22
_MAX_HEADER = 100 << 20  # the safetensors format's own limit


def file_sha256(path: str | os.PathLike, offset: int = 0) -> str:
    """SHA-256 (hex) of the bytes of ``path`` from ``offset`` on."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        stream.seek(offset)
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_safetensors_header(path: str | os.PathLike) -> tuple[int, dict]:
    """(offset of the tensor data, header dict) of a safetensors file; XDiffusionError if it has none."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            raw = stream.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a header")
            (length,) = struct.unpack("<Q", raw)
            if length > _MAX_HEADER:
                raise ValueError(f"header length {length} is not plausible")
            header = json.loads(stream.read(length).decode("utf-8"))
    except OSError as error:
        raise XDiffusionError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise XDiffusionError(f"{path}: corrupt or truncated safetensors file ({error})") from None
    if not isinstance(header, dict):
        raise XDiffusionError(f"{path}: corrupt or truncated safetensors file (the header is not a JSON object)")
    return 8 + length, header


def safetensors_data_end(header: dict) -> int:
    """How many tensor bytes a safetensors header says follow it (the end of its last tensor)."""
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2]
    try:
        return max((int(end) for end in ends), default=0)
    except (TypeError, ValueError):
        return 0


def check_safetensors_size(path: str | os.PathLike) -> None:
    """One line naming ``path`` when it is shorter than its header says (cut short by a copy or a
    full disk): told apart from a changed file before any checksum is computed."""
    offset, header = read_safetensors_header(path)
    size = os.path.getsize(path)
    if size < offset + safetensors_data_end(header):
        raise XDiffusionError(f"{path}: corrupt or truncated safetensors file "
                              f"({size} of {offset + safetensors_data_end(header)} bytes)")


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file (empty when it has none)."""
    metadata = read_safetensors_header(path)[1].get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def tensor_data_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the tensor bytes of a safetensors file (everything after its header)."""
    offset, _ = read_safetensors_header(path)
    return file_sha256(path, offset)


def seal_safetensors(source: str | os.PathLike, target: str | os.PathLike, metadata: dict[str, str],
                     checksum_key: str) -> str:
    """Copy ``source`` to ``target`` with ``metadata`` added to its header and the SHA-256 of its
    tensor bytes recorded under ``checksum_key``; returns that checksum. The tensor bytes are
    copied unchanged (their offsets are relative to the end of the header)."""
    offset, header = read_safetensors_header(source)
    checksum = file_sha256(source, offset)
    header["__metadata__"] = {**(header.get("__metadata__") or {}), **metadata, checksum_key: checksum}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    with open(source, "rb") as data, open(target, "wb") as sink:
        sink.write(struct.pack("<Q", len(text)) + text)
        data.seek(offset)
        shutil.copyfileobj(data, sink, _CHUNK)
    return checksum
