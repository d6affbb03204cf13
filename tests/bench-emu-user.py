#!/usr/bin/env python3
"""CPU-bound user-space work in the default guest (issue 13): vmr's software CPU with the
translator off and on, against QEMU TCG, in the same run.

    cargo build --release && python3 tests/bench-emu-user.py [--vmr target/release/vmr]
        [--runs 3] [--loop 100000] [--md5-mib 8]

Each VMM boots the default guest (`vmr image pull`: same kernel, initramfs and command line as
tests/bench-emu.sh, 1 vCPU, 256 MiB; QEMU is `qemu-system-x86_64 -accel tcg -M microvm -cpu max`).
After the init marker the script types at the shell, one at a time, and times each from the
keystroke to its result line (host wall clock):
  loop  busybox sh counting to --loop (an interpreter running a loop),
  md5   md5sum of --md5-mib MiB of zeros (hashing).
A wrong answer (count or digest) fails the run. Runs alternate between the
VMMs; medians, and each VMM's ratio to QEMU's median.
"""
import argparse, hashlib, os, select, statistics, subprocess, sys, time

MARKER = "vmr-guest: init reached"
ZERO_MD5 = {n: hashlib.md5(bytes(n << 20)).hexdigest() for n in (1, 8, 16)}


def host_tsc_khz():
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu MHz"):
            return int(float(line.split(":")[1]) * 1000)
    return 2445400


def image():
    d = os.environ.get("VMR_IMAGE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vmr/images/default")
    cmdline = None
    for line in open(os.path.join(d, "manifest.json")):
        line = line.strip()
        if line.startswith('"cmdline"'):
            cmdline = line.split(":", 1)[1].strip().rstrip(",").strip('"')
    return os.path.join(d, "vmlinux"), os.path.join(d, "initramfs.cpio.gz"), cmdline + " lpj=10384468"


class Guest:
    """A booted VMM whose serial console is our stdin/stdout."""

    def __init__(self, cmd, env, timeout):
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=env)
        self.buf, self.timeout = b"", timeout

    def wait_for(self, text):
        deadline = time.monotonic() + self.timeout
        while True:
            i = self.buf.find(text.encode())
            if i >= 0:
                end = self.buf.find(b"\n", i)
                if end >= 0:
                    line, self.buf = self.buf[i:end], self.buf[end + 1:]
                    return line.decode(errors="replace").strip()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {text!r} within {self.timeout} s")
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:
                    raise EOFError(f"VMM exited before {text!r}")
                self.buf += chunk

    def timed(self, command, result):
        """Types `command`; returns the seconds until the line starting with `result`, and it."""
        t0 = time.monotonic()
        self.p.stdin.write(command.encode() + b"\n")
        self.p.stdin.flush()
        line = self.wait_for(result)
        return time.monotonic() - t0, line

    def close(self):
        self.p.kill()
        self.p.wait()


def one_run(cmd, env, args):
    g = Guest(cmd, env, args.timeout)
    try:
        g.wait_for(MARKER)
        time.sleep(1)  # let the shell start
        n, mib = args.loop, args.md5_mib
        # `$((...))` is expanded by the guest: the echoed command line does not match.
        loop, _ = g.timed(f"i=0; while [ $i -lt {n} ]; do i=$((i+1)); done; echo VMR-LOOP-$((i*3))",
                          f"VMR-LOOP-{n * 3}")
        md5, line = g.timed(f"echo VMR-MD5-$((1+1))-$(dd if=/dev/zero bs=1M count={mib} 2>/dev/null | md5sum)",
                            "VMR-MD5-2-")
        if ZERO_MD5[mib] not in line:
            raise EOFError(f"wrong digest: {line}")
        return loop, md5
    finally:
        g.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmr", default="target/release/vmr")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loop", type=int, default=100000)
    ap.add_argument("--md5-mib", type=int, default=8, choices=sorted(ZERO_MD5))
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args()
    if not os.access(args.vmr, os.X_OK):
        sys.exit(f"bench-emu-user: {args.vmr} is not an executable vmr (cargo build --release)")
    subprocess.run([args.vmr, "image", "pull"], check=True, stdout=subprocess.DEVNULL)
    kernel, initrd, cmdline = image()
    vmr = [args.vmr, "run", "--accel", "emu", "--cpus", "1", "--memory", "256M",
           "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline]
    qemu = ["qemu-system-x86_64", "-accel", "tcg", "-M", "microvm", "-cpu", "max", "-smp", "1",
            "-m", "256M", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", f"{cmdline} tsc_early_khz={host_tsc_khz()}"]
    vmms = [("vmr-emu", vmr, "0"), ("vmr-emu-jit", vmr, "1"), ("qemu-tcg", qemu, "0")]
    res = {name: {"loop": [], "md5": []} for name, _, _ in vmms}
    for r in range(args.runs):
        for name, cmd, jit in vmms:
            env = dict(os.environ, VMR_EMU_JIT=jit)
            try:
                loop, md5 = one_run(cmd, env, args)
            except (TimeoutError, EOFError) as e:
                print(f"run {r + 1}: {name}: {e}", file=sys.stderr)
                continue
            res[name]["loop"].append(loop)
            res[name]["md5"].append(md5)
            print(f"run {r + 1}: {name}: loop {loop:.2f} s, md5 {md5:.2f} s", file=sys.stderr)
    q = {k: statistics.median(v) if v else None for k, v in res["qemu-tcg"].items()}
    print(f"medians of {args.runs} (loop to {args.loop} in busybox sh; md5sum of {args.md5_mib} MiB):")
    for name, _, _ in vmms:
        line = [name]
        for k in ("loop", "md5"):
            v = res[name][k]
            if not v:
                line.append(f"{k} -")
                continue
            m = statistics.median(v)
            ratio = f" ({m / q[k]:.2f}x QEMU)" if q[k] else ""
            line.append(f"{k} {m:.2f} s{ratio}")
        print("  " + ", ".join(line))


if __name__ == "__main__":
    main()
