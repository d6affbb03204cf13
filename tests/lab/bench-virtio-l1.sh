#!/bin/sh
# Virtio benchmark inside L1 (busybox sh), run as /lab/bench-l1.sh by `run.sh --bench-virtio`:
# the same raw image file (256 MiB in L1's tmpfs) and the same tap name for vmr and for QEMU
# microvm (virtio-blk-device + virtio-net-device, vhost off), alternating, LAB_BENCH_RUNS boots
# each (1 vCPU, 1 GiB). In each boot the guest (vmr.test=bench-virtio in tests/lab/guest/init)
# runs fio on /dev/vda (4k randread iodepth 32, 1 MiB sequential read and write at iodepth 4,
# libaio, direct=1, RUNTIME seconds each) and iperf3 to an iperf3 server in L1, both
# directions. The same fio jobs on the image file in L1 give the limit of this setup (buffered:
# L1's 6.1 tmpfs has no O_DIRECT). Prints medians and ratios as "LAB bench-virtio-..." lines.
. /lab/config
RUNS=${LAB_BENCH_RUNS:-3}
RUNTIME=5
MEM=1024M
KERNEL=/lab/l2/generic-vmlinux
INITRD=/lab/l2/bench-initramfs.cpio.gz
DISK=/tmp/bench/disk.raw
TAP=vtap0
CMDLINE="console=ttyS0 panic=-1 quiet $LAB_TIMING_ARGS vmr.test=bench-virtio vmr.runtime=$RUNTIME"
RUN_TIMEOUT=${LAB_BOOT_TIMEOUT:-180}
RUN_TIMEOUT=$((RUN_TIMEOUT + 240))
mkdir -p /tmp/bench

setup() {
    dd if=/dev/zero of="$DISK" bs=1M count=256 2>/dev/null
    if [ ! -c /dev/net/tun ]; then
        (cd /tmp/bench && zcat /lab/l2/initramfs.cpio.gz | cpio -id lib/modules/tun.ko 2>/dev/null)
        insmod /tmp/bench/lib/modules/tun.ko 2>/dev/null
    fi
    iperf3 -s -D > /dev/null 2>&1
    echo "LAB-BENCH setup tun=$([ -c /dev/net/tun ] && echo ok) fio=$(command -v fio) iperf3=$(pidof iperf3)"
}

# host_fio NAME RW BS IODEPTH -> "iops bw_kib" of the same job on the image file in L1.
host_fio() {
    fio --name="$1" --filename="$DISK" --rw="$2" --bs="$3" --iodepth="$4" --ioengine=libaio \
        --direct=0 --time_based --runtime="$RUNTIME" --ramp_time=1 --output-format=terse 2>&1 |
        awk -F';' -v w="$2" 'NF > 50 { if (w ~ /write/) print $49, $48; else print $8, $7 }'
}

host_run() { # N
    set -- $(host_fio randread randread 4k 32) x; r=$1
    set -- $(host_fio seqread read 1M 4) x x; sr=$(($2 / 1024))
    set -- $(host_fio seqwrite write 1M 4) x x; sw=$(($2 / 1024))
    echo "LAB-BENCH vmm=host run=$n randread_iops=$r seqread_mbs=$sr seqwrite_mbs=$sw"
}

start_vmm() { # vmm log -> pid in $pid
    if [ "$1" = qemu ]; then
        qemu-system-x86_64 -accel kvm -M microvm -cpu host -nodefaults -no-user-config \
            -display none -serial stdio -no-reboot -m "$MEM" -smp 1 -kernel "$KERNEL" \
            -initrd "$INITRD" -append "$CMDLINE reboot=t" \
            -drive id=d0,file="$DISK",format=raw,if=none -device virtio-blk-device,drive=d0 \
            -netdev tap,id=n0,ifname=$TAP,script=no,downscript=no,vhost=off \
            -device virtio-net-device,netdev=n0 < /dev/null > "$2" 2>&1 &
    else
        /lab/vmr run --kernel "$KERNEL" --initrd "$INITRD" --cpus 1 --memory "$MEM" --accel kvm \
            --cmdline "$CMDLINE reboot=k" --disk path="$DISK" --net tap=$TAP < /dev/null > "$2" 2>&1 &
    fi
    pid=$!
}

# one_run VMM N: prints "LAB-BENCH vmm=.. run=N randread_iops=.. seqread_mbs=.. ..."
one_run() {
    vmm=$1; n=$2; log=/tmp/bench/$vmm.$n.log
    start_vmm "$vmm" "$log"
    ( sleep "$RUN_TIMEOUT"; kill -9 "$pid" ) > /dev/null 2>&1 &
    dog=$!
    i=0; while [ ! -e /sys/class/net/$TAP ] && [ $i -lt 600 ] && kill -0 $pid 2>/dev/null; do
        sleep 0.1; i=$((i + 1)); done
    ip addr add 10.0.2.1/24 dev $TAP && ip link set $TAP up
    wait "$pid"; rc=$?
    kill "$dog" 2>/dev/null
    tr -d '\r' < "$log" > "$log.txt"
    v() { sed -n "s/^VMR-LAB bench $1 [a-z]*=\([0-9.]*\).*/\1/p" "$log.txt" | tail -1; }
    r=$(v fio-randread-4k-qd32); sr=$(v fio-seqread-1m); sw=$(v fio-seqwrite-1m)
    # Guest interrupts from virtio devices per 100 random reads (fio's ramp second included).
    irqs=$(sed -n 's/^VMR-LAB bench fio-randread.* irqs=\([0-9]*\).*/\1/p' "$log.txt" | tail -1)
    ipio=$(awk -v i="${irqs:-0}" -v r="${r:-0}" -v t="$RUNTIME" 'BEGIN { if (r > 0) printf "%d", 100 * i / (r * (t + 1)) }')
    g=$(v iperf3-guest-to-host); h=$(v iperf3-host-to-guest)
    if [ -z "$r" ] || [ -z "$h" ]; then
        echo "LAB-BENCH vmm=$vmm run=$n failed rc=$rc $(grep -v '^ *$' "$log.txt" | tail -n 3 | tr '\n' ' ')"
        return
    fi
    echo "LAB-BENCH vmm=$vmm run=$n randread_iops=$r seqread_mbs=$sr seqwrite_mbs=$sw g2h_mbits=${g%.*} h2g_mbits=${h%.*} irqs_per_100_reads=${ipio:-} rc=$rc"
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
field() { sed -n "s/.*vmm=$1 .* $2=\([0-9.]*\).*/\1/p" /tmp/bench/results | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

setup | tee -a /tmp/bench/results
vmms="qemu"
[ "$LAB_HAVE_VMR" = 1 ] && vmms="vmr qemu"
n=1
while [ "$n" -le "$RUNS" ]; do
    for v in $vmms; do one_run "$v" "$n" | tee -a /tmp/bench/results; done
    host_run | tee -a /tmp/bench/results
    n=$((n + 1))
done
for v in $vmms host; do
    ok=$(grep -c "vmm=$v .*randread_iops=" /tmp/bench/results)
    if [ "$ok" -lt "$RUNS" ]; then
        echo "LAB bench-virtio-$v FAIL only $ok of $RUNS runs gave figures"
        continue
    fi
    eval "r_$v=$(field "$v" randread_iops) sr_$v=$(field "$v" seqread_mbs) sw_$v=$(field "$v" seqwrite_mbs)"
    eval "g_$v=$(field "$v" g2h_mbits) h_$v=$(field "$v" h2g_mbits)"
    eval "echo \"LAB bench-virtio-$v PASS median of $RUNS: randread 4k qd32 \$r_$v IOPS, seqread 1M \$sr_$v MB/s, seqwrite 1M \$sw_$v MB/s, iperf3 guest->host \${g_$v:--} Mbit/s, host->guest \${h_$v:--} Mbit/s\""
done
for v in $vmms; do
    eval "r=\$r_$v sr=\$sr_$v sw=\$sw_$v"
    [ -n "$r" ] && [ -n "$r_host" ] &&
        echo "LAB bench-virtio-$v-vs-host PASS $v/host: randread $(ratio "$r" "$r_host")x, seqread $(ratio "$sr" "$sr_host")x, seqwrite $(ratio "$sw" "$sw_host")x"
done
if [ -n "$r_vmr" ] && [ -n "$r_qemu" ]; then
    echo "LAB bench-virtio-ratio PASS vmr/qemu: randread $(ratio "$r_vmr" "$r_qemu")x, seqread $(ratio "$sr_vmr" "$sr_qemu")x, seqwrite $(ratio "$sw_vmr" "$sw_qemu")x, iperf3 guest->host $(ratio "$g_vmr" "$g_qemu")x, host->guest $(ratio "$h_vmr" "$h_qemu")x"
fi
kill $(pidof iperf3) 2>/dev/null
