#!/bin/sh
# Benchmark inside L1 (busybox sh): boot the same kernel + initramfs with each VMM
# LAB_BENCH_RUNS times (1 vCPU, 256 MiB); per run, the wall time from spawning the VMM to the
# guest's init marker (read from its serial output as it arrives, /proc/uptime resolution
# 10 ms) and the VMM's peak RSS minus the guest memory it touched:
#   overhead = VmHWM - sum(Rss of the mappings of at least 3/4 of guest RAM), sampled right
#   after the marker (guest RSS only grows, so this bounds the peak non-guest RSS).
. /lab/config
RUNS=${LAB_BENCH_RUNS:-5}
MEM_MB=256
KERNEL=/lab/l2/generic-vmlinux
INITRD=/lab/l2/initramfs.cpio.gz
CMDLINE="console=ttyS0 reboot=k panic=-1 quiet $LAB_TIMING_ARGS vmr.test=bench VMR_LAB_HOLD=2"
RUN_TIMEOUT=${LAB_BOOT_TIMEOUT:-180}
mkdir -p /tmp/bench

now_ms() { read -r up _ < /proc/uptime; echo $(( ${up%.*} * 1000 + 1${up#*.} * 10 - 1000 )); }

# guest_rss_kb PID: Rss of the guest-RAM-sized mappings.
guest_rss_kb() {
    awk -v min=$((MEM_MB * 1024 * 3 / 4)) '
        /^[0-9a-f]+-[0-9a-f]+ / { big = 0 }
        /^Size:/ { big = ($2 >= min) }
        /^Rss:/ && big { s += $2 }
        END { print s + 0 }' "/proc/$1/smaps"
}

vmm_cmd() { # vmm -> the VMM command line without the kernel command line
    case "$1" in
        qemu) echo "qemu-system-x86_64 -accel kvm -M microvm -cpu host -nodefaults -no-user-config -display none -serial stdio -no-reboot -m ${MEM_MB}M -smp 1 -kernel $KERNEL -initrd $INITRD" ;;
        vmr) echo "/lab/vmr run --kernel $KERNEL --initrd $INITRD --cpus 1 --memory ${MEM_MB}M --accel kvm" ;;
    esac
}

# one_run VMM N: prints "LAB-BENCH vmm=.. run=N init_ms=.. hwm_kb=.. guest_kb=.. overhead_kb=.."
one_run() {
    vmm=$1; n=$2; log=/tmp/bench/$vmm.$n.log; fifo=/tmp/bench/fifo
    rm -f "$fifo"; mkfifo "$fifo"
    t0=$(now_ms)
    if [ "$vmm" = qemu ]; then
        $(vmm_cmd qemu) -append "$CMDLINE" < /dev/null > "$fifo" 2>&1 &
    else
        $(vmm_cmd vmr) --cmdline "$CMDLINE" < /dev/null > "$fifo" 2>&1 &
    fi
    pid=$!
    # The watchdog must not hold our stdout (a pipe to tee) open while it sleeps.
    ( sleep "$RUN_TIMEOUT"; kill -9 "$pid" ) > /dev/null 2>&1 &
    dog=$!
    init_ms=""; hwm=""; gkb=""
    while IFS= read -r line; do
        echo "$line" >> "$log"
        case "$line" in
            *"VMR-LAB init"*)
                init_ms=$(( $(now_ms) - t0 ))
                hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
                gkb=$(guest_rss_kb "$pid") ;;
        esac
    done < "$fifo"
    wait "$pid"; rc=$?
    kill "$dog" 2>/dev/null
    if [ -z "$init_ms" ]; then
        echo "LAB-BENCH vmm=$vmm run=$n failed rc=$rc $(tail -n 2 "$log" | tr '\n' ' ')"
        return
    fi
    uptime=$(sed -n 's/.*VMR-LAB init uptime=\([0-9.]*\).*/\1/p' "$log" | tr -d '\r')
    echo "LAB-BENCH vmm=$vmm run=$n init_ms=$init_ms guest_uptime=$uptime hwm_kb=$hwm guest_kb=$gkb overhead_kb=$((hwm - gkb)) rc=$rc"
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
field() { sed -n "s/.*vmm=$1 .* $2=\([0-9.]*\).*/\1/p" /tmp/bench/results; }

vmms="qemu"
[ "$LAB_HAVE_VMR" = 1 ] && vmms="vmr qemu"
: > /tmp/bench/results
i=1
while [ "$i" -le "$RUNS" ]; do
    for v in $vmms; do one_run "$v" "$i" | tee -a /tmp/bench/results; done
    i=$((i + 1))
done
for v in $vmms; do
    ok=$(grep -c "vmm=$v .*init_ms=" /tmp/bench/results)
    if [ "$ok" -lt "$RUNS" ]; then
        echo "LAB bench-$v FAIL only $ok of $RUNS runs reached the init marker"
        continue
    fi
    eval "init_$v=$(field "$v" init_ms | median)"
    eval "over_$v=$(field "$v" overhead_kb | median)"
    eval "up_$v=$(field "$v" guest_uptime | median)"
    eval "echo \"LAB bench-$v PASS median of $RUNS: start to init \$init_$v ms (guest uptime \$up_$v s), RSS outside guest RAM \$((over_$v / 1024)) MiB\""
done
if [ -n "$init_vmr" ] && [ -n "$init_qemu" ]; then
    echo "LAB bench-ratio PASS vmr/qemu: start to init $(awk -v a="$init_vmr" -v b="$init_qemu" 'BEGIN { printf "%.2f", a / b }')x, RSS outside guest RAM $(awk -v a="$over_vmr" -v b="$over_qemu" 'BEGIN { printf "%.2f", a / b }')x"
fi
