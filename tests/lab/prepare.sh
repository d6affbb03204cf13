#!/usr/bin/env bash
# Prepares the nested KVM lab (idempotent): host packages, Debian kernels, the L2 initramfs.
# Everything is cached under ${VMR_LAB_CACHE:-$HOME/.cache/vmr/lab}.
set -euo pipefail
. "$(dirname "$0")/common.sh"

install_packages() {
    local need=() t
    for t in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils busybox:busybox-static \
             cpio:cpio xz:xz-utils lz4:lz4 dpkg-deb:dpkg socat:socat fio:fio iperf3:iperf3; do
        command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
    done
    [ -e /bin/busybox ] && /bin/busybox --list | grep -qx taskset || need+=(busybox-static)
    [ ${#need[@]} -eq 0 ] && return
    [ "$(id -u)" = 0 ] || die "missing packages: ${need[*]} (run as root or install them)"
    log "installing ${need[*]}"
    # qemu-utils must come in the same transaction as qemu-system-x86 (kvm-lab.md).
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 qemu-utils "${need[@]}" >/dev/null
}

# fetch_deb PACKAGE -> prints the .deb path, downloading it once.
fetch_deb() {
    local pkg=$1 f
    f=$(ls "$LAB_CACHE/debs/${pkg}"_*.deb 2>/dev/null | tail -1 || true)
    if [ -z "$f" ]; then
        log "apt-get download $pkg"
        (cd "$LAB_CACHE/debs" && apt-get download -q "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
        f=$(ls "$LAB_CACHE/debs/${pkg}"_*.deb | tail -1)
    fi
    echo "$f"
}

resolve() { # meta package -> versioned linux-image package
    LC_ALL=C apt-cache depends "$1" | awk '/Depends: linux-image-/ {print $2; exit}'
}

# vmlinux_from_bzimage IN OUT: cut the xz payload out and decompress it (like extract-vmlinux).
vmlinux_from_bzimage() {
    local pos
    for pos in $(LC_ALL=C grep -abo -P '\xfd7zXZ\x00' "$1" | cut -d: -f1); do
        tail -c +$((pos + 1)) "$1" | xz -dc > "$2.tmp" 2>/dev/null || true
        if [ "$(head -c 4 "$2.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
            mv "$2.tmp" "$2"; return 0
        fi
    done
    rm -f "$2.tmp"; die "no xz ELF payload in $1"
}

# extract_kernel DEB DIR [with-kvm]: bzImage, vmlinux (xz kernels) and the kvm modules.
extract_kernel() {
    local deb=$1 dir=$2 kvm=${3:-} tmp
    [ -s "$dir/bzImage" ] && return
    tmp=$(mktemp -d); mkdir -p "$dir"
    local want=('./boot/vmlinuz-*')
    [ -n "$kvm" ] && want+=('./lib/modules/*/kernel/arch/x86/kvm/kvm.ko'
        './lib/modules/*/kernel/arch/x86/kvm/kvm-amd.ko' './lib/modules/*/kernel/virt/lib/irqbypass.ko'
        './lib/modules/*/kernel/drivers/crypto/ccp/ccp.ko')
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards "${want[@]}"
    if [ -n "$kvm" ]; then
        mkdir -p "$dir/modules"
        for m in irqbypass kvm ccp kvm-amd; do
            cp "$(find "$tmp/lib/modules" -name "$m.ko" | head -1)" "$dir/modules/$m.ko"
        done
        vmlinux_from_bzimage "$tmp"/boot/vmlinuz-* "$dir/vmlinux"
    fi
    cp "$tmp"/boot/vmlinuz-* "$dir/bzImage.tmp" && mv "$dir/bzImage.tmp" "$dir/bzImage"
    rm -rf "$tmp"
}

# L2_MODULES: virtio, ext4 and ACPI power button (with evdev, for acpid) modules for the L2
# guest, in load order (insmod does no deps).
L2_MODULES="virtio_ring virtio virtio_mmio virtio_blk virtio-rng failover net_failover virtio_net
    mbcache jbd2 crc16 crc32c_generic ext4 tun vsock vmw_vsock_virtio_transport_common
    vmw_vsock_virtio_transport evdev button"
# extract_l2_modules DEB DIR: the L2_MODULES .ko files plus DIR/order (their load order).
extract_l2_modules() {
    local deb=$1 dir=$2 tmp m
    [ "$(cat "$dir/order" 2>/dev/null)" = "$(echo $L2_MODULES)" ] && return
    tmp=$(mktemp -d); mkdir -p "$dir"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './lib/modules/*.ko'
    for m in $L2_MODULES; do
        cp "$(find "$tmp/lib/modules" -name "$m.ko" | head -1)" "$dir/$m.ko" || die "no $m.ko in $deb"
    done
    echo $L2_MODULES > "$dir/order.tmp" && mv "$dir/order.tmp" "$dir/order"
    rm -rf "$tmp"
}

# copy_tool ROOT NAME: the host's NAME plus every shared library ldd names, at their paths.
copy_tool() {
    local root=$1 src lib
    src=$(command -v "$2") || die "$2 is not installed (tests/setup.sh installs it)"
    install -D -m 755 "$src" "$root/usr/bin/$2"
    for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*'); do
        [ -e "$root$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$root$lib"
    done
}

# build_initramfs OUT TOOLS...: static busybox + the lab /init + virtio/ext4/vsock modules
# (loaded by the tests that need them) + TOOLS with their libraries.
build_initramfs() {
    local out=$1 tmp mods=$LAB_CACHE/generic/l2-modules t; shift
    [ -s "$out" ] && return
    tmp=$(mktemp -d)
    mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp}
    cp /bin/busybox "$tmp/bin/busybox"
    ln -s busybox "$tmp/bin/sh"
    install -m 755 "$LAB_DIR/guest/init" "$tmp/init"
    mkdir -p "$tmp/lib/modules" && cp "$mods"/*.ko "$mods/order" "$tmp/lib/modules/"
    for t in "$@"; do copy_tool "$tmp" "$t"; done
    (cd "$tmp" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -6 > "$out.tmp")
    mv "$out.tmp" "$out"; rm -rf "$tmp"
}
build_l2_initramfs() {
    # Ones no run has used for a week go (each change of guest/init makes new ones).
    find "$LAB_CACHE" -maxdepth 1 -name 'l2-*.cpio.gz' -atime +7 -delete 2>/dev/null || true
    build_initramfs "$(l2_initramfs l2-initramfs $L2_TOOLS)" $L2_TOOLS
    build_initramfs "$(l2_initramfs l2-bench-initramfs $L2_TOOLS $L2_BENCH_TOOLS)" $L2_TOOLS $L2_BENCH_TOOLS
}

main() {
    mkdir -p "$LAB_CACHE/debs"
    install_packages
    local generic cloud
    generic=$(resolve linux-image-amd64); cloud=$(resolve linux-image-cloud-amd64)
    [ -n "$generic" ] && [ -n "$cloud" ] || die "apt-cache knows no linux-image-amd64 (apt-get update?)"
    extract_kernel "$(fetch_deb "$generic")" "$LAB_CACHE/generic" with-kvm
    extract_kernel "$(fetch_deb "$cloud")" "$LAB_CACHE/cloud"
    extract_l2_modules "$(fetch_deb "$generic")" "$LAB_CACHE/generic/l2-modules"
    echo "$generic" > "$LAB_CACHE/generic/package"; echo "$cloud" > "$LAB_CACHE/cloud/package"
    build_l2_initramfs
    log "ready in $LAB_CACHE ($generic, $cloud)"
}
main "$@"
