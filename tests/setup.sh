#!/usr/bin/env bash
# Installs the Debian packages the tests need (idempotent; needs root when something is missing).
# QEMU (the lab's L1 machine and the benchmark peer), busybox (guest userland), cpio/xz/lz4
# (image assembly), e2fsprogs (disk images), dnsmasq and nftables (vmrd's networks), and clang's
# runtime for the fuzzers.
set -euo pipefail
need=()
for t in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils busybox:busybox-static cpio:cpio \
         xz:xz-utils lz4:lz4 mkfs.ext4:e2fsprogs debugfs:e2fsprogs tmux:tmux socat:socat fio:fio \
         iperf3:iperf3 dnsmasq:dnsmasq-base nft:nftables; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
[ -x /bin/busybox ] || need+=(busybox-static)
# gcc with a static glibc: tests/emu_isa_v2.rs builds a static x86-64-v2 guest program.
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "tests/setup.sh: missing packages: ${need[*]}; run as root or install them" >&2
    exit 1
fi
echo "tests/setup.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# qemu-system-x86 and qemu-utils must come from the same QEMU release: some machines carry a
# newer backported qemu-utils that the distribution's qemu-system-x86 conflicts with, so both
# (and qemu-block-extra, which follows qemu-utils) are pinned to qemu-system-x86's candidate.
v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
pins=(qemu-system-x86="$v" qemu-utils="$v")
dpkg -s qemu-block-extra >/dev/null 2>&1 && pins+=(qemu-block-extra="$v")
apt-get install -y -qq --allow-downgrades "${pins[@]}" busybox-static cpio xz-utils lz4 e2fsprogs tmux \
    socat fio iperf3 gcc libc6-dev dnsmasq-base nftables >/dev/null
