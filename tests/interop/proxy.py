"""A TCP proxy that loses one gRPC response, for the interop scenario.

Usage: proxy.py TARGET_HOST:PORT CUTS_FILE

It listens on a free loopback port, prints that port on stdout, and forwards
every connection to TARGET. On the first connection only, it reads the
server's side as HTTP/2 frames and, at the first HEADERS frame on a nonzero
stream (the start of the first response), aborts both sides instead of
forwarding it: the server has committed the call, the client never hears of
it and sees UNAVAILABLE. Later connections are forwarded untouched. The
number of responses cut so far is written to CUTS_FILE (SCENARIO.md, "Proxy
protocol").
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

FRAME_HEADER_BYTES = 9
FRAME_TYPE_HEADERS = 0x1
CHUNK_BYTES = 64 * 1024


class LosingProxy:
    def __init__(self, target: str, cuts_file: Path) -> None:
        host, _, port = target.rpartition(":")
        self.host, self.port = host, int(port)
        self.cuts_file = cuts_file
        self.connections = 0
        self.cuts = 0
        cuts_file.write_text("0\n")

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        losing = self.connections == 1
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self.port)
        except OSError:
            client_w.transport.abort()
            return
        upstream = asyncio.ensure_future(self.copy(client_r, server_w))
        back = self.lose_first_response if losing else self.copy
        downstream = asyncio.ensure_future(back(server_r, client_w))
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (upstream, downstream):
                task.cancel()
            client_w.transport.abort()
            server_w.transport.abort()

    @staticmethod
    async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()

    async def lose_first_response(
        self, server_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        """Forward server frames until the first response starts; then stop."""
        while True:
            try:
                header = await server_r.readexactly(FRAME_HEADER_BYTES)
                length = int.from_bytes(header[0:3], "big")
                frame_type = header[3]
                stream_id = int.from_bytes(header[5:9], "big") & 0x7FFF_FFFF
                payload = await server_r.readexactly(length)
            except asyncio.IncompleteReadError:
                return
            if frame_type == FRAME_TYPE_HEADERS and stream_id != 0:
                self.cuts += 1
                self.cuts_file.write_text(f"{self.cuts}\n")
                return  # the caller aborts both connections
            client_w.write(header + payload)
            await client_w.drain()


async def main(argv: list[str]) -> int:
    proxy = LosingProxy(argv[0], Path(argv[1]))
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
