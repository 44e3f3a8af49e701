#!/bin/sh
# PID 1 of the chimney guest image (busybox ash). It reports on the serial console in lines that
# start with "CHIMNEY " so the host side can parse them among the kernel's messages:
#   CHIMNEY init uptime=<s>                          init started (boot time, from /proc/uptime)
#   CHIMNEY link eth0 up uptime=<s>                  eth0 exists, has its address and is up
#   CHIMNEY ping transmitted=<n> received=<n> uptime=<s>   result of the measured pings
#   CHIMNEY payload sha256=<hex> bytes=<n> uptime=<s>      hash of the data about to be sent
#   CHIMNEY sent rc=<nc exit status> uptime=<s>      the TCP transfer ended
#   CHIMNEY exec rc=<status> uptime=<s>             exec mode: the program's exit status
#   CHIMNEY error <reason>                           something failed (the run still powers off)
#   CHIMNEY done                                     last line before power-off
#
# Parameters come from the kernel command line (defaults in brackets):
#   chimney.mode=nic|shell|exec  [nic]  nic: the NIC test below; shell: eth0 up, then a console
#                            shell; exec: only uio modules, then run chimney.exec (see below)
#   chimney.addr=A/LEN       [192.0.2.2/24]  eth0's address
#   chimney.peer=A           [192.0.2.1]     the Linux peer behind the TAP
#   chimney.port=P           [5201]          the peer's TCP listener
#   chimney.bytes=N          [16777216]      bytes to send (from /dev/urandom, hashed first)
#   chimney.pings=N          [3]             measured pings after the link answers

export PATH=/bin:/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
mkdir -p /tmp /run
mount -t tmpfs tmpfs /tmp

uptime_s() { cut -d' ' -f1 /proc/uptime; }
say() { echo "CHIMNEY $*"; }

param() { # name default
    v=$(tr ' ' '\n' < /proc/cmdline | sed -n "s/^chimney\.$1=//p" | tail -n1)
    echo "${v:-$2}"
}

finish() {
    say "done"
    sync
    poweroff -f
    sleep 5
}

fail() {
    say "error $*"
    finish
}

say "init uptime=$(uptime_s)"

mode=$(param mode nic)
addr=$(param addr 192.0.2.2/24)
peer=$(param peer 192.0.2.1)
port=$(param port 5201)
bytes=$(param bytes 16777216)
pings=$(param pings 3)

# Modules in dependency order, written by images/build-image. The NIC modes load the virtio
# stack; exec mode loads only uio + uio_pci_generic, so no kernel driver claims the NIC and a
# userspace driver can bind it to uio_pci_generic (issue 7).
while read -r name path; do
    case "$mode:$name" in
        exec:uio|exec:uio_pci_generic) ;;
        exec:*|*:uio|*:uio_pci_generic) continue ;;
    esac
    insmod "$path" || fail "insmod $name failed"
done < /etc/modules.order

if [ "$mode" = exec ]; then
    # chimney.exec=/path runs a program added with `build-image --extra`; chimney.args=a,b,c
    # are its arguments (commas become spaces). Its exit status is reported, then power-off.
    prog=$(param exec "")
    if [ -z "$prog" ] || [ ! -x "$prog" ]; then fail "chimney.exec=$prog is not an executable in the image"; fi
    args=$(param args "" | tr ',' ' ')
    ip link set lo up
    # shellcheck disable=SC2086 # word splitting of the argument list is intended
    "$prog" $args
    say "exec rc=$? uptime=$(uptime_s)"
    finish
fi

# eth0 appears once virtio_net has probed the PCI function.
i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ "$i" -gt 100 ] && fail "eth0 did not appear (is the virtio-net-pci device there?)"
    sleep 0.1
done
ip link set lo up
ip addr add "$addr" dev eth0 || fail "ip addr add $addr"
ip link set eth0 up || fail "ip link set eth0 up"
say "link eth0 up uptime=$(uptime_s) mac=$(cat /sys/class/net/eth0/address)"

if [ "$mode" = shell ]; then
    say "shell (eth0 is $addr, the peer $peer; exit to power off)"
    setsid cttyhack sh
    finish
fi

# Wait until the peer answers (ARP + first echo), then measure.
i=0
until ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -gt 30 ] && { say "ping transmitted=0 received=0"; fail "peer $peer does not answer ping"; }
done
out=$(ping -c "$pings" -W 2 "$peer" 2>&1)
tx=$(echo "$out" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')
rx=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
say "ping transmitted=${tx:-0} received=${rx:-0} uptime=$(uptime_s)"

head -c "$bytes" /dev/urandom > /tmp/payload || fail "cannot create payload"
size=$(wc -c < /tmp/payload)
sum=$(sha256sum /tmp/payload | cut -d' ' -f1)
say "payload sha256=$sum bytes=$size uptime=$(uptime_s)"

# busybox nc half-closes after stdin's EOF and exits when the peer closes.
nc -w 10 "$peer" "$port" < /tmp/payload
say "sent rc=$? uptime=$(uptime_s)"
finish
