#!/bin/sh
# Benchmark inside L1 (busybox sh): boot the same kernel + initramfs with each VMM
# LAB_BENCH_RUNS times (1 vCPU, 256 MiB); per run, the wall time from spawning the VMM to the
# guest's init marker (read from its serial output as it arrives, /proc/uptime resolution
# 10 ms) and the VMM's peak RSS minus the guest memory it touched:
#   overhead = VmHWM - sum(Rss of the mappings of at least 3/4 of guest RAM), sampled right
#   after the marker (guest RSS only grows, so this bounds the peak non-guest RSS).
# vmr runs with VMR_STATS=1: its exits by kind and busiest ports, one line per boot.
# Before the timed runs, one profile boot per VMM (initcall_debug log_buf_len=1M vmr.profile=1: the L2 init
# prints the kernel log): gaps of over 100 ms between kernel log lines and initcalls of over
# 50 ms. The words vmr adds to the kernel command line (read back from the guest's
# /proc/cmdline) are also given to QEMU as "qemu-hints", so both VMMs boot with the same hints.
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

# smaps_top PID VMM: the mappings outside guest RAM with over 64 KiB resident, largest first
# ("LAB-SMAPS vmm=.. rss_kb=.. size_kb=.. name"), to see where the overhead lives.
smaps_top() {
    awk -v min=$((MEM_MB * 768)) -v vmm="$2" '
        /^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "" ? "[anon]" : $6); range = $1 }
        /^Size:/ { size = $2 }
        /^Rss:/ { rss = $2 }
        /^AnonHugePages:/ && size < min && rss > 64 {
            printf "LAB-SMAPS vmm=%s rss_kb=%d size_kb=%d thp_kb=%d %s %s\n", vmm, rss, size, $2, name, range }
    ' "/proc/$1/smaps" | sort -t= -k3 -rn | head -n 12 > /tmp/bench/smaps.$2
    cat /tmp/bench/smaps.$2 >&2
}

vmm_cmd() { # vmm -> the VMM command line without the kernel command line
    case "$1" in
        qemu) echo "qemu-system-x86_64 -accel kvm -M microvm -cpu host -nodefaults -no-user-config -display none -serial stdio -no-reboot -m ${MEM_MB}M -smp 1 -kernel $KERNEL -initrd $INITRD" ;;
        vmr) echo "/lab/vmr run --kernel $KERNEL --initrd $INITRD --cpus 1 --memory ${MEM_MB}M --accel kvm" ;;
        vmr-api) rm -f /tmp/bench/api.sock
            echo "$(vmm_cmd vmr) --api-sock /tmp/bench/api.sock" ;;
    esac
}

# cmdline_of VMM: the kernel command line for VMM (qemu-hints: with vmr's additions).
cmdline_of() {
    if [ "$1" = qemu-hints ]; then echo "$CMDLINE$HINTS"; else echo "$CMDLINE"; fi
}

# one_run VMM N [EXTRA]: prints "LAB-BENCH vmm=.. run=N init_ms=.. hwm_kb=.. guest_kb=.. overhead_kb=.."
one_run() {
    vmm=$1; n=$2; log=/tmp/bench/$vmm.$n.log; fifo=/tmp/bench/fifo
    rm -f "$fifo" "$log"; mkfifo "$fifo"
    cmdline="$(cmdline_of "$vmm")${3:+ $3}"
    t0=$(now_ms)
    if [ "$vmm" != "${vmm#vmr}" ]; then
        VMR_STATS=1 $(vmm_cmd "$vmm") --cmdline "$cmdline" < /dev/null > "$fifo" 2>&1 &
    else
        $(vmm_cmd qemu) -append "$cmdline" < /dev/null > "$fifo" 2>&1 &
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
                gkb=$(guest_rss_kb "$pid")
                [ "$vmm" != "${vmm#vmr}" ] && smaps_top "$pid" "$vmm" ;;
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
    grep -a '^vmr: stats' "$log" | tr -d '\r' | sed "s/^vmr: stats/LAB-STATS vmm=$vmm run=$n/"
}

# profile VMM: one boot with initcall_debug whose init prints the kernel log; prints the gaps
# of over 100 ms between log lines (with the lines either side), initcalls of over 50 ms, and
# when the kernel started /init.
profile() {
    one_run "$1" profile "initcall_debug log_buf_len=1M vmr.profile=1" | sed 's/^LAB-BENCH/LAB-PROFILE-RUN/'
    # The whole log goes to the L1 serial log only (run.sh shows lines starting with LAB).
    sed -n "s/^VMR-LAB dmesg /DMESG-$1 /p" "/tmp/bench/$1.profile.log"
    tr -d '\r' < "/tmp/bench/$1.profile.log" | awk -v vmm="$1" '
        /^VMR-LAB dmesg \[/ {
            rest = $0; sub(/^VMR-LAB dmesg \[ */, "", rest)
            t = rest; sub(/\].*/, "", t); t += 0
            text = rest; sub(/^[^]]*\] */, "", text)
            if (n && t - prev > 0.1)
                printf "LAB-PROFILE vmm=%s gap_ms=%d at=%.3f after=\"%s\" next=\"%s\"\n", vmm,
                    (t - prev) * 1000, prev, substr(ptext, 1, 72), substr(text, 1, 72)
            if (text ~ /^initcall .* returned .* after [0-9]+ usecs/) {
                us = text; sub(/.* after /, "", us); sub(/ usecs.*/, "", us)
                name = text; sub(/^initcall /, "", name); sub(/ returned.*/, "", name)
                if (us + 0 >= 50000) printf "LAB-PROFILE vmm=%s initcall_ms=%d %s\n", vmm, us / 1000, name
            }
            if (text ~ /^Run \/init/) init = t
            prev = t; ptext = text; n++
        }
        END { printf "LAB-PROFILE vmm=%s dmesg_lines=%d run_init_at=%s\n", vmm, n, init }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
field() { sed -n "s/.*vmm=$1 .* $2=\([0-9.]*\).*/\1/p" /tmp/bench/results; }

vmms="qemu"
[ "$LAB_HAVE_VMR" = 1 ] && vmms="vmr qemu"
: > /tmp/bench/results
HINTS=""
for v in $vmms; do profile "$v"; done
if [ "$LAB_HAVE_VMR" = 1 ]; then
    for w in $(sed -n 's/^VMR-LAB cmdline //p' /tmp/bench/vmr.profile.log | tr -d '\r'); do
        case " $CMDLINE initcall_debug log_buf_len=1M vmr.profile=1 " in *" $w "*) ;; *) HINTS="$HINTS $w" ;; esac
    done
    echo "LAB-BENCH vmr adds to the kernel command line:${HINTS:- nothing}"
    if [ -n "$HINTS" ]; then vmms="$vmms qemu-hints"; profile qemu-hints; fi
fi
# vmr-api: vmr serving its API socket as well (the overhead target holds with the API thread).
[ "$LAB_HAVE_VMR" = 1 ] && vmms="vmr vmr-api ${vmms#vmr }"
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
    k=$(echo "$v" | tr - _)
    eval "init_$k=$(field "$v" init_ms | median)"
    eval "over_$k=$(field "$v" overhead_kb | median)"
    eval "up_$k=$(field "$v" guest_uptime | median)"
    eval "echo \"LAB bench-$v PASS median of $RUNS: start to init \$init_$k ms (guest uptime \$up_$k s), RSS outside guest RAM \$((over_$k / 1024)) MiB\""
done
if [ -n "$init_vmr" ] && [ -n "$init_qemu" ]; then
    echo "LAB bench-ratio PASS vmr/qemu: start to init $(awk -v a="$init_vmr" -v b="$init_qemu" 'BEGIN { printf "%.2f", a / b }')x, RSS outside guest RAM $(awk -v a="$over_vmr" -v b="$over_qemu" 'BEGIN { printf "%.2f", a / b }')x"
fi
if [ -n "$init_vmr" ] && [ -n "$init_qemu_hints" ]; then
    echo "LAB bench-ratio PASS vmr/qemu-hints: start to init $(awk -v a="$init_vmr" -v b="$init_qemu_hints" 'BEGIN { printf "%.2f", a / b }')x, guest uptime at init $(awk -v a="$up_vmr" -v b="$up_qemu_hints" 'BEGIN { printf "%.2f", a / b }')x"
fi

# Idle cost: IDLE_GUESTS guests of each VMM at once, each holding (its init sleeps), vmr with its
# API socket served; once all hold and 5 s passed, each VMM process's CPU time (utime+stime, all
# threads) over 20 s as a share of one CPU.
IDLE_GUESTS=${LAB_IDLE_GUESTS:-4}
idle_bench() {
    vmm=$1; pids=""; k=1
    while [ "$k" -le "$IDLE_GUESTS" ]; do
        log=/tmp/bench/idle.$vmm.$k.log
        if [ "$vmm" = vmr ]; then
            rm -f /tmp/bench/idle.$k.sock
            /lab/vmr run --kernel $KERNEL --initrd $INITRD --memory 128M --accel kvm \
                --api-sock /tmp/bench/idle.$k.sock --cmdline "$CMDLINE vmr.test=hold" < /dev/null > "$log" 2>&1 &
        else
            qemu-system-x86_64 -accel kvm -M microvm -cpu host -nodefaults -no-user-config -display none \
                -serial stdio -no-reboot -m 128M -kernel $KERNEL -initrd $INITRD \
                -append "$CMDLINE vmr.test=hold" < /dev/null > "$log" 2>&1 &
        fi
        pids="$pids $!"; k=$((k + 1))
    done
    t=0
    while [ "$(grep -l 'VMR-LAB holding' /tmp/bench/idle.$vmm.*.log 2>/dev/null | wc -l)" -lt "$IDLE_GUESTS" ] && [ $t -lt 300 ]; do
        sleep 1; t=$((t + 1)); done
    sleep 5
    for p in $pids; do awk '{ print $14 + $15 }' /proc/$p/stat > /tmp/bench/idle.$p.t0; done
    sleep 20
    hz=100
    for p in $pids; do
        t1=$(awk '{ print $14 + $15 }' /proc/$p/stat)
        echo $(( (t1 - $(cat /tmp/bench/idle.$p.t0)) * 10000 / hz / 20 ))
    done > /tmp/bench/idle.$vmm.pct
    kill -9 $pids 2>/dev/null; wait 2>/dev/null
    held=$(grep -l 'VMR-LAB holding' /tmp/bench/idle.$vmm.*.log | wc -l)
    set -- $(sort -n /tmp/bench/idle.$vmm.pct)
    eval "med=\${$(( ($# + 1) / 2 ))}"; eval "max=\${$#}"
    # shares in 1/100 of a percent
    pct() { printf "%d.%02d" $(($1 / 100)) $(($1 % 100)); }
    echo "LAB bench-idle-$vmm PASS $held of $IDLE_GUESTS guests holding: median $(pct "$med")% of a CPU each, largest $(pct "$max")%"
}
for v in vmr qemu; do
    [ "$v" = vmr ] && [ "$LAB_HAVE_VMR" != 1 ] && continue
    idle_bench "$v"
done
