"""A real local HTTP receiver for alerts: records every POSTed JSON body, answers a chosen status."""

from __future__ import annotations

import asyncio
import json


class Receiver:
    def __init__(self, status: int = 200):
        self.status = status
        self.bodies: list[dict] = []
        self.raw: list[tuple[dict[str, str], bytes]] = []  # each request's headers (lower-cased) and body
        self.server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/alert"

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            body = await reader.readexactly(length)
            fields = (line.decode().split(": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            headers = {name.lower(): value for name, value in fields}
            self.raw.append((headers, body))
            self.bodies.append(json.loads(body))
            writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
            await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()
