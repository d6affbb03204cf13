# virtio-vsock with a real guest, both directions, through vmr's Unix socket (Firecracker's
# convention), with socat on both sides:
#   host -> guest: L1 connects to the socket, sends "CONNECT 5000\n", gets "OK <port>\n", then
#                  talks to the guest's VSOCK-LISTEN:5000;
#   guest -> host: the guest connects to CID 2 port 6000, which vmr forwards to <socket>_6000
#                  where L1 listens.
[ "$LAB_VMM" = qemu ] && skip "uses vmr's --vsock"
command -v socat >/dev/null || fail "no socat in L1"
SOCK=$LAB_OUT/vm.vsock
socat -t 10 UNIX-LISTEN:"${SOCK}_6000" SYSTEM:"read l; echo host-got-\$l; echo \$l > $LAB_OUT/from-guest" &
listener=$!
BOOTS=1; OUT=$LAB_OUT/serial.1.log
"$VMR" run --kernel "$LAB_L2/generic-vmlinux" --initrd "$LAB_L2/initramfs.cpio.gz" --accel kvm \
    --cmdline "$L2_CMDLINE_BASE vmr.test=vsock" --vsock cid=3,socket="$SOCK" \
    < /dev/null > "$OUT.raw" 2>&1 &
pid=$!
echo "$VMR run ... --vsock cid=3,socket=$SOCK" > "$LAB_OUT/cmd"
i=0
while ! grep -q "VMR-LAB vsock-listening" "$OUT.raw" && [ $i -lt 600 ] && kill -0 $pid 2>/dev/null; do
    sleep 0.2; i=$((i + 1))
done
(printf 'CONNECT 5000\nhello-guest\n'; sleep 5) | socat -t 10 - UNIX-CONNECT:"$SOCK" \
    > "$LAB_OUT/from-socket" 2>&1
i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
kill -9 $pid 2>/dev/null; wait $pid; RC=$?
kill $listener 2>/dev/null
tr -d '\r' < "$OUT.raw" > "$OUT"
expect_clean_boot
reply=$(tr '\n' ' ' < "$LAB_OUT/from-socket")
case "$reply" in "OK "[0-9]*" guest-got-hello-guest ") ;;
    *) fail "host -> guest: the socket answered '$reply'" ;; esac
[ "$(value h2g-got)" = hello-guest ] || fail "host -> guest: the guest read '$(value h2g-got)'"
[ "$(cat "$LAB_OUT/from-guest" 2>/dev/null)" = hello-host ] ||
    fail "guest -> host: L1 read '$(cat "$LAB_OUT/from-guest" 2>/dev/null)'"
[ "$(value g2h-reply)" = host-got-hello-host ] || fail "guest -> host: the guest got '$(value g2h-reply)'"
pass "host -> guest (CONNECT 5000) and guest -> host (CID 2 port 6000) with data both ways"
