"""Read W&B offline run files, to check what was logged without a W&B server."""

import struct
from collections.abc import Iterator
from pathlib import Path


def wandb_records(path: Path) -> Iterator:
    """Decode a `.wandb` transaction log (LevelDB-style 32 KiB blocks of protobuf `Record`s)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""  # 7-byte ':W&B' file header
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def settled_records(path: Path, kinds: set[str], timeout_s: float = 30.0) -> list:
    """The records of `path` once every record type in `kinds` is there: W&B's service process may still be
    writing the transaction log for a moment after `run.finish()` returns (seen on a loaded 2-core machine)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        records = list(wandb_records(path))
        if kinds <= {r.WhichOneof("record_type") for r in records} or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def record_values(records: list, kind: str) -> dict:
    """Merge the key/value items of every `kind` record ("summary" or "history"); nested keys join with '/'."""
    import json

    out = {}
    for r in records:
        if r.WhichOneof("record_type") != kind:
            continue
        items = r.summary.update if kind == "summary" else r.history.item
        for item in items:
            out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
