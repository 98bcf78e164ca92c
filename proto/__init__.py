"""Wire schemas for supd: msgspec structs only.

Owns the shapes of everything that crosses a socket: tasks (`proto.task`), the
daemon <-> child protocol (`proto.children`) and the supctl <-> daemon protocol
(`proto.control`). Imports msgspec and the stdlib only; no I/O.

Schema evolution follows msgspec's rules: new fields get defaults, types never
change, and the protocol version in the hello is bumped on a breaking change.
"""

PROTOCOL_VERSION = 1
