# A garbage kernel file: non-zero exit and a one-line error naming the problem.
BAD_KERNEL_TEXT="neither an ELF vmlinux nor a bzImage"
[ "$LAB_VMM" = qemu ] && skip "qemu runs any blob as a raw kernel image (no format check)"
head -c 1048576 /dev/urandom > "$LAB_OUT/garbage.bin"
boot_l2 "$LAB_OUT/garbage.bin" "$LAB_L2/initramfs.cpio.gz" "vmr.test=boot" "" ""
[ "$RC" != 0 ] || fail "exit code 0 for a garbage kernel"
[ "$RC" != 137 ] || fail "vmr hung on a garbage kernel (killed after ${LAB_BOOT_TIMEOUT}s)"
has "$BAD_KERNEL_TEXT" || fail "error output lacks \"$BAD_KERNEL_TEXT\": $(head -c 200 "$OUT")"
pass "exit code $RC: $(grep -F "$BAD_KERNEL_TEXT" "$OUT" | head -1 | cut -c1-120)"
