"""Wire schemas for supd: msgspec structs only.

Owns the shapes of everything that crosses a socket: tasks (`proto.task`), the
daemon <-> child protocol (`proto.children`) and the supctl <-> daemon protocol
(`proto.control`). Imports msgspec and the stdlib only; no I/O.

Schema evolution follows msgspec's rules: new fields get defaults, types never
change, and the protocol version in the hello is bumped on a breaking change.
"""

import os

import msgspec

PROTOCOL_VERSION = 1

#: The scheduling policy of libzmq's I/O threads on both ends (`zmq.THREAD_SCHED_POLICY`,
#: set before the first socket): SCHED_BATCH, so a woken I/O thread does not preempt the
#: thread that just queued a message for it; it runs when that thread waits, taking every
#: message queued meanwhile. ~1.5 fewer context switches per task on a busy machine.
IO_THREAD_SCHED_POLICY = os.SCHED_BATCH

#: Everything a decoder may raise on hostile bytes: msgspec raises UnicodeDecodeError (not a
#: DecodeError) for invalid UTF-8 inside a msgpack string, and RecursionError when it skips a
#: deeply nested unknown field (a few KiB of 0x91 bytes; tests/unit/test_fuzz_decoders.py).
DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def readable_error(message: str) -> str:
    """msgspec's `Expected `int` <= 100 - at `$.tasks[0].retries`` as
    `tasks[0].retries: Expected `int` <= 100`: the field first, then the range."""
    head, sep, where = message.rpartition(" - at `$")
    if not sep:
        return message
    return f"{where.rstrip('`').lstrip('.') or '(message)'}: {head}"
