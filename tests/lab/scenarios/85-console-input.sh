# The guest's console reads vmr's stdin (here a pipe): a command typed at its shell runs, and
# `poweroff -f` ends vmr with 0, and a command piped in before the guest has booted (typed ahead)
# runs too. (It was once lost here: vmr's console thread dropped what it read before the
# machine's serial port existed; it now holds that input for the port.)
[ "$LAB_VMM" = qemu ] && skip "checks vmr's own signal/console behaviour"
[ -s "$LAB_L2/image-bzImage" ] || skip "no default image cached on the host (vmr image pull)"
OUT=$LAB_OUT/serial.console.log
( echo 'echo "early-$((5 * 8))"'
  i=0
  while ! grep -q "vmr-guest: init reached" "$OUT" 2>/dev/null && [ $i -lt "$LAB_BOOT_TIMEOUT" ]; do sleep 1; i=$((i + 1)); done
  sleep 2
  echo 'echo "console-says-$((6 * 7))"'
  sleep 2
  echo 'poweroff -f'
  i=0
  while ! grep -q "Power down" "$OUT" && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done ) | timeout -s KILL "$LAB_BOOT_TIMEOUT" "$VMR" run --kernel "$LAB_L2/image-bzImage" \
      --initrd "$LAB_L2/image-initramfs.cpio.gz" --cmdline "$(cat "$LAB_L2/image-cmdline")" --accel kvm > "$OUT" 2>&1
RC=$?
grep -q "console-says-42" "$OUT" || fail "the shell did not run the piped command (rc=$RC)"
grep -q "early-40" "$OUT" || fail "the command typed ahead before boot was lost (rc=$RC)"
[ "$RC" = 0 ] || fail "exit code $RC after poweroff typed on the console (want 0)"
pass "piped console input reached the guest shell and so did the one typed ahead before boot; poweroff gave 0"
