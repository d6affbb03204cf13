#!/usr/bin/env bash
# Rate-limiter accuracy: fio in a guest on vmr's software CPU (1 MiB sequential, O_DIRECT,
# libaio, iodepth 4, 2 s ramp, then --runtime s) on a raw disk given `bw=RATE`; one line per
# case with the rate fio measured against the limit. Guest: the lab's generic Debian vmlinux and
# its bench initramfs (fio), from tests/lab/prepare.sh, with an /init that runs only fio.
#
#   tests/bench-rate-limit.sh [--vmr target/release/vmr] [--runtime 20] RATE:read|write ...
#   e.g. tests/bench-rate-limit.sh 4M:read 16M:read 4M:write none:write
set -euo pipefail
VMR=target/release/vmr
RUNTIME=20
while [ $# -gt 0 ]; do
    case "$1" in
        --vmr) VMR=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || set -- 4M:read 16M:read 4M:write
LAB=${VMR_LAB_CACHE:-$HOME/.cache/vmr/lab}
KERNEL=$LAB/generic/vmlinux
BASE=$(ls -t "$LAB"/l2-bench-initramfs*.cpio.gz 2>/dev/null | head -1 || true)
if [ ! -f "$KERNEL" ] || [ -z "$BASE" ]; then
    echo "bench-rate-limit: needs the lab's kernel and bench initramfs: run tests/lab/prepare.sh" >&2
    exit 1
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/root"
cat > "$WORK/root/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m.ko" 2>/dev/null; done
i=0; while [ ! -e /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
runtime=20; rw=read
for arg in $(cat /proc/cmdline); do
    case "$arg" in vmr.runtime=*) runtime=${arg#vmr.runtime=} ;; vmr.rw=*) rw=${arg#vmr.rw=} ;; esac
done
out=$(fio --name=rl --filename=/dev/vda --rw=$rw --bs=1M --iodepth=4 --ioengine=libaio --direct=1 \
    --time_based --runtime=$runtime --ramp_time=2 --output-format=terse 2>&1)
# fio 3 terse: read bandwidth (KiB/s) is field 7, write bandwidth field 48.
echo "RLBENCH $(echo "$out" | awk -F';' -v w=$rw 'NF > 50 { if (w ~ /write/) print $48; else print $7 }')"
poweroff -f
INIT
chmod +x "$WORK/root/init"
(cd "$WORK/root" && echo init | cpio -o -H newc 2>/dev/null | gzip) > "$WORK/init.cpio.gz"
cat "$BASE" "$WORK/init.cpio.gz" > "$WORK/initrd.cpio.gz"
truncate -s 1G "$WORK/disk.raw"
for case in "$@"; do
    rate=${case%%:*}; rw=${case#*:}
    limit=""; [ "$rate" = none ] || limit=",bw=$rate"
    log="$WORK/run.log"
    timeout 600 "$VMR" run --accel emu --memory 512M --kernel "$KERNEL" --initrd "$WORK/initrd.cpio.gz" \
        --cmdline "console=ttyS0 reboot=k panic=-1 quiet vmr.runtime=$RUNTIME vmr.rw=$rw" \
        --disk "path=$WORK/disk.raw$limit" </dev/null >"$log" 2>&1 || true
    kib=$(sed -n 's/.*RLBENCH \([0-9]*\).*/\1/p' "$log" | tail -1)
    if [ -z "$kib" ]; then
        echo "$case: no result"; tail -5 "$log"; continue
    fi
    if [ "$rate" = none ]; then
        echo "$case: ${kib} KiB/s (no limit)"
    else
        num=${rate%[KMG]}; unit=${rate#$num}
        case "$unit" in K) lim=$num ;; M) lim=$((num * 1024)) ;; G) lim=$((num * 1024 * 1024)) ;; *) lim=$((num / 1024)) ;; esac
        echo "$case: ${kib} KiB/s of ${lim} KiB/s = $(awk -v a="$kib" -v b="$lim" 'BEGIN { printf "%.1f%%", 100 * a / b }')"
    fi
done
