#!/usr/bin/env python3
"""Turns the measurements of loopdev-tests/bench/unplug into docs/unplug-benchmarks.md.

    unplug-report.py OUT_FILE HOST_LOG MARKDOWN KEY=VALUE...

OUT_FILE holds the guest's KS-OUT lines (bench/unplug.sh says which); HOST_LOG is the boot's
<phase>.log.host, where lib/vm.sh timestamped each KS-HOST request with the host's clock;
the KEY=VALUE arguments describe the run (rounds, commit, host, mem, elapsed, keepsake, load,
date).
"""
import os, re, statistics, subprocess, sys, textwrap
from collections import defaultdict

out_path, host_log, md_path = sys.argv[1:4]
run = dict(a.split("=", 1) for a in sys.argv[4:])
rounds = int(run["rounds"])
# The commit bench/unplug read when it started (main may move on during a run); else HEAD now.
commit = run.get("commit") or subprocess.run(
    ["git", "-C", os.path.dirname(os.path.abspath(md_path)), "log", "-1", "--format=%h"],
    capture_output=True, text=True).stdout.strip()


def num(x):
    try:
        return float(x)
    except ValueError:
        return None


pulls = {}                     # (kind, round) -> (key_ms, mapping_ms, t0_unix, mark_unix)
hooks = {}                     # (kind, round) -> (seen_ns, first_ms, first_rc, done_ms)
nows = {}                      # (kind, round) -> (key_ms, exit_ms, wiped_ms, total_ms, rc)
writer = defaultdict(list)     # kind -> ["ended" | "alive"]
unlock, replug, single = defaultdict(list), [], {}
for line in open(out_path):
    key, _, value = line.strip().partition("=")
    f = value.split()
    if key == "pull" and len(f) == 6:
        pulls[(f[0], int(f[1]))] = tuple(num(x) for x in f[2:6])
    elif key == "hook" and len(f) == 6:
        hooks[(f[0], int(f[1]))] = tuple(num(x) for x in f[2:6])
    elif key == "hook":
        hooks[(f[0], int(f[1]))] = (None, None, None, None)
    elif key == "now" and len(f) >= 7:
        nows[(f[0], int(f[1]))] = tuple(num(x) for x in f[2:7])
    elif key == "writer":
        writer[f[0]].append(f[2])
    elif key == "unlock":
        unlock[f[0]].append(int(f[2]))
    elif key == "replug":
        replug.append(int(f[1]))
    else:
        single[key] = value

# The host's log: "UNIX-TIME mark KIND ROUND GUEST-UNIX: received", then "UNIX-TIME unplug
# usb: received". The guest took GUEST-UNIX just before it printed the mark, and printed the
# unplug request right after; the host received the mark at H_mark and the unplug request at
# H_unplug, and sent device_del at once. The guest's uevent came at T0 (guest clock). So the
# time from device_del to the uevent is (T0 - GUEST-UNIX) - (H_unplug - H_mark) - c, where c
# is how long the mark line took from the guest's clock reading to the host (the console):
# unknown but positive, so what is computed is an upper bound.
latency, offset = {}, []
mark = None
for line in open(host_log) if os.path.exists(host_log) else []:
    m = re.match(r"(\d+\.\d+) mark (\S+) (\d+) (\d+\.\d+): received", line)
    if m:
        mark = (m.group(2), int(m.group(3)), float(m.group(4)), float(m.group(1)))
        continue
    m = re.match(r"(\d+\.\d+) unplug usb: received", line)
    if m and mark:
        kind, r, g1, h_mark = mark
        p = pulls.get((kind, r))
        if p and p[2] is not None:
            latency[(kind, r)] = ((p[2] - g1) - (float(m.group(1)) - h_mark)) * 1000
        offset.append((h_mark - g1) * 1000)
        mark = None

SHORT = {
    "keepsake-end": "keepsake, end", "luks-end": "luksSuspend hook", "dm-end": "dmsetup hook",
    "keepsake-wipe": "keepsake, wipe", "luks-wipe": "luksSuspend hook, idle",
    "now": "lock --now", "luks-now": "luksSuspend + lock --force",
}
NAMES = {
    "keepsake-end": "keepsake's watcher, `--on-removal end` (default)",
    "luks-end": "shell hook: `cryptsetup luksSuspend` first",
    "dm-end": "shell hook: `dmsetup remove --force` first",
    "keepsake-wipe": "keepsake's watcher, `--on-removal wipe`",
    "luks-wipe": "shell hook: `cryptsetup luksSuspend` first",
}


def stats(values):
    """(n, median, min, max) of the values that are numbers."""
    v = [x for x in values if x is not None]
    if not v:
        return 0, None, None, None
    return len(v), statistics.median(v), min(v), max(v)


def ms(x):
    if x is None:
        return "–"
    return f"{x:.0f} ms" if x >= 100 else f"{x:.1f} ms"


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "–"


def pull_values(kind, field):
    return [pulls[(k, r)][field] for (k, r) in sorted(pulls) if k == kind]


def missing(kind, field):
    return sum(1 for (k, r) in pulls if k == kind and pulls[(k, r)][field] is None)


def row(label, writing, measure, values, none_count=0):
    n, med, lo, hi = stats(values)
    note = f" ({none_count} not within 8 s)" if none_count else ""
    return f"| {label} | {writing} | {measure} | {n}{note} | **{ms(med)}** | {ms(lo)} | {ms(hi)} |"


pull_rows = ["| contender | live user writing | until | rounds | median | min | max |", "|---|---|---|---:|---:|---:|---:|"]
for kind, writing in (("keepsake-end", "yes"), ("luks-end", "yes"), ("dm-end", "yes"), ("keepsake-wipe", "no"), ("luks-wipe", "no")):
    if not any(k == kind for k, _ in pulls):
        continue
    pull_rows.append(row(NAMES[kind], writing, "no key in the table", pull_values(kind, 0), missing(kind, 0)))
    pull_rows.append(row("", "", "no mapping", pull_values(kind, 1), missing(kind, 1)))


def ratio_row(text, a_vals, b_vals):
    _, am, _, ah = stats(a_vals)
    _, bm, _, bh = stats(b_vals)
    return f"| {text} | {ratio(am, bm)} | {ratio(ah, bh)} |"


ratio_rows = ["| keepsake ÷ baseline | of the medians | of the maxima |", "|---|---:|---:|"]
for ks, base, label in (("keepsake-end", "luks-end", "writing, `end` ÷ luksSuspend hook"),
                        ("keepsake-end", "dm-end", "writing, `end` ÷ dmsetup hook"),
                        ("keepsake-wipe", "luks-wipe", "idle, `wipe` ÷ luksSuspend hook")):
    for field, what in ((0, "no key"), (1, "no mapping")):
        ratio_rows.append(ratio_row(f"{label}: {what}", pull_values(ks, field), pull_values(base, field)))


def now_values(kind, field):
    return [nows[(k, r)][field] for (k, r) in sorted(nows) if k == kind]


now_rows = ["| command (the live user writing) | until, from the command's start | rounds | median | min | max |",
            "|---|---|---:|---:|---:|---:|"]
for kind, label, fields in (
        ("now", "`keepsake --json lock --now`", ((0, "no key in the table (key-clock)"),
                                                  (2, "`keys_wiped_ms` (keepsake's own: the wipe alone)"),
                                                  (1, "the command's exit: volume locked"),
                                                  (3, "wall time, `date` to `date`"))),
        ("luks-now", "`cryptsetup luksSuspend`, then `dmsetup wipe_table` + `keepsake lock --force`",
         ((0, "no key in the table (key-clock)"), (1, "luksSuspend's exit"),
          (3, "wall time to the volume locked, `date` to `date`")))):
    first = True
    for field, what in fields:
        n, med, lo, hi = stats(now_values(kind, field))
        now_rows.append(f"| {label if first else ''} | {what} | {n} | **{ms(med)}** | {ms(lo)} | {ms(hi)} |")
        first = False
now_ratio = ["| keepsake ÷ baseline | of the medians | of the maxima |", "|---|---:|---:|",
             ratio_row("no key in the table, from the command's start", now_values("now", 0), now_values("luks-now", 0)),
             ratio_row("volume locked (wall time)", now_values("now", 3), now_values("luks-now", 3))]
now_fail = [f"{k} round {r}: exit {int(v[4])}" for (k, r), v in sorted(nows.items()) if v[4]]

# The hooks: how late they saw the partition go, and what their first command did.
hook_text = []
for kind in ("luks-end", "dm-end", "luks-wipe"):
    hs = [(r, hooks[(k, r)]) for (k, r) in sorted(hooks) if k == kind]
    if not hs:
        continue
    seen = [(h[0] / 1e9 - pulls[(kind, r)][2]) * 1000 for r, h in hs
            if h[0] is not None and (kind, r) in pulls and pulls[(kind, r)][2] is not None]
    firsts = [h[1] for _, h in hs]
    failed = sum(1 for _, h in hs if h[2])
    codes = sorted({int(h[2]) for _, h in hs if h[2]})
    _, sm, _, sh = stats(seen)
    _, fm, _, fh = stats(firsts)
    _, dm_, _, dh = stats([h[3] for _, h in hs])
    cmd = "`cryptsetup luksSuspend`" if kind.startswith("luks") else "`dmsetup remove --force --deferred`"
    hook_text.append(
        f"| {SHORT[kind]}{' (writing)' if kind.endswith('-end') else ''} | {ms(sm)} / {ms(sh)} | {cmd}: {ms(fm)} / {ms(fh)}; failed in **{failed} of {len(hs)}**"
        f"{' (exit ' + ', '.join(map(str, codes)) + ')' if codes else ''} | {ms(dm_)} / {ms(dh)} |")

writers = "; ".join(f"{SHORT.get(k, k)}: ended in {v.count('ended')} of {len(v)}" for k in SHORT for v in [writer.get(k)] if v)
ln, lmed, llo, lhi = stats(list(latency.values()))
latency_rows = ["| pulls | rounds | median | min | max |", "|---|---:|---:|---:|---:|"]
for kind in ("keepsake-end", "luks-end", "dm-end", "keepsake-wipe", "luks-wipe"):
    n, med, lo, hi = stats([v for (k, r), v in latency.items() if k == kind])
    if n:
        latency_rows.append(f"| {NAMES[kind]}{', writing' if kind.endswith('-end') else ''} | {n} | {ms(med)} | {ms(lo)} | {ms(hi)} |")
latency_rows.append(f"| all | {ln} | **{ms(lmed)}** | {ms(llo)} | {ms(lhi)} |")
_, omed, olo, ohi = stats(offset)
unlock_all = [x for v in unlock.values() for x in v]
_, umed, ulo, uhi = stats(unlock_all)
_, rmed, rlo, rhi = stats(replug)

# Each round, as measured: no key / no mapping, ms after the removal event.
kinds_seen = [k for k in ("keepsake-end", "luks-end", "dm-end", "keepsake-wipe", "luks-wipe") if any(x == k for x, _ in pulls)]
each = ["| round | " + " | ".join(kinds_seen) + " | now: key / locked | luks-now: key / locked |",
        "|---:|" + "---:|" * (len(kinds_seen) + 2)]


def cell(v):
    return "none" if v is None else f"{v:.0f}"


for r in range(1, rounds + 1):
    cells = []
    for k in kinds_seen:
        p = pulls.get((k, r))
        cells.append(f"{cell(p[0])} / {cell(p[1])}" if p else "–")
    for k in ("now", "luks-now"):
        n_ = nows.get((k, r))
        cells.append(f"{cell(n_[0])} / {cell(n_[3])}" if n_ else "–")
    each.append(f"| {r} | " + " | ".join(cells) + " |")

versions = single.get("versions", "").split()
tools = (f"cryptsetup {versions[0]}, libdevmapper {versions[1]}, psmisc fuser {versions[2]}"
         if len(versions) >= 3 else single.get("versions", "?"))
elapsed = int(run["elapsed"])

def brief(kind, field):
    n, med, lo, hi = stats(pull_values(kind, field) if kind in SHORT and not kind.endswith("now") else now_values(kind, field))
    return f"{ms(med)} (max {ms(hi)})"


luks_failed = sum(1 for (k, r), h in hooks.items() if k.startswith("luks") and h[2])
luks_runs = sum(1 for (k, r) in hooks if k.startswith("luks"))
summary = textwrap.fill(
    f"In short, medians over {rounds} rounds, each with its maximum: with the live user writing, "
    f"keepsake's watcher had the key out of dm-crypt's table {brief('keepsake-end', 0)} after the kernel's "
    f"removal event, and the mapping gone after {brief('keepsake-end', 1)}. A shell hook that polls for "
    f"the stick and runs `cryptsetup luksSuspend` took {brief('luks-end', 0)} to the key and "
    f"{brief('luks-end', 1)} to the mapping, and `luksSuspend` failed in {luks_failed} of the {luks_runs} "
    f"pulls of the luksSuspend hooks, writing or not (the key went with their next command, "
    f"`dmsetup remove --force`); one that runs "
    f"`dmsetup remove --force` first took {brief('dm-end', 0)} and {brief('dm-end', 1)}. With nobody "
    f"writing, keepsake's `--on-removal wipe` took {brief('keepsake-wipe', 0)} and {brief('keepsake-wipe', 1)}. "
    f"On command, the key was out of the table {brief('now', 0)} after `keepsake lock --now` started, "
    f"against {brief('luks-now', 0)} for `cryptsetup luksSuspend`; lock --now's own `keys_wiped_ms`, "
    f"the wipe alone after its start-up, was {brief('now', 2)}.", width=92)

text = f"""# Pull the stick, lose the key: how fast

Generated by loopdev-tests/bench/unplug; do not edit by hand (`loopdev-tests/bench/unplug {rounds}`,
{run['keepsake']}{f' from the tree at commit {commit}' if commit else ''}; run on {run['date']}, the whole run took
{elapsed // 60} min {elapsed % 60} s). Issue 27: when a device under an unlocked volume is removed,
keepsake's watcher wipes the volume key from the kernel; `keepsake lock --now` does the same on
command. This measures how fast, against what one could script today without keepsake.

**All of this runs under qemu's TCG emulation (no KVM), on a host shared with other work:
every figure is slower, and noisier, than on real hardware.** What matters are the ratios
and the orders of magnitude, measured side by side in the same boot.

{summary}

- Host: {run['host']}; load average {run['load']}.
- VM: qemu TCG (`-accel tcg -cpu max -smp 1`), -m {run['mem']}; the guest sees {single.get('machine', '?')},
  clock source {single.get('clocksource', '?')}. Real dm-crypt (Debian's cloud kernel), ext4, a tmpfs root as
  on a live system. The stick is a virtio disk backed by a file on the host (GPT, a 64 MiB
  system partition, keepsake's persistence partition), hot-unplugged by the host (qemu
  `device_del`: an ACPI eject, after which the guest's kernel removes the disk as when a
  stick is pulled) and plugged back in after each pull. As on a live system, keepsake runs
  from the stick itself: its binary is on the stick's system partition, mounted read-only
  (its shared libraries stay in RAM), so the pull takes the watcher's own file away. Tools: {tools}, from the host's Debian 12.
- {rounds} rounds. Each round runs seven contenders, one after the other, in an order that
  rotates from round to round: five pulls of the stick and two wipes on command. Every one
  starts from a fresh `keepsake unlock` (small test KDF: argon2id 8 MiB, 4 iterations; not
  part of any figure) of the same volume.
- "The live user writing": a process of uid 1000 (`setpriv --reuid 1000`) appends random
  data to one open file in `~/Persistent` without pause; at least 2 MiB are written before
  the pull or the command.

## What is measured, from when

- **Pulls** are timed by lib/unplug-clock, inside the guest: t0 is the arrival of the
  kernel's first `remove` uevent for the partition or its disk on a netlink socket of its
  own (the kernel's removal event, not the host's `device_del`); from then on it asks
  device-mapper every millisecond, by ioctl, until **no key in the table** (the crypt target's
  key reads all zeros, as dm-crypt's key wipe leaves it, or the crypt target or the mapping
  is gone) and until **no mapping** (the device-mapper device is removed). Its 8 s bound
  ends a measurement; a figure missing from it is counted as "not within 8 s".
- **Wipes on command** are timed by bench/key-clock (same test of the table, every
  millisecond) from just before it forks the command: to no key in the table, and to the
  command's exit. `keys_wiped_ms` is what `keepsake --json lock --now` reports itself: the
  wipe alone, timed inside keepsake once it has read the mounts and chosen the volume, not
  its start-up. The wall times are `/usr/bin/date +%s%N` before and after, in the shell.

## Pulling the stick

Milliseconds after the kernel's removal event.

{chr(10).join(pull_rows)}

{chr(10).join(ratio_rows)}

The contenders:

- **keepsake's watcher** (`keepsake unlock` arms it): it hears the removal on its own
  netlink socket, suspends the mapping without flushing, has dm-crypt wipe its key and puts
  an error table in its place, then (`end`) kills the processes holding the volume's files,
  detaches the mounts, drops the page cache and removes the mapping. With `wipe`, nobody
  was writing, so the mapping can go as soon as the mounts are detached.
- **The shell hooks** (bench/unplug.sh, `up_hook`): keepsake unlocks, then its watcher is
  killed (`kill -9` of the pid `keepsake status` shows), so that it does not act. A busybox
  shell started before the pull (as a boot script or a udev rule's program would be) reads
  the volume's mounts, then polls `/sys/class/block/PARTITION` every 10 ms (a `read -t 0.01`
  on a FIFO: busybox's `sleep` is a program, {int(single.get('poll_round_us', '0')) / 1000:.1f} ms a round of the loop here),
  and when the partition is gone runs:
  - *luksSuspend first*: `cryptsetup luksSuspend NAME`, then `dmsetup remove --force
    --deferred NAME` (a table that fails I/O in place of the crypt one, which frees the key;
    the mapping removed once nothing holds it), then with the writer `fuser -k -m` on each of
    the volume's mounts, then `umount -l` of each. Without the error table, an unmount of a
    suspended mapping waits forever, and a process blocked in it cannot be killed.
  - *dmsetup first*: the same without `luksSuspend`: `dmsetup remove --force --deferred`
    is the first command, and the key goes with the crypt table it replaces.

  The hooks' own steps (median / max): when the loop saw the partition gone, after the
  kernel's removal event (this includes reading the clock, a run of `/usr/bin/date`:
  {int(single.get('date_us', '0')) / 1000:.0f} ms here with nothing else running); the first command's duration and how
  often it failed; when the hook was done, after it saw the partition gone:

  | hook | saw the partition gone | first command | done |
  |---|---:|---|---:|
{chr(10).join('  ' + h for h in hook_text)}

  `cryptsetup luksSuspend` fails once the stick is gone ("suspend ioctl ... failed:
  Input/output error"), leaving the key in place: its device-mapper suspend flushes (the
  file system is frozen and written out first), and the writes cannot reach the stick. In
  the luksSuspend hook the key goes only with the next command, `dmsetup remove --force`.
  keepsake suspends without a flush (noflush, skip lockfs): what was not yet written is
  lost either way, the stick being gone.

  Whether the live user's writer was ended (by the watcher, or by the hook's `fuser -k`,
  or by `lock --now` / `lock --force`): {writers or 'not recorded'}.

## Wiping on command

{chr(10).join(now_rows)}

{chr(10).join(now_ratio)}

`cryptsetup luksSuspend` followed directly by `keepsake lock --force` does not work with the
live user writing: the writer is blocked in the suspended mapping and cannot be killed, so
`lock --force` gives up (exit 5 after 6.5 s in a trial run of this bench) and anything that
syncs afterwards waits forever. The baseline therefore puts an error table in place (`dmsetup wipe_table`)
before `lock --force`, as keepsake's own wipe does. `luksSuspend` flushes the live user's
dirty pages to the stick before it wipes the key; `lock --now` does not (they are lost).
{('Failures: ' + '; '.join(now_fail) + '.') if now_fail else ''}

## From the host's device_del to the guest's uevent

Just before each pull the guest reads its clock and prints `KS-HOST mark KIND ROUND TIME`,
then `KS-HOST unplug usb`; the host logs when each line arrived ({os.path.basename(host_log)}) and
sends `device_del` on the second. (t0 − guest time of the mark) − (host's unplug − host's
mark) is then an upper bound of the time from the host's `device_del` to the guest kernel's
removal event (it also holds the console's delivery of the mark line). Differences are
taken on each clock apart: the guest's wall clock, set from the emulated RTC at boot, was
{ms(abs(omed) if omed is not None else None)} {'behind' if (omed or 0) >= 0 else 'ahead of'} the host's.

{chr(10).join(latency_rows)}

Each pull starts after `sync` and `echo 3 > /proc/sys/vm/drop_caches` (untimed), so that
every contender meets the same caches. Before any removal event the kernel invalidates the
cached pages of the disk's partitions, among them the mounted system partition: in trial
runs without the cache drop this took 0.5 to 2.3 s (under TCG) in the hooks' rounds, where
keepsake's binary on that partition was cached but mapped by no one (the watcher killed),
and about 20 ms in keepsake's rounds, where the watcher keeps it mapped and locked.

## What is not measured

- Real hardware. On a real machine the kernel learns of a pulled USB stick from the USB
  host controller and the hub (then usb-storage or uas and the SCSI layer remove the disk):
  that delay, before the removal event, is not here; a virtio disk's ACPI eject stands for
  it. Everything after the event runs on the same kernel code as on real hardware, but
  under TCG, slower.
- KVM: it hangs on these machines, so none of this ran with hardware virtualisation.
- Whether the key is gone from RAM, not only from dm-crypt's table, and whether the live
  user's data is: scenario 24 (`loopdev-tests/run 24-pull-the-stick`) dumps the guest's RAM
  after a pull and scans it for the key and a canary. The page cache drop, the kill of the
  writer and the unmounts are timed here only as part of "no mapping".
- The hooks' programs on the pulled stick. Here the shell, `cryptsetup`, `dmsetup`, `fuser`
  and every shared library are in the guest's initramfs, in RAM; on a live system they
  would be on the stick's squashfs, gone with it, and a hook that starts them after the pull
  works only if they are all still in the page cache. keepsake's binary is on the pulled
  stick here, and its watcher has its code locked in memory and runs no program.
- `--on-removal shutdown`, a container file on a second stick (its loop device), a volume
  opened at boot and armed with `keepsake watch`, several volumes at once.
- The time the kernel takes before its removal event on a live system, where the stick's
  system partition holds the squashfs of the whole running system and much of it is in the
  page cache: its invalidation comes before the event (see above), so before anything can
  act on it, keepsake's watcher included.
- A udev rule (there is no udevd in the guest), busybox `mdev` or `uevent` hooks: they would
  add their own dispatch to the shell hook's times; the hook here polls instead.
- Kernel messages of level below 3 reach the emulated serial console, slowly under TCG:
  keepsake's own report line and the ext4 errors of a writer still writing to the error
  table. They are part of the times above, as they would be (faster) on real hardware.
- The bench's own steps, not part of any figure: an unlock took {ms(umed)} (median; {ms(ulo)} to
  {ms(uhi)}), and the stick came back {ms(rmed)} (median) after the guest asked for the replug.

## Each round

No key / no mapping, in ms after the removal event for the pulls; no key / volume locked
(wall time), in ms after the command's start, for the wipes on command. "none": not within
the clock's 8 s. keepsake-end and -wipe: keepsake's watcher, `--on-removal end` (the live
user writing) and `wipe`; luks-end and dm-end: the shell hooks, luksSuspend or dmsetup
first (the live user writing); luks-wipe: the luksSuspend hook, nobody writing; now:
`keepsake lock --now`; luks-now: `cryptsetup luksSuspend`, then `dmsetup wipe_table` +
`keepsake lock --force`. The order of the seven rotated from round to round.

{chr(10).join(each)}
"""
open(md_path, "w").write(text)
print(text)
