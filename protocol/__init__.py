"""Everything that crosses the wire between meshd agents and `meshctl`.

`protocol.subjects` names NATS subjects, KV buckets, keys and streams; `protocol.messages`
defines the message types with their schema versions; `protocol.codec` turns them into msgpack
bytes and back, validating everything it reads; `protocol.errors` holds the project's root
error `MeshError` and the protocol errors.

A leaf package: standard library and msgpack only, no I/O, no asyncio.
"""
