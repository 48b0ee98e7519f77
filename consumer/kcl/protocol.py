"""A thin adapter under amazon_kclpy's KCLProcess: processRecords lines decoded in one C call.

amazon_kclpy parses every line with the stdlib json and an object hook that builds a Record
(with a datetime) per record; that alone cost as much as our whole pipeline. Its IO handler is
the seam it gives us: we swap `load_action` for one that decodes processRecords lines with a
typed msgspec decoder (base64 included) and hands the processor plain RawRecords. Every other
message, and any line not of the daemon's usual shape, takes amazon_kclpy's own decoder, so the
protocol logic (status answers, the checkpoint exchange) stays amazon_kclpy's.

The input is read as bytes, through one large buffer: a processRecords line (hundreds of kB)
then reaches msgspec as it came, not decoded to text 8 kB at a time and joined first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

import msgspec
from amazon_kclpy import kcl
from amazon_kclpy.messages import MessageDispatcher

from consumer.records.model import Position, RawRecord

# KCL's MessageWriter writes compact JSON, keys in declaration order, action first.
_PROCESS_RECORDS = b'{"action":"processRecords"'
INPUT_BUFFER_BYTES = 1 << 20  # a processRecords line of 1,000 records is about 300 kB


class _Record(msgspec.Struct, gc=False):
    # The daemon's own field names. data: msgspec decodes the base64 string into bytes.
    data: bytes
    partitionKey: str
    sequenceNumber: str
    approximateArrivalTimestamp: int
    subSequenceNumber: int | None = None


class _ProcessRecords(msgspec.Struct, gc=False):
    action: str
    records: list[_Record]
    millisBehindLatest: int | None = None


_DECODER = msgspec.json.Decoder(_ProcessRecords)


class RecordsInput(MessageDispatcher):  # type: ignore[misc]
    """What process_records receives: the batch as RawRecords, plus what KCL sent with it."""

    def __init__(self, message: _ProcessRecords) -> None:
        # One object per distinct partition key in the batch: the records stay buffered
        # until a flush, and a batch holds few keys (the repeats were ~60 B a record).
        first: dict[str, str] = {}
        self.records = [
            RawRecord(r.data, first.setdefault(r.partitionKey, r.partitionKey),
                      Position(int(r.sequenceNumber), r.subSequenceNumber or 0),
                      r.approximateArrivalTimestamp)
            for r in message.records
        ]
        self.millis_behind_latest = message.millisBehindLatest
        self.checkpointer: Any = None
        self._action = message.action

    @property
    def action(self) -> str:
        return self._action

    def dispatch(self, checkpointer: Any, record_processor: Any) -> None:
        self.checkpointer = checkpointer
        record_processor.process_records(self)


class FastIO(kcl._IOHandler):  # type: ignore[misc]
    """amazon_kclpy's IO handler over a binary input: read_line gives bytes lines."""

    def __init__(self, input_file: IO[bytes], output_file: IO[str], error_file: IO[str],
                 before_message: Callable[[], None] | None = None) -> None:
        super().__init__(input_file, output_file, error_file)
        self._before_message = before_message

    def load_action(self, line: bytes) -> Any:
        if self._before_message is not None:
            self._before_message()
        if line.startswith(_PROCESS_RECORDS):
            return RecordsInput(_DECODER.decode(line))
        return super().load_action(line.decode())


def binary_input(text_input: IO[str]) -> IO[bytes]:
    """The file under a text input (stdin), read through one large buffer."""
    return open(text_input.fileno(), "rb", buffering=INPUT_BUFFER_BYTES, closefd=False)


def kcl_process(processor: Any, input_file: IO[bytes], output_file: IO[str],
                error_file: IO[str],
                before_message: Callable[[], None] | None = None) -> kcl.KCLProcess:
    """amazon_kclpy's KCLProcess, reading the daemon's lines (bytes) through FastIO;
    `before_message` runs before each message from the daemon is handled."""
    process = kcl.KCLProcess(processor, input_file=input_file, output_file=output_file,
                             error_file=error_file)
    process.io_handler = FastIO(input_file, output_file, error_file, before_message)
    process.checkpointer = kcl.Checkpointer(process.io_handler)
    return process
