#!/usr/bin/env python3
"""A userspace stand-in for `tc qdisc add dev OUT root netem delay D loss L%`, for kernels
without sch_netem (the test machines' have none). Run inside a network namespace: the
packets routed into the TUN device DEV (routes to the peers to impair, `ip route add
PEER/32 dev DEV`) are held for the delay, dropped with the loss probability, and sent on
out of OUT with a raw socket, as they were. Like netem on an egress qdisc, it impairs one
direction: what this host sends. Stops on SIGTERM, or after --max-seconds.
"""
import argparse
import fcntl
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SO_BINDTODEVICE = 25


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", required=True, help="the TUN device packets are routed into")
    parser.add_argument("--out", required=True, help="the interface they leave by")
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--loss", type=float, default=5.0, help="percent of packets dropped")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()

    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", args.dev.encode(), IFF_TUN | IFF_NO_PI))
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, args.out.encode())
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    held = []  # (due, sequence, packet)
    sequence = 0
    delay = args.delay_ms / 1000.0
    end = time.monotonic() + args.max_seconds
    counts = {"sent": 0, "dropped": 0}
    print(f"netem: {args.dev} -> {args.out}, delay {args.delay_ms} ms, loss {args.loss}%", flush=True)
    while not stop and time.monotonic() < end:
        now = time.monotonic()
        wait = max(0.0, held[0][0] - now) if held else 0.05
        readable, _, _ = select.select([tun], [], [], min(wait, 0.05))
        if readable:
            packet = os.read(tun, 65535)
            if len(packet) >= 20 and packet[0] >> 4 == 4:
                if random.random() * 100.0 < args.loss:
                    counts["dropped"] += 1
                else:
                    heapq.heappush(held, (time.monotonic() + delay, sequence, packet))
                    sequence += 1
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, packet = heapq.heappop(held)
            destination = socket.inet_ntoa(packet[16:20])
            try:
                raw.sendto(packet, (destination, 0))
                counts["sent"] += 1
            except OSError as e:
                print(f"netem: sending to {destination}: {e}", file=sys.stderr, flush=True)
    print(f"netem: stopped, {counts['sent']} sent, {counts['dropped']} dropped", flush=True)


if __name__ == "__main__":
    main()
