# The default guest of `vmr image pull` (if it was cached on the host) boots to its marker.
[ -s "$LAB_L2/image-bzImage" ] || skip "no default image cached on the host (vmr image pull)"
boot_l2 "$LAB_L2/image-bzImage" "$LAB_L2/image-initramfs.cpio.gz" "$(cat "$LAB_L2/image-cmdline") vmr.poweroff" "" ""
has "vmr-guest: init reached" || fail "no 'vmr-guest: init reached' marker (rc=$RC)"
[ "$RC" = 0 ] || fail "exit code $RC after poweroff (want 0)"
pass "default guest image reached init"
