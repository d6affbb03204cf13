# --memory 4G: MemTotal in the guest within MEM_TOLERANCE_PCT percent below 4 GiB (QEMU: 95.5%; the kernel keeps
# its image, page tables and struct pages out of MemTotal).
MEM_TOLERANCE_PCT=7
WANT_KB=$((4 * 1024 * 1024))
boot_l2 "$LAB_L2/generic-vmlinux" "$LAB_L2/initramfs.cpio.gz" "vmr.test=mem" "" "4G"
expect_clean_boot
got=$(value memtotal_kb)
[ -n "$got" ] || fail "no MemTotal reported"
min=$((WANT_KB * (100 - MEM_TOLERANCE_PCT) / 100))
[ "$got" -ge "$min" ] && [ "$got" -le "$WANT_KB" ] ||
    fail "MemTotal ${got} kB not within ${MEM_TOLERANCE_PCT}% below $WANT_KB kB"
pass "MemTotal ${got} kB ($((got * 1000 / WANT_KB / 10)).$((got * 1000 / WANT_KB % 10))% of 4 GiB)"
