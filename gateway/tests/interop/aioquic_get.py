"""GET one URL over HTTP/3 with aioquic, an HTTP/3 implementation independent of edge.

Usage: aioquic_get.py ADDRESS PORT SERVER_NAME PATH CA_FILE
Prints the response headers (pseudo-headers included), a blank line, then the body.
"""

import asyncio
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.done = None
        self.headers = []
        self.body = b""

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.headers = ev.headers
            elif isinstance(ev, DataReceived):
                self.body += ev.data
            if getattr(ev, "stream_ended", False) and self.done and not self.done.done():
                self.done.set_result(None)

    async def get(self, authority, path):
        stream_id = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
                (b"user-agent", b"aioquic"),
            ],
            end_stream=True,
        )
        self.done = self._loop.create_future()
        self.transmit()
        await asyncio.wait_for(self.done, 10)


async def main(address, port, server_name, path, ca_file):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=server_name)
    config.load_verify_locations(ca_file)
    async with connect(address, port, configuration=config, create_protocol=Client) as client:
        await client.get(f"{server_name}:{port}", path)
        for name, value in client.headers:
            print(f"{name.decode()}: {value.decode()}")
        print()
        sys.stdout.write(client.body.decode(errors="replace"))


if __name__ == "__main__":
    address, port, server_name, path, ca_file = sys.argv[1:6]
    asyncio.run(main(address, int(port), server_name, path, ca_file))
