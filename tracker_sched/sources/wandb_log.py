"""wandb's offline transaction log (``run-<id>.wandb``): the decoder.

wandb ships no Python reader for these files (``wandb sync`` is done by the Go
``wandb-core``), so this is ours. The format, checked against files written by wandb 0.31:

* a 7-byte file header: ``b":W&B"``, the magic ``0xBEE1`` as little-endian
  ``uint16`` (bytes ``e1 be``) and a version byte ``0``;
* then the LevelDB log layout: the file is cut into 32 KiB blocks counted from
  byte 0 (so the header takes the first 7 bytes of block 0). A block holds
  chunks, each a 7-byte header (``crc32: uint32 LE``, ``length: uint16 LE``,
  ``type: uint8``) and ``length`` bytes of data. Chunks never cross a block; a
  block tail shorter than a chunk header is zero padding. Types: 1 full record,
  2 first, 3 middle, 4 last fragment of a record;
* the checksum is the plain (unmasked) IEEE CRC-32 of the type byte followed by
  the data: ``zlib.crc32(data, zlib.crc32(bytes([type])))``;
* each record is a serialized ``wandb.proto.wandb_internal_pb2.Record``.

Damage (a cut-off file, a chunk whose checksum fails) costs only the records it
touches: :func:`iter_log_records` skips it and :class:`Scan` records where it was.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from tracker_sched._optional import require

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_LEN = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def record_class() -> Any:
    return require("wandb.proto.wandb_internal_pb2").Record


def _crc(ctype: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(bytes([ctype])))


class NotALog(Exception):
    """The file does not start with a W&B transaction-log header."""


@dataclass
class Damage:
    start: int
    end: int
    why: str


@dataclass
class Scan:
    """What one pass over a log found: damaged byte ranges and the record count."""

    damage: list[Damage] = field(default_factory=list)
    records: int = 0

    def bad(self, start: int, end: int, why: str) -> None:
        if end <= start:
            return
        last = self.damage[-1] if self.damage else None
        if last is not None and start <= last.end:
            last.end = max(last.end, end)
            if why not in last.why:
                last.why += f", {why}"
        else:
            self.damage.append(Damage(start, end, why))


def iter_log_records(fh: BinaryIO, scan: Scan) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(start, end, payload)`` for every intact record of a log, in file order.

    Unreadable bytes are noted in ``scan`` and skipped: after a chunk whose
    checksum fails, reading resumes at the next chunk when the chunk's length is
    plausible, else at the next block.
    """
    header = fh.read(len(FILE_HEADER))
    if len(header) < len(FILE_HEADER):
        raise NotALog(f"only {len(header)} bytes, shorter than the 7-byte W&B header")
    if header[:4] != FILE_HEADER[:4] or header[4:6] != FILE_HEADER[4:6]:
        raise NotALog(f"header {header.hex()} is not ':W&B' + magic 0xBEE1")
    if header[6] != FILE_HEADER[6]:
        raise NotALog(f"log format version {header[6]}; this reader knows version 0")

    block_start = 0
    block = header + fh.read(BLOCK_LEN - len(header))
    pos = len(header)
    pending: bytearray | None = None
    pending_start = 0

    def drop_pending(why: str, until: int) -> None:
        nonlocal pending
        if pending is not None:
            scan.bad(pending_start, until, why)
            pending = None

    while True:
        at = block_start + pos
        room = len(block) - pos
        last_block = len(block) < BLOCK_LEN
        if room < CHUNK_HEADER.size or _is_zero_fill(block, pos):
            if last_block:
                if any(block[pos:]):
                    scan.bad(at, block_start + len(block), "file cut off inside a chunk")
                break
            if any(block[pos:]):  # padding is zeros; anything else is damage
                scan.bad(at, block_start + len(block), "garbage in block padding")
            block_start += len(block)
            block = fh.read(BLOCK_LEN)
            pos = 0
            if not block:
                break
            continue
        crc, length, ctype = CHUNK_HEADER.unpack_from(block, pos)
        end = pos + CHUNK_HEADER.size + length
        if end > len(block):
            why = "file cut off inside a chunk" if last_block else "chunk length past block end"
            drop_pending(why, at)
            scan.bad(at, block_start + len(block), why)
            pos = len(block)
            continue
        data = bytes(block[pos + CHUNK_HEADER.size : end])
        if ctype not in (FULL, FIRST, MIDDLE, LAST) or crc != _crc(ctype, data):
            why = "bad checksum" if ctype in (FULL, FIRST, MIDDLE, LAST) else "unknown chunk type"
            drop_pending(why, at)
            scan.bad(at, block_start + end, why)
            pos = end
            continue
        if ctype == FULL:
            drop_pending("record missing its last fragment", at)
            scan.records += 1
            yield at, block_start + end, data
        elif ctype == FIRST:
            drop_pending("record missing its last fragment", at)
            pending, pending_start = bytearray(data), at
        elif pending is None:
            scan.bad(at, block_start + end, "fragment of a record whose start was lost")
        elif ctype == MIDDLE:
            pending += data
        else:
            scan.records += 1
            yield pending_start, block_start + end, bytes(pending + data)
            pending = None
        pos = end
    drop_pending("file cut off inside a record", block_start + len(block))


def _is_zero_fill(block: bytes, pos: int) -> bool:
    # A chunk header of all zeros marks preallocated, never-written space.
    return block[pos : pos + CHUNK_HEADER.size] == b"\0" * CHUNK_HEADER.size
