"""Scalars from TensorBoard event files, without TensorFlow.

The authors' code logs only to TensorBoard (`<run>/tb`: the epoch means of
`loss/xe`, `monitor/step_per_second`, and the final AUCs); ours writes
TensorBoard too (tensorboardX). Both are read here with tensorboardX's
protobuf classes (a dependency of oneclass_jax), so the driver needs no
TensorFlow in our environment.

An event file is a sequence of TFRecords: uint64 length, masked CRC-32C of
the length, the serialized `Event`, masked CRC-32C of the data. A file cut
short by a killed process ends in a partial record, which is dropped.
"""
from __future__ import annotations

import collections
import dataclasses
import pathlib
import struct

import numpy as np
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

# TensorProto dtypes TF writes scalars with: DT_FLOAT = 1, DT_DOUBLE = 2.
_TENSOR_DTYPES = {1: ("float_val", "<f4"), 2: ("double_val", "<f8")}


@dataclasses.dataclass(frozen=True)
class Scalar:
  step: int
  wall_time: float
  value: float


def _records(path: pathlib.Path):
  data = path.read_bytes()
  pos = 0
  while pos + 12 <= len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    end = pos + 12 + length + 4
    if length_crc != masked_crc32c(header) or end > len(data):
      return  # A torn record: the writer was killed mid-write.
    body = data[pos + 12:pos + 12 + length]
    (body_crc,) = struct.unpack("<I", data[end - 4:end])
    if body_crc != masked_crc32c(body):
      raise ValueError(f"{path}: corrupt record at byte {pos} (CRC mismatch).")
    yield body
    pos = end


def _value(value) -> float | None:
  """The number in a summary value (tensorboardX: simple_value; TF2: tensor)."""
  if value.HasField("tensor"):
    tensor = value.tensor
    if tensor.dtype not in _TENSOR_DTYPES:
      return None  # Not a scalar summary (text, histogram, ...).
    field, dtype = _TENSOR_DTYPES[tensor.dtype]
    values = list(getattr(tensor, field)) or np.frombuffer(
        tensor.tensor_content, dtype).tolist()
    return float(values[0]) if len(values) == 1 else None
  if value.HasField("simple_value"):
    return float(value.simple_value)
  return None


def read_scalars(tb_dir) -> dict[str, list[Scalar]]:
  """{tag: [Scalar, ...] in file and write order} of every event file.

  Raises:
    FileNotFoundError: no event file in `tb_dir`.
  """
  paths = sorted(pathlib.Path(tb_dir).glob("events.out.tfevents.*"))
  if not paths:
    raise FileNotFoundError(f"no TensorBoard event file in {tb_dir}.")
  scalars = collections.defaultdict(list)
  for path in paths:
    for body in _records(path):
      event = event_pb2.Event.FromString(body)
      for value in event.summary.value:
        number = _value(value)
        if number is not None:
          scalars[value.tag].append(
              Scalar(int(event.step), float(event.wall_time), number))
  return dict(scalars)
