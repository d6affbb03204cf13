# Bad disks fail before the guest starts, with one line and exit code 1: a missing image, a
# corrupt qcow2, an image in use by another vmr (its lock); the locked image stays untouched.
[ "$LAB_VMM" = qemu ] && skip "checks vmr's own error messages"
k="--kernel $LAB_L2/generic-vmlinux --initrd $LAB_L2/initramfs.cpio.gz --accel kvm"
# one_error NAME WANT ARGS...: vmr exits 1 with exactly one stderr line containing WANT.
one_error() {
    name=$1 want=$2; shift 2
    OUT=$LAB_OUT/$name.log
    timeout -s KILL 60 "$VMR" run $k "$@" < /dev/null > "$LAB_OUT/$name.out" 2> "$OUT"; RC=$?
    [ "$RC" = 1 ] || fail "$name: exit code $RC, want 1"
    grep -v '^vmr: accelerator' "$OUT" > "$OUT.err"
    [ "$(wc -l < "$OUT.err")" = 1 ] || fail "$name: want one error line, got: $(cat "$OUT.err")"
    grep -qF -- "$want" "$OUT.err" || fail "$name: '$(cat "$OUT.err")' lacks '$want'"
    grep -q "VMR-LAB" "$LAB_OUT/$name.out" && fail "$name: the guest started"
    return 0
}
one_error missing "$LAB_OUT/none.img" --disk "path=$LAB_OUT/none.img"
printf 'QFI\373this is not a qcow2 header' > "$LAB_OUT/bad.qcow2"
one_error corrupt "bad.qcow2" --disk "path=$LAB_OUT/bad.qcow2,format=qcow2"
img=$LAB_OUT/shared.img
mkfs.ext4 -q "$img" 16M >/dev/null || fail "mkfs.ext4 failed"
"$VMR" run $k --cmdline "$L2_CMDLINE_BASE vmr.test=bench VMR_LAB_HOLD=20" --disk "path=$img" < /dev/null > "$LAB_OUT/holder.out" 2>&1 &
holder=$!
i=0; while ! grep -q "VMR-LAB init" "$LAB_OUT/holder.out" && [ $i -lt 300 ]; do sleep 0.2; i=$((i + 1)); done
before=$(sha256sum "$img" | cut -c1-64)
one_error locked "in use by another process" --disk "path=$img"
[ "$(sha256sum "$img" | cut -c1-64)" = "$before" ] || fail "the locked image changed"
wait $holder; RC=$?
[ "$RC" = 0 ] || fail "the vmr holding the image ended with $RC"
pass "missing, corrupt and locked images: exit 1 with one line each"
