"""TRex stateless (STL) profile: Baton's benchmark traffic from a TRex port.

Two mixes:

- ``udp``: the frame of Baton's live-frames generator (benches/src/distributor.rs,
  ``throughput``; ebpf/test-programs/src/bench.rs, ``generate``): IPv4 UDP 198.18.0.1 ->
  198.19.0.1, TTL 64, UDP 1024 -> 53, zero payload, 60 bytes without FCS. Flow f
  (0 <= f < flows) gets the source address 198.18.0.0 + (f mod 65536) and, above 65,536
  flows, the source port 1024 + f / 65536, as ``generate`` stamps them.
- ``realistic``: the mix of ``frame_mix`` (benches/src/distributor.rs): 60% IPv4 TCP, 20%
  IPv4 UDP, 15% IPv6 TCP, 5% 802.1Q-tagged IPv4 TCP, one flow per flow number i, its kind
  from i mod 20 as there. TCP frames are ACKs (seq i, ack 1, window 1000) to port 443, UDP
  goes to port 53, the source port is 1024 + (i mod 50000). Each kind's flows get
  consecutive flow numbers g (IPv4 TCP first, then IPv4 UDP, IPv6 TCP, tagged), and the
  field engine derives every field from g: IPv4 198.18.0.0 + (g mod 65536) ->
  198.19.0.0 + (g mod 65536), IPv6 2001:db8:18::g -> 2001:db8:19::g. ``frame_mix`` spreads
  destinations as i mod 61, i mod 251; the field engine has no modulo, and counters of
  their own would drift against the flow counter and multiply the flows, so the
  destination mirrors the source here.

Rates are relative (the stream weights add up to 100 pps): scale with ``-m``, e.g. in
trex-console ``start -f trex_baton.py -p 0 -m 10mpps -t flows=10000,mix=realistic``. TRex
hands the tunables to get_streams as an argparse list (``tunables``, newer releases) or as
keyword arguments (older ones); both are read.

Tunables: ``flows`` (default 10000), ``size`` (frame size without FCS, default and minimum
60; a kind whose headers need more, IPv6 TCP's 74, is never shorter than those),
``mix`` (``udp`` or ``realistic``), ``vlan`` (the tagged kind's VLAN id, default 10),
``dst_mac`` (default 02:ba:70:00:01:00, the virtual MAC of group 1's external side; ""
leaves the destination to the TRex port's configuration), ``csum`` (``hw``: IPv4 and L4
checksums fixed by the NIC's offload, the default; ``sw``: IPv4 header checksum only, UDP
checksum 0, TCP checksum left as in the template).

Only the ranges 198.18.0.0/15 and 2001:db8::/32 are used. The module imports without
TRex: ``describe()`` gives the streams as plain dicts (``python3 trex_baton.py --help``).
"""

from __future__ import division, print_function

import argparse
import json
import socket
import struct
import sys

try:
    from trex_stl_lib.api import *  # noqa: F401,F403 (TRex's profile convention)

    HAVE_TREX = True
except ImportError:
    try:
        from trex.stl.api import *  # noqa: F401,F403

        HAVE_TREX = True
    except ImportError:
        HAVE_TREX = False

# The generator's frame (benches/src/distributor.rs, `throughput`).
GEN_SRC = "198.18.0.1"
GEN_DST = "198.19.0.1"
GEN_SPORT = 1024
GEN_DPORT = 53
TTL = 64
# Group 1's virtual MAC on the external side: 02:ba:70:00:GROUP:SIDE.
VMAC = "02:ba:70:00:01:00"

MIN_SIZE = 60
MAX_SIZE = 9014
MAX_FLOWS = {"udp": 1 << 24, "realistic": 1000000}
MIXES = ("udp", "realistic")

# The kinds of `frame_mix`, by i mod 20, in its order: name, l3, l4, tagged, residues,
# header bytes (without padding).
KINDS = (
    ("tcp4", "ipv4", "tcp", False, range(0, 12), 14 + 20 + 20),
    ("udp4", "ipv4", "udp", False, range(12, 16), 14 + 20 + 8),
    ("tcp6", "ipv6", "tcp", False, range(16, 19), 14 + 40 + 20),
    ("vlan-tcp4", "ipv4", "tcp", True, range(19, 20), 14 + 4 + 20 + 20),
)
MIX_SPORT_BASE = 1024
MIX_SPORT_SPAN = 50000
MIX_DPORT = {"tcp": 443, "udp": 53}


def _v4(prefix, low16):
    return "%s.%d.%d" % (prefix, (low16 >> 8) & 0xFF, low16 & 0xFF)


def _v4_range(prefix, first, n):
    """The addresses prefix.0.0 + ((first + j) mod 65536) for j < n, as "lo-hi"."""
    lo = first & 0xFFFF
    if n >= 0x10000 or lo + n - 1 > 0xFFFF:
        return "%s-%s" % (_v4(prefix, 0), _v4(prefix, 0xFFFF))
    return "%s-%s" % (_v4(prefix, lo), _v4(prefix, lo + n - 1))


def _v6(net_word, low32):
    """2001:db8:NET::/64 with the low 32 bits set."""
    raw = struct.pack("!HHHHHHI", 0x2001, 0xDB8, net_word, 0, 0, 0, low32 & 0xFFFFFFFF)
    return socket.inet_ntop(socket.AF_INET6, raw)


def _v6_range(net_word, first, n):
    return "%s-%s" % (_v6(net_word, first), _v6(net_word, first + n - 1))


def _span(lo, hi):
    return str(lo) if lo == hi else "%d-%d" % (lo, hi)


def _check(flows, size, mix, vlan):
    if mix not in MIXES:
        raise ValueError("mix must be one of %s, got %r" % (", ".join(MIXES), mix))
    least = 20 if mix == "realistic" else 1
    if not least <= flows <= MAX_FLOWS[mix]:
        raise ValueError(
            "flows must be in %d..%d for mix %s, got %d" % (least, MAX_FLOWS[mix], mix, flows)
        )
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError("size (without FCS) must be in %d..%d, got %d" % (MIN_SIZE, MAX_SIZE, size))
    if not 1 <= vlan <= 4094:
        raise ValueError("vlan must be in 1..4094, got %d" % vlan)


def _kind_flows(flows, residues):
    """How many i < flows have i mod 20 in residues (as `frame_mix` assigns kinds)."""
    return sum(max(0, (flows - r + 19) // 20) for r in residues)


def describe(flows=10000, size=60, mix="udp", vlan=10, dst_mac=VMAC):
    """The profile's streams as plain dicts (JSON-ready); get_streams builds from these.

    Keys: name, mix, l3 ("ipv4"/"ipv6"), l4 ("tcp"/"udp"), vlan (id or None), src and dst
    (an address or "lo-hi"), sport and dport (a port or "lo-hi"), share (percent of the
    frames), size (bytes without FCS), flows, first_flow (the first flow number g), ttl,
    dst_mac.
    """
    flows, size, vlan = int(flows), int(size), int(vlan)
    _check(flows, size, mix, vlan)
    if mix == "udp":
        ports = (flows - 1) >> 16
        return [
            {
                "name": "udp",
                "mix": "udp",
                "l3": "ipv4",
                "l4": "udp",
                "vlan": None,
                "src": _v4_range("198.18", 0, flows),
                "dst": GEN_DST,
                "sport": _span(GEN_SPORT, GEN_SPORT + ports),
                "dport": str(GEN_DPORT),
                "share": 100.0,
                "size": size,
                "flows": flows,
                "first_flow": 0,
                "ttl": TTL,
                "dst_mac": dst_mac,
            }
        ]
    streams = []
    g = 0
    for name, l3, l4, tagged, residues, headers in KINDS:
        end = g + _kind_flows(flows, residues)
        blocks = 0
        # One stream per stretch of flows whose source ports do not wrap (mod 50000), so
        # the port is one addition away from the flow counter.
        while g < end:
            stop = min(end, (g // MIX_SPORT_SPAN + 1) * MIX_SPORT_SPAN)
            n = stop - g
            port = MIX_SPORT_BASE + g % MIX_SPORT_SPAN
            if l3 == "ipv4":
                src, dst = _v4_range("198.18", g, n), _v4_range("198.19", g, n)
            else:
                src, dst = _v6_range(0x18, g, n), _v6_range(0x19, g, n)
            streams.append(
                {
                    "name": name if blocks == 0 else "%s.%d" % (name, blocks),
                    "mix": "realistic",
                    "l3": l3,
                    "l4": l4,
                    "vlan": vlan if tagged else None,
                    "src": src,
                    "dst": dst,
                    "sport": _span(port, port + n - 1),
                    "dport": str(MIX_DPORT[l4]),
                    "share": 100.0 * n / flows,
                    "size": max(size, headers),
                    "flows": n,
                    "first_flow": g,
                    "ttl": TTL,
                    "dst_mac": dst_mac,
                }
            )
            blocks += 1
            g = stop
    return streams


def _first(rng):
    return rng.split("-")[0]


def _build(d, csum):
    """One STLStream from a describe() dict (needs TRex)."""
    n, g = d["flows"], d["first_flow"]
    l4 = d["l4"]
    eth = Ether(dst=d["dst_mac"]) if d["dst_mac"] else Ether()
    if d["vlan"] is not None:
        eth = eth / Dot1Q(vlan=d["vlan"])
    if d["l3"] == "ipv4":
        l3 = IP(src=_first(d["src"]), dst=_first(d["dst"]), ttl=d["ttl"])
        l3_name = "IP"
    else:
        l3 = IPv6(src=_first(d["src"]), dst=_first(d["dst"]), hlim=d["ttl"])
        l3_name = "IPv6"
    sport, dport = int(_first(d["sport"])), int(d["dport"])
    if l4 == "tcp":
        seg = TCP(sport=sport, dport=dport, flags="A", seq=g, ack=1, window=1000)
        l4_name, l4_type = "TCP", CTRexVmInsFixHwCs.L4_TYPE_TCP
    else:
        seg = UDP(sport=sport, dport=dport) if csum == "hw" else UDP(sport=sport, dport=dport, chksum=0)
        l4_name, l4_type = "UDP", CTRexVmInsFixHwCs.L4_TYPE_UDP
    pkt = eth / l3 / seg
    pkt = pkt / (b"\x00" * max(0, d["size"] - len(pkt)))

    vm = []
    if d["mix"] == "udp":
        # The generator's stamping: flow f -> source address low 16 bits = f mod 65536,
        # source port = 1024 + f / 65536 (above 65,536 flows).
        if n <= 0x10000:
            vm += [
                STLVmFlowVar(name="flow", min_value=0, max_value=n - 1, size=2, op="inc"),
                STLVmWrFlowVar(fv_name="flow", pkt_offset="IP.src", offset_fixup=2),
            ]
        else:
            vm += [
                STLVmFlowVar(name="flow", min_value=0, max_value=n - 1, size=4, op="inc"),
                STLVmWrMaskFlowVar(
                    fv_name="flow", pkt_offset="IP.src", offset_fixup=2, pkt_cast_size=2, mask=0xFFFF
                ),
                # (f + 1024 << 16) >> 16 = 1024 + f / 65536: TRex adds before it shifts.
                STLVmWrMaskFlowVar(
                    fv_name="flow",
                    pkt_offset="UDP.sport",
                    pkt_cast_size=2,
                    mask=0xFFFF,
                    shift=-16,
                    add_value=GEN_SPORT << 16,
                ),
            ]
    else:
        # Flow j of this stream is flow number g + j; every field follows from it.
        vm.append(STLVmFlowVar(name="j", min_value=0, max_value=n - 1, size=4, op="inc"))
        if d["l3"] == "ipv4":
            for field in ("IP.src", "IP.dst"):
                vm.append(
                    STLVmWrMaskFlowVar(
                        fv_name="j",
                        pkt_offset=field,
                        offset_fixup=2,
                        pkt_cast_size=2,
                        mask=0xFFFF,
                        add_value=g & 0xFFFF,
                    )
                )
        else:
            for field in ("IPv6.src", "IPv6.dst"):
                vm.append(STLVmWrFlowVar(fv_name="j", pkt_offset=field, offset_fixup=12, add_val=g))
        vm.append(
            STLVmWrMaskFlowVar(
                fv_name="j",
                pkt_offset=l4_name + ".sport",
                pkt_cast_size=2,
                mask=0xFFFF,
                add_value=sport,
            )
        )
        if l4 == "tcp":
            vm.append(STLVmWrFlowVar(fv_name="j", pkt_offset="TCP.seq", add_val=g))
    if csum == "hw":
        vm.append(STLVmFixChecksumHw(l3_offset=l3_name, l4_offset=l4_name, l4_type=l4_type))
    elif d["l3"] == "ipv4":
        vm.append(STLVmFixIpv4(offset="IP"))

    extra = {}
    if d["dst_mac"]:
        extra["mac_dst_override_mode"] = STLStreamDstMAC_PKT
    return STLStream(
        name=d["name"],
        packet=STLPktBuilder(pkt=pkt, vm=vm),
        mode=STLTXCont(pps=d["share"]),
        **extra
    )


def _parser():
    p = argparse.ArgumentParser(prog="trex_baton.py", description="Baton's benchmark traffic")
    p.add_argument("--flows", type=int, default=10000)
    p.add_argument("--size", type=int, default=60, help="frame size without FCS (min 60)")
    p.add_argument("--mix", choices=MIXES, default="udp")
    p.add_argument("--vlan", type=int, default=10)
    p.add_argument("--dst_mac", default=VMAC)
    p.add_argument("--csum", choices=("hw", "sw"), default="hw")
    return p


class BatonProfile(object):
    def get_streams(self, direction=0, **kwargs):
        """TRex calls this with the tunables of `-t flows=10000,mix=realistic` either as
        `tunables` (an argparse list, newer TRex) or as keyword arguments (older TRex)."""
        if not HAVE_TREX:
            raise RuntimeError("TRex's trex_stl_lib is not importable; describe() works without it")
        if "tunables" in kwargs:
            args = vars(_parser().parse_args(kwargs["tunables"]))
        else:
            args = vars(_parser().parse_args([]))
            for key in args:
                if key in kwargs:
                    args[key] = type(args[key])(kwargs[key])
        csum = args.pop("csum")
        if csum not in ("hw", "sw"):
            raise ValueError("csum must be hw or sw, got %r" % csum)
        return [_build(d, csum) for d in describe(**args)]


def register():
    return BatonProfile()


if __name__ == "__main__":
    a = vars(_parser().parse_args())
    a.pop("csum")
    try:
        print(json.dumps(describe(**a), indent=1))
    except ValueError as e:
        print("trex_baton.py: %s" % e, file=sys.stderr)
        sys.exit(2)
