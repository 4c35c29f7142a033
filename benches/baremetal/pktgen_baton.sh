#!/usr/bin/env bash
# pktgen_baton.sh: the traffic of Baton's live-frames generator (benches/src/distributor.rs,
# `throughput`; ebpf/test-programs/src/bench.rs, `generate`) sent by Linux pktgen from a real NIC.
#
# The frame: IPv4 UDP 198.18.0.0/16 -> 198.19.0.1, UDP 1024 -> 53, SIZE bytes without FCS
# (60 by default, the generator's). Flow f (0 <= f < FLOWS) has source address
# 198.18.0.0 + (f mod 65536) and source port 1024 + f / 65536, as `generate` stamps them.
# The addresses are fixed, inside the benchmark range 198.18.0.0/15: nothing else is sent.
#
# Where pktgen differs from `generate` (none of it enters Baton's flow hash): TTL 32
# instead of 64 (pktgen's own), UDP checksum 0 (none), an IP id counting up, and the first
# 16 payload bytes are pktgen's header (magic, sequence) instead of zeros.
#
# Threads: thread k (on CPU FIRST_CPU + k) sends the flows [FLOWS*k/T, FLOWS*(k+1)/T), so
# the threads never send the same flow and together send every flow. Each stretch of one
# source port is its own pktgen device (IFACE@N), walking its addresses in order; COUNT
# and RATE are split between the devices in proportion to their flows.
set -euo pipefail

readonly PG=/proc/net/pktgen
readonly MAX_FLOWS=16777216 # 256 source ports of 65,536 addresses
readonly MAX_COUNT=9999999999 # pktgen reads at most 10 digits
readonly MAX_RATE=1000000000
readonly ME=${0##*/}

usage() {
    cat <<EOF
usage: $ME -i IFACE -d DST_MAC [-t THREADS] [-c FIRST_CPU] [-f FLOWS] [-s SIZE]
       [-n COUNT] [-r RATE_PPS] [--dry-run]

Sends Baton's generator traffic (IPv4 UDP 198.18.x.y -> 198.19.0.1, 1024 -> 53) with pktgen.

  -i IFACE      interface to send from (required)
  -d DST_MAC    destination MAC: the group's virtual MAC of the uplink's side,
                02:ba:70:00:GG:SS (group GG, side 00 external / 01 internal) (required)
  -t THREADS    pktgen threads, one per CPU, FIRST_CPU.. (default 1)
  -c FIRST_CPU  CPU of the first thread (default 0)
  -f FLOWS      flows, 1..$MAX_FLOWS (default 10000)
  -s SIZE       frame size without FCS, 60..9014 (default 60)
  -n COUNT      frames in all, 1..$MAX_COUNT (default 10000000; 0, pktgen's
                "forever", is refused)
  -r RATE_PPS   total rate in frames per second (default: as fast as possible)
  --dry-run     print the pktgen commands instead of writing them (no root, no module)
  -h, --help    this text
EOF
}

usage_error() {
    echo "$ME: $*" >&2
    echo "run '$ME --help' for usage" >&2
    exit 2
}

fail() {
    echo "$ME: $*" >&2
    exit 1
}

# A decimal integer in [lo, hi] (at most 12 digits, so bash arithmetic cannot overflow).
number() {
    local name=$1 value=$2 lo=$3 hi=$4
    [[ $value =~ ^[0-9]{1,12}$ ]] || usage_error "$name must be a number (at most 12 digits), got '$value'"
    value=$((10#$value))
    ((value >= lo && value <= hi)) || usage_error "$name must be in $lo..$hi, got $value"
    echo "$value"
}

IFACE=""
DST_MAC=""
THREADS=1
FIRST_CPU=0
FLOWS=10000
SIZE=60
COUNT=10000000
RATE=""
DRY_RUN=0

while (($# > 0)); do
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    --dry-run)
        DRY_RUN=1
        shift
        continue
        ;;
    -i | -d | -t | -c | -f | -s | -n | -r)
        (($# >= 2)) || usage_error "option $1 needs a value"
        ;;
    *) usage_error "unknown argument '$1'" ;;
    esac
    case $1 in
    -i) IFACE=$2 ;;
    -d) DST_MAC=$2 ;;
    -t) THREADS=$(number "THREADS (-t)" "$2" 1 1024) ;;
    -c) FIRST_CPU=$(number "FIRST_CPU (-c)" "$2" 0 8191) ;;
    -f) FLOWS=$(number "FLOWS (-f)" "$2" 1 "$MAX_FLOWS") ;;
    -s) SIZE=$(number "SIZE (-s)" "$2" 60 9014) ;;
    -n)
        [[ $2 =~ ^0+$ ]] && usage_error "COUNT (-n) 0 means 'send forever' to pktgen; give a bound"
        COUNT=$(number "COUNT (-n)" "$2" 1 "$MAX_COUNT")
        ;;
    -r) RATE=$(number "RATE_PPS (-r)" "$2" 1 "$MAX_RATE") ;;
    esac
    shift 2
done

[[ -n $IFACE ]] || usage_error "missing -i IFACE"
[[ -n $DST_MAC ]] || usage_error "missing -d DST_MAC"
# An interface name as the kernel allows it, without the '@' pktgen uses for its devices.
[[ $IFACE =~ ^[A-Za-z0-9_.:-]{1,15}$ ]] || usage_error "bad interface name '$IFACE'"
[[ $DST_MAC =~ ^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$ ]] ||
    usage_error "DST_MAC must look like 02:ba:70:00:01:00, got '$DST_MAC'"
(((0x${DST_MAC:0:2} & 1) == 0)) || usage_error "DST_MAC $DST_MAC is a group (multicast) address"
((THREADS <= FLOWS)) || usage_error "more threads ($THREADS) than flows ($FLOWS)"

# The addresses and ports are fixed: 198.18.0.0/16 -> 198.19.0.1 lies in 198.18.0.0/15.
readonly SRC_NET=198.18 DST_IP=198.19.0.1 SPORT_BASE=1024 DPORT=53

# Devices: one per (thread, source port) stretch of flows.
DEV_NAME=() DEV_CPU=() DEV_LO=() DEV_HI=()
for ((k = 0; k < THREADS; k++)); do
    lo=$((FLOWS * k / THREADS))
    hi=$((FLOWS * (k + 1) / THREADS))
    while ((lo < hi)); do
        end=$(((lo / 65536 + 1) * 65536))
        ((end > hi)) && end=$hi
        DEV_NAME+=("$IFACE@${#DEV_NAME[@]}")
        DEV_CPU+=($((FIRST_CPU + k)))
        DEV_LO+=("$lo")
        DEV_HI+=("$end")
        lo=$end
    done
done
NDEV=${#DEV_NAME[@]}
# Each device's share of COUNT (and RATE) in proportion to its flows; the shares add up.
share() { echo $(($1 * DEV_HI[$2] / FLOWS - $1 * DEV_LO[$2] / FLOWS)); }
for ((d = 0; d < NDEV; d++)); do
    (($(share "$COUNT" "$d") >= 1)) ||
        usage_error "COUNT $COUNT is too small for $NDEV pktgen devices (each sends at least 1)"
    if [[ -n $RATE ]]; then
        (($(share "$RATE" "$d") >= 1)) ||
            usage_error "RATE_PPS $RATE is too low for $NDEV pktgen devices (each at least 1 pps)"
    fi
done

addr() { echo "$SRC_NET.$((($1 >> 8) & 255)).$(($1 & 255))"; }

if ((DRY_RUN == 0)); then
    [[ -d $PG ]] || fail "the pktgen module is not loaded (modprobe pktgen), or use --dry-run"
    [[ -w $PG/pgctrl ]] || fail "cannot write $PG/pgctrl: run as root"
    [[ -d /sys/class/net/$IFACE ]] || fail "no interface $IFACE"
    mtu=$(cat "/sys/class/net/$IFACE/mtu")
    ((SIZE - 14 <= mtu)) || fail "SIZE $SIZE needs an MTU of $((SIZE - 14)); $IFACE has $mtu"
    for ((k = 0; k < THREADS; k++)); do
        [[ -e $PG/kpktgend_$((FIRST_CPU + k)) ]] ||
            fail "no pktgen thread for CPU $((FIRST_CPU + k)) ($PG/kpktgend_$((FIRST_CPU + k)))"
    done
fi

# Writes one pktgen command, or prints it with --dry-run. pktgen reports each command's
# outcome on the "Result:" line of the file written to (pgctrl has none).
pg() {
    local file=$PG/$1 cmd=$2
    if ((DRY_RUN)); then
        printf 'echo "%s" > %s\n' "$cmd" "$file"
        return
    fi
    if ! printf '%s\n' "$cmd" >"$file"; then
        fail "pktgen refused '$cmd' ($file)"
    fi
    if [[ $1 != pgctrl ]] && ! grep -q "^Result: OK" "$file"; then
        fail "pktgen refused '$cmd': $(grep "^Result:" "$file" || echo "no result")"
    fi
}

# An interrupted run stops every thread and still prints what was sent.
stop_all() {
    ((DRY_RUN)) || printf 'stop\n' >"$PG/pgctrl" || true
}
trap 'stop_all; echo "$ME: interrupted" >&2' INT TERM

((DRY_RUN)) && echo "# dry run: the pktgen commands, nothing is written"
echo "# $FLOWS flows over $NDEV pktgen device(s) on $THREADS thread(s), $COUNT frames of" \
    "$SIZE bytes (+4 FCS on the wire)${RATE:+ at $RATE pps}, to $DST_MAC"
pg pgctrl reset
for ((k = 0; k < THREADS; k++)); do
    pg "kpktgend_$((FIRST_CPU + k))" rem_device_all
done
for ((d = 0; d < NDEV; d++)); do
    dev=${DEV_NAME[d]}
    lo=${DEV_LO[d]}
    hi=${DEV_HI[d]}
    port=$((SPORT_BASE + lo / 65536))
    pg "kpktgend_${DEV_CPU[d]}" "add_device $dev"
    pg "$dev" "count $(share "$COUNT" "$d")"
    # A fresh skb per frame (clone_skb 0), so every frame gets the next flow's headers.
    pg "$dev" "clone_skb 0"
    # pktgen's pkt_size is the frame as handed to the driver, FCS excluded: the kernel
    # builds Ethernet 14 + IPv4 20 + UDP 8 + (pkt_size - 42) payload bytes
    # (net/core/pktgen.c, fill_packet_ipv4), and the NIC appends the 4-byte FCS. So
    # pkt_size = SIZE gives the generator's 60-byte frame (64 on the wire); SIZE + 4
    # would send 64-byte frames (68 on the wire). The "Result:" line shows "60byte".
    pg "$dev" "pkt_size $SIZE"
    pg "$dev" "dst_mac $DST_MAC"
    pg "$dev" "dst $DST_IP"
    # Addresses walk src_min..src_max in order, both inclusive.
    pg "$dev" "src_min $(addr $((lo & 65535)))"
    pg "$dev" "src_max $(addr $(((hi - 1) & 65535)))"
    # The port is fixed per device (min = max; pktgen's default would be 9). Above
    # 65,536 flows the devices carry ports 1024, 1025, ...
    pg "$dev" "udp_src_min $port"
    pg "$dev" "udp_src_max $port"
    pg "$dev" "udp_dst_min $DPORT"
    pg "$dev" "udp_dst_max $DPORT"
    # Each thread sends on the TX queue of its own CPU, so threads share no queue lock.
    pg "$dev" "flag QUEUE_MAP_CPU"
    pg "$dev" "flag NO_TIMESTAMP"
    if [[ -n $RATE ]]; then
        pg "$dev" "ratep $(share "$RATE" "$d")"
    else
        pg "$dev" "delay 0"
    fi
done
# Blocks until every device has sent its count (or Ctrl-C).
pg pgctrl start

((DRY_RUN)) && exit 0

echo "# results (pktgen's own count of what it handed the driver)"
total=0
for ((d = 0; d < NDEV; d++)); do
    echo "$PG/${DEV_NAME[d]}:"
    grep -A1 "^Result:" "$PG/${DEV_NAME[d]}" || true
    pps=$(grep -A1 "^Result:" "$PG/${DEV_NAME[d]}" | grep -o '[0-9]*pps' | head -n1 || true)
    pps=${pps%pps}
    total=$((total + ${pps:-0}))
done
echo "# total: $total pps (sum over the devices)"
