# SIGTERM and SIGINT stop a running VM cleanly: exit code 128+signal, promptly, no process left.
[ "$LAB_VMM" = qemu ] && skip "checks vmr's own signal/console behaviour"
for sig in TERM INT; do
    want=$([ $sig = TERM ] && echo 143 || echo 130)
    OUT=$LAB_OUT/serial.$sig.log
    "$VMR" run --kernel "$LAB_L2/generic-vmlinux" --initrd "$LAB_L2/initramfs.cpio.gz" \
        --cmdline "$L2_CMDLINE_BASE vmr.test=hold" --cpus 2 --accel kvm < /dev/null > "$OUT" 2>&1 &
    pid=$!
    i=0
    while ! grep -q "VMR-LAB holding" "$OUT" && [ $i -lt "$LAB_BOOT_TIMEOUT" ]; do sleep 1; i=$((i + 1)); done
    RC=none
    grep -q "VMR-LAB holding" "$OUT" || { kill -9 $pid; fail "guest never reached its hold point"; }
    t0=$(date +%s)
    kill -$sig $pid
    wait $pid; RC=$?
    dt=$(( $(date +%s) - t0 ))
    [ "$RC" = "$want" ] || fail "SIG$sig: exit code $RC (want $want)"
    [ "$dt" -le 10 ] || fail "SIG$sig: took ${dt}s to stop"
    kill -0 $pid 2>/dev/null && fail "SIG$sig: vmr still running"
    grep -q "stopped by signal" "$OUT" || fail "SIG$sig: no 'stopped by signal' message"
done
pass "SIGTERM -> 143, SIGINT -> 130, each within 10 s"
