"""The live scenarios' host side: a stick laid out as a real one, a qemu boot of the live
system built by loopdev-tests/live/build-image, and a person at its serial console.

Everything the guest does is typed at its console as a person would type it: the login,
`sudo keepsake ...`, passphrases at keepsake's and live-boot's prompts, Ctrl-C. The output
comes back the same way; a check is a command's exit status or what it printed.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TESTS, "lib"))
import scan  # noqa: E402  (the leak scan of the busybox scenarios, the same code)

MIB = 1024 * 1024
LIVE_USER, LIVE_PASSWORD = "user", "live"  # live-config's defaults
# live-boot's and live-config's parameters, as a live stick's boot menu gives them; quiet
# keeps the console to what the person would read.
BOOT_ARGS = "boot=live components quiet loglevel=3 systemd.show_status=false console=ttyS0"


class Failed(Exception):
    """A check failed in a way that makes the checks after it meaningless."""


class Report:
    """ok/FAIL lines in the busybox scenarios' format; remembers whether any failed."""

    def __init__(self):
        self.failed = 0

    def ok(self, what):
        print(f"    ok    {what}", flush=True)

    def fail(self, what):
        print(f"    FAIL  {what}", flush=True)
        self.failed += 1

    def say(self, what):
        print(f"    ..    {what}", flush=True)

    def check(self, what, cond, detail=""):
        if cond:
            self.ok(what)
        else:
            self.fail(f"{what}{': ' + detail if detail else ''}")
        return cond

    def equal(self, what, got, want):
        return self.check(what, got == want, f"got {got!r}, expected {want!r}")


def system_partition(image_dir):
    """The live system's partition (ext4 labelled DEBIAN_LIVE, /live/ as live-build lays it
    out), made once per image next to it."""
    part = os.path.join(image_dir, "system.ext4")
    if os.path.exists(part):
        return part
    staging = os.path.join(image_dir, "staging")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(os.path.join(staging, "live"))
    total = 0
    for name in ("vmlinuz", "initrd.img", "filesystem.squashfs"):
        os.link(os.path.join(image_dir, name), os.path.join(staging, "live", name))
        total += os.path.getsize(os.path.join(image_dir, name))
    size_mib = total * 11 // 10 // MIB + 32
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "DEBIAN_LIVE", "-d", staging,
                    part + ".tmp", f"{size_mib}M"], check=True, stdout=subprocess.DEVNULL)
    os.rename(part + ".tmp", part)
    shutil.rmtree(staging)
    return part


def live_stick(path, image_dir, free_mib):
    """A USB stick as a person has it after writing the live system: GPT, partition 1 the
    live system, then free_mib of free space for keepsake to use."""
    part = system_partition(image_dir)
    part_mib = (os.path.getsize(part) + MIB - 1) // MIB
    with open(path, "wb") as f:
        f.truncate((1 + part_mib + free_mib + 1) * MIB)
    table = f'label: gpt\nstart=2048, size={part_mib}MiB, type=L, name="live"\n'
    subprocess.run(["sfdisk", "-q", path], input=table.encode(), check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["dd", f"if={part}", f"of={path}", "bs=1M", "seek=1", "conv=notrunc,sparse",
                    "status=none"], check=True)
    return path


def blank_disk(path, size_mib, table=None):
    """A disk image, sparse; with an sfdisk script if given."""
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
    if table:
        subprocess.run(["sfdisk", "-q", path], input=table.encode(), check=True,
                       stdout=subprocess.DEVNULL)
    return path


class Guest:
    """One boot of the live system under qemu (TCG), its serial console and monitor."""

    def __init__(self, image_dir, workdir, name, disks, args="", mem_mib=1024):
        self.log_path = os.path.join(workdir, f"{name}.console.log")
        self.log = open(self.log_path, "ab")
        self.buf = ""
        self.pos = 0
        self.marker = 0
        self.workdir = workdir
        self.mem_mib = mem_mib
        serial = os.path.join(workdir, "serial.sock")
        self.monitor_path = os.path.join(workdir, "monitor.sock")
        for p in (serial, self.monitor_path):
            if os.path.exists(p):
                os.unlink(p)
        drives = []
        for serial_name, file in disks:
            drives += ["-drive", f"file={file},format=raw,if=none,id=d{serial_name},cache=unsafe",
                       "-device", f"virtio-blk-pci,drive=d{serial_name},serial={serial_name}"]
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", str(mem_mib),
               "-smp", os.environ.get("KS_LIVE_SMP", "2"), "-nographic", "-no-reboot", "-nodefaults",
               "-serial", f"unix:{serial},server=on,wait=on",
               "-monitor", f"unix:{self.monitor_path},server=on,wait=off",
               "-kernel", os.path.join(image_dir, "vmlinuz"),
               "-initrd", os.path.join(image_dir, "initrd.img"),
               "-append", f"{BOOT_ARGS} {args}".strip()] + drives
        self.started = time.time()
        self.qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        for _ in range(100):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(serial)
                break
            except OSError:
                self.sock.close()
                time.sleep(0.1)
        else:
            raise Failed("qemu did not open its serial console")

    # -- the console ------------------------------------------------------------------
    def _read(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        if not data:
            time.sleep(min(timeout, 1.0))  # the console closed: qemu is ending
            return False
        self.log.write(data)
        self.log.flush()
        self.buf += data.decode("latin-1").replace("\r", "")
        return True

    def expect(self, pattern, timeout=120):
        """Waits for pattern (a regex) in what the console printed since the last match;
        returns the match."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while True:
            m = rx.search(self.buf, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.time()
            if left <= 0:
                raise Failed(f"waited {timeout} s for {pattern!r}; the console's last lines:\n"
                             + "\n".join("      | " + line for line in self.buf[self.pos:].splitlines()[-12:]))
            if not self._read(min(left, 1.0)) and self.qemu.poll() is not None:
                raise Failed(f"the guest stopped while waiting for {pattern!r}")

    def type(self, text):
        """Types text at the console; "\r" is Enter, "\x03" is Ctrl-C."""
        self.sock.sendall(text.encode())

    def login(self, user=LIVE_USER, password=LIVE_PASSWORD, timeout=600):
        """Logs in at the serial console's getty; returns the seconds since qemu started."""
        self.expect(r"login: ", timeout)
        self.type(user + "\r")
        self.expect(r"Password: ", 60)
        self.type(password + "\r")
        self.expect(r"\$ ", 120)
        # A prompt that cannot be mistaken for output, a wide terminal so that lines do not
        # wrap, and no pager waiting for a key (systemctl pages even `show` on a terminal).
        self.type("stty cols 250 rows 50; export PS1='live$ ' PAGER=cat SYSTEMD_PAGER=cat\r")
        self.expect(r"live\$ ")
        return time.time() - self.started

    def run(self, command, timeout=300):
        """Types command at the shell prompt and waits for it; returns (status, output)."""
        self.marker += 1
        n = self.marker
        self.type(f"printf 'KS-%s-B\\n' {n}; {command}; printf 'KS-%s-E %s\\n' {n} $?\r")
        self.expect(rf"KS-{n}-B\n", 30)
        m = self.expect(rf"(?s)(.*?)KS-{n}-E (\d+)\n", timeout)
        return int(m.group(2)), m.group(1)

    def out(self, command, timeout=300):
        """The output of a command that must succeed."""
        rc, text = self.run(command, timeout)
        if rc != 0:
            raise Failed(f"`{command}` exited {rc}:\n{text}")
        return text.strip()

    # -- the machine ------------------------------------------------------------------
    def monitor(self, *commands):
        subprocess.run([sys.executable, os.path.join(TESTS, "lib", "monitor.py"),
                        self.monitor_path, *commands], check=True, stdout=self.log,
                       stderr=subprocess.STDOUT)

    def poweroff(self, timeout=180):
        """sudo poweroff, as the person would; waits for qemu to end."""
        self.type("sudo poweroff\r")
        return self.wait_end(timeout)

    def wait_end(self, timeout=180):
        deadline = time.time() + timeout
        while self.qemu.poll() is None and time.time() < deadline:
            self._read(1.0)
        if self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()
            raise Failed(f"the guest did not power off within {timeout} s")
        self.sock.close()
        self.log.close()
        return time.time() - self.started

    def kill(self):
        if self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()


def count_hits(image, needle):
    """How often needle (bytes) occurs in a disk or memory image: lib/scan.py's count."""
    import mmap
    with open(image, "rb") as f:
        if f.seek(0, 2) == 0:
            return 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return scan.count(data, needle)


def converse(guest, command, answers, timeout=300):
    """Types command, then answers its prompts in order: each (regex, reply) waits for the
    prompt before typing the reply and Enter (keepsake drops what is typed ahead of a
    passphrase prompt, as a terminal program should). Returns (status, output)."""
    guest.marker += 1
    n = guest.marker
    guest.type(f"printf 'KS-%s-B\\n' {n}; {command}; printf 'KS-%s-E %s\\n' {n} $?\r")
    guest.expect(rf"KS-{n}-B\n", 30)
    start = guest.pos
    end = rf"KS-{n}-E (\d+)\n"
    for prompt, reply in answers:
        m = guest.expect(rf"(?:{prompt})|{end}", timeout)
        if m.group(m.lastindex or 0) and m.re.groups and m.group(m.re.groups):
            # It ended before asking: an error, most likely.
            return int(m.group(m.re.groups)), guest.buf[start:m.start()]
        guest.type(reply + "\r")
    m = guest.expect(end, timeout)
    return int(m.group(1)), guest.buf[start:m.start()]


def json_of(text):
    """The JSON object keepsake --json printed (the console may add lines around it)."""
    import json
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def random_word():
    import base64
    return base64.b64encode(os.urandom(15)).decode().replace("+", "x").replace("/", "y")


def main(scenario):
    """Runs scenario(report, workdir, image_dir) with the paths the harness gives; exit
    status 1 when a check failed."""
    workdir, image_dir = sys.argv[1], sys.argv[2]
    report = Report()
    try:
        scenario(report, workdir, image_dir)
    except Failed as e:
        report.fail(str(e))
    except Exception as e:  # a driver error is a failed scenario too, never a pass
        report.fail(f"the driver failed: {type(e).__name__}: {e}")
    finally:
        subprocess.run(["pkill", "-f", f"unix:{os.path.join(workdir, 'serial.sock')}"],
                       stderr=subprocess.DEVNULL)
    sys.exit(1 if report.failed else 0)


def volume_key(disk, partition, passphrase, workdir):
    """The volume key (hex) of the LUKS volume in a partition of a disk image, read on the
    host from a copy of its header with the cryptsetup CLI, for the leak scan only."""
    import json
    table = json.loads(subprocess.run(["sfdisk", "-J", disk], capture_output=True, check=True).stdout)
    start = table["partitiontable"]["partitions"][partition - 1]["start"]
    header, keyfile = os.path.join(workdir, "header.tmp"), os.path.join(workdir, "pass.tmp")
    subprocess.run(["dd", f"if={disk}", f"of={header}", "bs=512", f"skip={start}", "count=32768",
                    "status=none"], check=True)
    with open(keyfile, "w") as f:
        f.write(passphrase)
    try:
        out = subprocess.run(["cryptsetup", "luksDump", "--dump-volume-key", "-q", "--key-file",
                              keyfile, header], capture_output=True, text=True).stdout
    finally:
        os.unlink(header)
        os.unlink(keyfile)
    dump = out.split("MK dump:", 1)[-1] if "MK dump:" in out else ""
    return "".join(dump.split()).replace(":", "")
