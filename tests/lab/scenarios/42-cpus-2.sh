# --cpus 2: the guest sees 2 CPUs and a busy loop pinned to each one gets CPU time on each.
WANT=2
boot_l2 "$LAB_L2/generic-vmlinux" "$LAB_L2/initramfs.cpio.gz" "vmr.test=cpus" "$WANT" ""
expect_clean_boot
got=$(value cpus)
[ "$got" = "$WANT" ] || fail "guest sees ${got:-no} CPUs, want $WANT"
busy=$(value busy)
[ "$busy" = "$WANT" ] || fail "only ${busy:-0} of $WANT CPUs ran work ($(grep 'cpuwork' "$OUT"))"
pass "cpus=$got, work ran on all ($(sed -n 's/.*ticks: *//p' "$OUT"))"
