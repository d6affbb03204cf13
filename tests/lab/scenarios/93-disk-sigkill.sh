# Nothing acknowledged is lost: the guest writes 1 MiB with conv=fsync and reports its sha256;
# vmr is then killed with SIGKILL; a second boot (which also replays the journal) reads the same.
[ "$LAB_VMM" = qemu ] && skip "uses vmr's --disk"
img=$LAB_OUT/data.img
mkfs.ext4 -q "$img" 64M >/dev/null || fail "mkfs.ext4 failed"
BOOTS=1; OUT=$LAB_OUT/serial.1.log
"$VMR" run --kernel "$LAB_L2/generic-vmlinux" --initrd "$LAB_L2/initramfs.cpio.gz" --accel kvm \
    --cmdline "$L2_CMDLINE_BASE vmr.test=disk-sigkill" --disk "path=$img" < /dev/null > "$OUT.raw" 2>&1 &
pid=$!
i=0
while ! grep -q "VMR-LAB synced" "$OUT.raw" && [ $i -lt "$LAB_BOOT_TIMEOUT" ] && kill -0 $pid 2>/dev/null; do
    sleep 0.2; i=$((i + 1))
done
kill -9 $pid 2>/dev/null; wait $pid; RC=$?
tr -d '\r' < "$OUT.raw" > "$OUT"
has "VMR-LAB synced" || fail "guest never reported the synced write (rc=$RC)"
[ "$RC" = 137 ] || fail "vmr was not killed by SIGKILL (rc=$RC)"
want=$(value sha)
[ ${#want} = 64 ] || fail "guest reported no sha256 ('$want')"
printf '#!/bin/sh\nexec %s "$@" --disk path=%s\n' "$VMR" "$img" > "$LAB_OUT/vmr"
chmod +x "$LAB_OUT/vmr"; VMR=$LAB_OUT/vmr
boot_l2 "$LAB_L2/generic-vmlinux" "$LAB_L2/initramfs.cpio.gz" "vmr.test=disk-check" "" ""
expect_clean_boot
[ "$(value sha)" = "$want" ] || fail "after SIGKILL the file's sha256 is $(value sha), want $want"
pass "1 MiB written with conv=fsync survived SIGKILL of vmr"
