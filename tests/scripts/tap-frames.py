#!/usr/bin/env python3
"""Acts as two guests at the Ethernet level: opens the TAPs FROM and TO
(run inside the VM network's namespace), sends frames from FROM with
FROM's MAC and IPv4 address, and prints the ethertypes that arrive at TO
as one JSON line: {"seen": ["0x806", ...]}.

Sent, in order: an IPv6 router advertisement to all nodes, a VLAN-tagged
IPv4 frame, an IPv6 packet with a spoofed source to TO's MAC, and last a
legitimate ARP request (the control: it must arrive).

usage: tap-frames.py FROM TO FROM_MAC FROM_IP TO_MAC
"""
import fcntl
import json
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def mac(s):
    return bytes.fromhex(s.replace(":", ""))


def ip4(s):
    return bytes(int(x) for x in s.split("."))


def ipv6_packet(src, dst, payload, next_header=58, hop_limit=255):
    return struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit) + src + dst + payload


def main():
    src_tap, dst_tap, src_mac, src_ip, dst_mac = sys.argv[1:6]
    a, b = tap(src_tap), tap(dst_tap)
    sm, dm = mac(src_mac), mac(dst_mac)
    bcast = b"\xff" * 6
    link_local = bytes.fromhex("fe80000000000000") + bytes.fromhex("02000000000000aa")
    all_nodes = bytes.fromhex("ff020000000000000000000000000001")
    # ICMPv6 router advertisement (type 134), checksum left 0: it is
    # dropped or bridged by ethertype, never parsed here.
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    frames = [
        b"\x33\x33\x00\x00\x00\x01" + sm + b"\x86\xdd" + ipv6_packet(link_local, all_nodes, ra),
        bcast + sm + b"\x81\x00" + b"\x00\x05" + b"\x08\x00"
        + struct.pack("!BBHHHBBH", 0x45, 0, 20, 0, 0, 64, 17, 0) + ip4("10.9.9.9") + ip4("255.255.255.255"),
        dm + sm + b"\x86\xdd" + ipv6_packet(bytes.fromhex("20010db8" + "00" * 11 + "01"), link_local, b"\x80\x00\x00\x00\x00\x01\x00\x01"),
        bcast + sm + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
        + sm + ip4(src_ip) + b"\x00" * 6 + ip4(src_ip),
    ]
    # What TO holds before we send is not ours.
    while select.select([b], [], [], 0)[0]:
        os.read(b, 65536)
    for f in frames:
        os.write(a, f)
    seen = []
    deadline = time.time() + 3
    while time.time() < deadline:
        r, _, _ = select.select([b], [], [], max(0.0, deadline - time.time()))
        if not r:
            break
        f = os.read(b, 65536)
        if f[6:12] != sm:
            continue
        seen.append(hex(struct.unpack("!H", f[12:14])[0]))
        if "0x806" in seen:
            # The control went last, so what was let through came before.
            break
    print(json.dumps({"seen": seen}))


main()
