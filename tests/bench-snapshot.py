#!/usr/bin/env python3
"""Snapshot restore time on this host's software CPU, side by side with QEMU (issue 11).

    cargo build --release && python3 tests/bench-snapshot.py [--vmr target/release/vmr] \
        [--sizes 256,1024,4096] [--runs 10] [--no-qemu]

For each guest memory size: the default guest (`vmr image pull`) is booted through the API on
the software CPU (1 vCPU), reaches its init marker, starts a counter, writes 16 MiB of data in
its RAM; the VM is paused and snapshotted (PUT /snapshot/create), the VMM killed. Then, `runs`
times: a fresh `vmr --accel emu --api-sock S` is spawned, and the time is taken from sending
PUT /snapshot/load (resume_vm: true) to its 204, when the vCPU threads run the guest again
(restore time), and on to the first counter line the guest prints (guest running; up to its
0.2 s sleep). Medians.

QEMU (TCG, the same kernel and initramfs, -M pc): booted to the same marker, stopped, saved with
`migrate exec:cat > FILE`; restore is `qemu -incoming defer` then QMP `migrate-incoming
exec:cat FILE` and `cont`, timed from migrate-incoming to `query-status` running. Medians.
"""
import argparse, json, os, select, socket, statistics, subprocess, tempfile, time

MARKER = "vmr-guest: init reached"


def connect(sock_path, timeout=60):
    """The socket file appears at bind(), a moment before listen(): retry until served."""
    end = time.time() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(sock_path)
            return s
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            assert time.time() < end, sock_path
            time.sleep(0.002)


def http(sock_path, method, path, body=None):
    s = connect(sock_path)
    data = json.dumps(body).encode() if body is not None else b""
    s.sendall(b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
              % (method.encode(), path.encode(), len(data), data))
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    s.close()
    status = int(out.split(b" ", 2)[1])
    assert status in (200, 204), out
    return out


class Console:
    """The child's stdout, line by line, without blocking."""
    def __init__(self, proc):
        self.proc, self.buf = proc, b""
        os.set_blocking(proc.stdout.fileno(), False)

    def wait(self, pred, timeout):
        end = time.time() + timeout
        while time.time() < end:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if pred(line.decode(errors="replace")):
                    return True
            r, _, _ = select.select([self.proc.stdout], [], [], 0.05)
            if r:
                chunk = self.proc.stdout.read(65536)
                if chunk:
                    self.buf += chunk
        return False


def wait_path(p, timeout=20):
    end = time.time() + timeout
    while not os.path.exists(p):
        assert time.time() < end, p
        time.sleep(0.002)


def vmr_snapshot(vmr, image, mib, d):
    sock = os.path.join(d, f"boot{mib}.sock")
    p = subprocess.Popen([vmr, "--accel", "emu", "--api-sock", sock], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    c = Console(p)
    wait_path(sock)
    http(sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": mib})
    http(sock, "PUT", "/boot-source", {"kernel_image_path": image["kernel"], "initrd_path": image["initrd"],
                                       "boot_args": image["cmdline"]})
    http(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
    assert c.wait(lambda l: MARKER in l, 900), "no init marker"
    p.stdin.write(b"dd if=/dev/urandom of=/data bs=1M count=16 2>/dev/null; "
                  b"(i=0; while true; do echo VMR-COUNT=$i; i=$((i+1)); sleep 0.2; done) &\n")
    p.stdin.flush()
    assert c.wait(lambda l: l.startswith("VMR-COUNT=2"), 120), "no counter"
    http(sock, "PATCH", "/vm", {"state": "Paused"})
    snap, mem = os.path.join(d, f"vm{mib}.snap"), os.path.join(d, f"vm{mib}.mem")
    http(sock, "PUT", "/snapshot/create", {"snapshot_path": snap, "mem_file_path": mem})
    p.kill(); p.wait()
    return snap, mem


def vmr_restore(vmr, snap, mem, d, i):
    # A killed vmr leaves its socket behind: a fresh name each time.
    sock = os.path.join(d, f"r{os.path.basename(snap)}-{i}.sock")
    err = open(os.path.join(d, f"r{i}.err"), "wb")
    p = subprocess.Popen([vmr, "--accel", "emu", "--api-sock", sock], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=err)
    c = Console(p)
    wait_path(sock)
    http(sock, "GET", "/")  # the server answers: the timing starts at the request itself
    t0 = time.perf_counter()
    http(sock, "PUT", "/snapshot/load", {"snapshot_path": snap, "resume_vm": True,
                                         "mem_backend": {"backend_type": "File", "backend_path": mem}})
    t1 = time.perf_counter()
    ok = c.wait(lambda l: l.startswith("VMR-COUNT="), 30)
    t2 = time.perf_counter()
    p.kill(); p.wait()
    assert ok, "the restored guest printed nothing: " + open(err.name).read()
    return (t1 - t0) * 1e3, (t2 - t0) * 1e3


class Qmp:
    def __init__(self, path):
        self.s = connect(path)
        self.f = self.s.makefile("rwb")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n"); self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                assert "error" not in r, r
                return r["return"]


def qemu_args(image, mib, qmp):
    return ["qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", f"{mib}M", "-smp", "1",
            "-nographic", "-nodefaults", "-serial", "stdio", "-kernel", image["kernel"],
            "-initrd", image["initrd"], "-append", image["cmdline"].replace("pci=off", ""),
            "-qmp", f"unix:{qmp},server=on,wait=off"]


def qemu_snapshot(image, mib, d):
    qmp, mig = os.path.join(d, f"q{mib}.qmp"), os.path.join(d, f"q{mib}.mig")
    p = subprocess.Popen(qemu_args(image, mib, qmp), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    c = Console(p)
    assert c.wait(lambda l: MARKER in l, 900), "QEMU: no init marker"
    p.stdin.write(b"dd if=/dev/urandom of=/data bs=1M count=16 2>/dev/null; echo QDONE\n"); p.stdin.flush()
    assert c.wait(lambda l: l.startswith("QDONE"), 120)
    q = Qmp(qmp)
    q.cmd("stop")
    q.cmd("migrate", uri=f"exec:cat > {mig}")
    while q.cmd("query-migrate").get("status") != "completed":
        time.sleep(0.05)
    p.kill(); p.wait()
    return mig


def qemu_restore(image, mib, mig, d, i):
    qmp = os.path.join(d, f"qr{mib}-{i}.qmp")
    p = subprocess.Popen(qemu_args(image, mib, qmp) + ["-incoming", "defer"], stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_path(qmp)
    q = Qmp(qmp)
    t0 = time.perf_counter()
    q.cmd("migrate-incoming", uri=f"exec:cat {mig}")
    while q.cmd("query-migrate").get("status") != "completed":
        time.sleep(0.001)
    q.cmd("cont")
    while q.cmd("query-status")["status"] != "running":
        time.sleep(0.001)
    t1 = time.perf_counter()
    p.kill(); p.wait()
    return (t1 - t0) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmr", default="target/release/vmr")
    ap.add_argument("--sizes", default="256,1024,4096")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-qemu", action="store_true")
    a = ap.parse_args()
    out = subprocess.run([a.vmr, "image", "pull"], capture_output=True, text=True, check=True).stdout
    image = {k: v.strip() for k, v in (l.split(None, 1) for l in out.splitlines())}
    with tempfile.TemporaryDirectory(prefix="vmr-bench-snap-") as d:
        for mib in [int(s) for s in a.sizes.split(",")]:
            snap, mem = vmr_snapshot(a.vmr, image, mib, d)
            st = os.stat(mem)
            runs = [vmr_restore(a.vmr, snap, mem, d, i) for i in range(a.runs)]
            load = statistics.median(r[0] for r in runs)
            first = statistics.median(r[1] for r in runs)
            line = (f"{mib:5d} MiB  vmr: state {os.path.getsize(snap)/1024:.0f} KiB, memory file "
                    f"{st.st_blocks*512/2**20:.0f} MiB on disk; restore (load request to running) "
                    f"median {load:.2f} ms (min {min(r[0] for r in runs):.2f}, max {max(r[0] for r in runs):.2f}); "
                    f"first guest line after {first:.0f} ms")
            if not a.no_qemu:
                mig = qemu_snapshot(image, mib, d)
                q = [qemu_restore(image, mib, mig, d, i) for i in range(a.runs)]
                line += (f" | QEMU TCG: stream {os.path.getsize(mig)/2**20:.0f} MiB, restore (migrate-incoming "
                         f"to running) median {statistics.median(q):.1f} ms")
            print(line, flush=True)
            for f in os.listdir(d):
                if f.endswith((".mem", ".mig")):
                    os.unlink(os.path.join(d, f))


if __name__ == "__main__":
    main()
