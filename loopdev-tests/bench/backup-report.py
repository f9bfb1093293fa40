#!/usr/bin/env python3
"""Turns the measurements of loopdev-tests/bench/backup into docs/backup-benchmarks.md and
the plot beside it (SVG, written here by hand: no plotting library).

    backup-report.py SAMPLES OUT_FILE RUNS OPENSSL_BYTES_PER_S THREADS HOST BUSY_BEFORE BUSY_AFTER LINKED_BYTES_PER_S
"""
import os, statistics, sys
from collections import defaultdict

samples_path, out, runs, ossl, threads, host = sys.argv[1:7]
busy_before, busy_after, linked = sys.argv[7:10]
samples, cpu, size = defaultdict(list), defaultdict(list), {}
for line in open(samples_path):
    tree, key, value, *cpu_ms = line.split()
    if key == "bytes":
        size[tree] = int(value)
    else:
        samples[(tree, key)].append(int(value))
        cpu[(tree, key)].extend(int(c) for c in cpu_ms)
o = float(ossl) / (1 << 20)
# The cipher as keepsake links it (aws-lc), MiB/s on one core.
k = float(linked) / (1 << 20)
trees = [("mixed", "1 GiB: 15 × 64 MiB + 2048 × 32 KiB"), ("small", "20 000 × 8 KiB in 100 folders")]

def rate(tree, key):
    return size[tree] / (1 << 20) / (statistics.median(samples[(tree, key)]) / 1000)

def runs_of(tree, key):
    return ", ".join(f"{ms}" for ms in samples[(tree, key)])

def cpu_of(tree, key):
    return statistics.median(cpu[(tree, key)])

def wall_of(tree, key):
    return statistics.median(samples[(tree, key)])

# The least CPU time any encrypted archive of a tree costs here: the floor's (every file
# read and written out once) and the cipher's over the tree's bytes at `speed` MiB/s
# (openssl's: any archiver's; keepsake's own library's).
def least_cpu(tree, speed):
    return cpu_of(tree, "floor_backup") + size[tree] / (1 << 20) / speed * 1000

tables = []
for tree, shape in trees:
    rows = [f"### {tree} tree ({shape}, {size[tree] / (1 << 20):.0f} MiB)", "",
            f"| | MiB/s (median of {runs}) | ÷ tar+age, same direction | ÷ tar --xattrs --acls + age | ÷ openssl (one core) | CPU ms (median) | each run, ms |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for key, name, peer in [
        ("keepsake2_backup", f"keepsake backup, format 2, {threads} threads", "tarage_backup"),
        ("keepsake_backup", f"keepsake backup, format 1, {threads} threads", "tarage_backup"),
        ("keepsake1_backup", "keepsake backup, format 1, 1 thread", "tarage_backup"),
        ("tarage_backup", "tar \\| age -r", "tarage_backup"),
        ("taragex_backup", "tar --xattrs --acls \\| age -r", "tarage_backup"),
        ("keepsake_restore", f"keepsake restore, {threads} threads", "tarage_restore"),
        ("keepsake1_restore", "keepsake restore, 1 thread", "tarage_restore"),
        ("tarage_restore", "age -d \\| tar x", "tarage_restore"),
        ("floor_backup", "the floor: every file read and written out once, one thread, no cipher", "tarage_backup"),
        ("floorread_backup", "the floor's reading alone (written to /dev/null)", "tarage_backup"),
        ("pfloor_backup", f"the floor on {threads} threads, no cipher", "tarage_backup"),
        ("pfloorseal_backup", f"the floor on {threads} threads, sealed by openssl's build of the cipher", "tarage_backup"),
    ]:
        v = rate(tree, key)
        # Backups also against tar keeping what format 2 keeps.
        x = f"{v / rate(tree, 'taragex_backup'):.2f}" if key.endswith("_backup") else ""
        rows.append(f"| {name} | {v:.0f} | {v / rate(tree, peer):.2f} | {x} | {v / o:.2f} | {cpu_of(tree, key):.0f} | {runs_of(tree, key)} |")
    least = least_cpu(tree, o)
    best = least / int(threads)
    own = least_cpu(tree, k)
    own_best = own / int(threads)
    rows += ["", f"The least CPU time an encrypted archive of this tree costs here: the floor's "
             f"{cpu_of(tree, 'floor_backup'):.0f} ms and the cipher's {least - cpu_of(tree, 'floor_backup'):.0f} ms "
             f"({size[tree] / (1 << 20):.0f} MiB at {o:.0f} MiB/s), {least:.0f} ms. On {threads} CPUs, all busy all the "
             f"time, that is {best:.0f} ms of wall time at best: {wall_of(tree, 'tarage_backup') / best:.2f}× "
             f"`tar | age`'s median ({wall_of(tree, 'tarage_backup'):.0f} ms, {cpu_of(tree, 'tarage_backup'):.0f} ms of CPU). "
             f"keepsake's format 2 took {wall_of(tree, 'keepsake2_backup'):.0f} ms, "
             f"{cpu_of(tree, 'keepsake2_backup'):.0f} ms of CPU: {cpu_of(tree, 'keepsake2_backup') / least:.2f}× the least, "
             f"{cpu_of(tree, 'keepsake2_backup') / wall_of(tree, 'keepsake2_backup'):.2f} CPUs busy on average "
             f"(`tar | age`: {cpu_of(tree, 'tarage_backup') / wall_of(tree, 'tarage_backup'):.2f}). "
             f"The cipher keepsake links (aws-lc) seals at {k:.0f} MiB/s here ({o / k:.2f}× slower than openssl's): "
             f"with it the least is {own:.0f} ms of CPU, {own_best:.0f} ms of wall time at best, "
             f"{wall_of(tree, 'tarage_backup') / own_best:.2f}× `tar | age`; format 2's CPU time is "
             f"{cpu_of(tree, 'keepsake2_backup') / own:.2f}× that least. "
             f"An archiver that reads the files on one thread, as keepsake does (its other thread seals and "
             f"writes), takes at least the floor's reading alone, {wall_of(tree, 'floorread_backup'):.0f} ms: "
             f"{wall_of(tree, 'tarage_backup') / wall_of(tree, 'floorread_backup'):.2f}× `tar | age` at most. "
             f"The floor on {threads} threads, sealed (every file read, sealed by openssl's build of the cipher and "
             f"written out, with no format, no names, attributes or order, and no key derivation) took "
             f"{wall_of(tree, 'pfloorseal_backup'):.0f} ms, {cpu_of(tree, 'pfloorseal_backup'):.0f} ms of CPU "
             f"({cpu_of(tree, 'pfloorseal_backup') / wall_of(tree, 'pfloorseal_backup'):.2f} CPUs busy): "
             f"{wall_of(tree, 'tarage_backup') / wall_of(tree, 'pfloorseal_backup'):.2f}× `tar | age`. It does less "
             f"than any archive must, with a faster build of the cipher than keepsake's; a cleverer one could do a "
             f"little better (its listing is on one thread, its writes one at a time). keepsake's format 2 took "
             f"{wall_of(tree, 'keepsake2_backup') / wall_of(tree, 'pfloorseal_backup'):.2f}× its time."]
    tables.append("\n".join(rows))

# The plot: throughput per tree shape, one bar per tool and direction, openssl as a line.
bars = [("keepsake2_backup", "keepsake backup (format 2)", "#1f6f3f"), ("tarage_backup", "tar | age", "#9ac4a6"),
        ("keepsake_restore", "keepsake restore", "#274b8f"), ("tarage_restore", "age -d | tar x", "#a3b6dd")]
W, H, left, top, bottom = 640, 340, 60, 40, 60
plot_h = H - top - bottom
top_value = max([o] + [rate(t, k) for t, _ in trees for k, _, _ in bars]) * 1.1
y = lambda v: top + plot_h - v / top_value * plot_h
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">Backup and restore throughput (MiB/s, median of {runs})</text>']
step = 10 ** len(str(int(top_value / 5))) / 10
step = max(s for s in (step, 2 * step, 5 * step, 10 * step) if s <= max(top_value / 3, step))
v = 0.0
while v <= top_value:
    svg.append(f'<line x1="{left}" x2="{W - 20}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
    svg.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
    v += step
group_w = (W - 20 - left) / len(trees)
bar_w = group_w * 0.7 / len(bars)
for g, (tree, shape) in enumerate(trees):
    x0 = left + g * group_w + group_w * 0.15
    for b, (key, label, colour) in enumerate(bars):
        v = rate(tree, key)
        x = x0 + b * bar_w
        svg.append(f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bar_w - 4:.1f}" height="{top + plot_h - y(v):.1f}" fill="{colour}"/>')
        svg.append(f'<text x="{x + bar_w / 2 - 2:.1f}" y="{y(v) - 4:.1f}" text-anchor="middle" font-size="10">{v:.0f}</text>')
    svg.append(f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{tree} tree</text>')
    svg.append(f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{top + plot_h + 32}" text-anchor="middle" font-size="10">{shape}</text>')
svg.append(f'<line x1="{left}" x2="{W - 20}" y1="{y(o):.1f}" y2="{y(o):.1f}" stroke="#c0392b" stroke-dasharray="6 4"/>')
svg.append(f'<text x="{W - 22}" y="{y(o) - 5:.1f}" text-anchor="end" fill="#c0392b">openssl speed, one core: {o:.0f}</text>')
for b, (key, label, colour) in enumerate(bars):
    lx = left + b * 140
    svg.append(f'<rect x="{lx}" y="{H - 16}" width="10" height="10" fill="{colour}"/>')
    svg.append(f'<text x="{lx + 14}" y="{H - 7}">{label}</text>')
svg.append("</svg>")
svg_path = os.path.splitext(out)[0] + ".svg"
open(svg_path, "w").write("\n".join(svg) + "\n")

text = f"""# Backup benchmarks

Generated by `loopdev-tests/bench/backup {runs}`; do not edit by hand. Two trees of random
data in tmpfs, backed up and restored by keepsake's archive code (examples/archive_bench:
the same code as `keepsake backup` and `restore`, without a volume around it; the key
derived at a small argon2id cost, 8 MiB and one pass, which keepsake's times include: about
10 ms here, where `age -r` derives none). `keepsake backup` writes format 2 (a
listing of every entry with its attributes, then the data: two passes over the tree, about
6 system calls a file where format 1 needs 4, the listing's on two threads, the data read
from the descriptors the listing opened); format 1, which restore still reads, is
timed beside it, and the restores are of format 1 archives, side by side in the same runs with
`tar | age` on the same tree, the backups also with `tar --xattrs --acls | age` (tar keeping
the extended attributes and ACLs format 2 keeps: docs/sync-benchmarks.md's tar baseline;
the first ratio, against plain `tar | age`, is the one issue 26's goal is judged by), and against the cipher's single-core speed as
`openssl speed -evp chacha20-poly1305` (16 KiB blocks) reports it: {o:.0f} MiB/s; the same
cipher as keepsake links it (aws-lc, `archive_bench cipher`: 64 KiB chunks sealed in place
from memory, as the engine does) seals at {k:.0f} MiB/s.

Host: {host}; its CPUs were {busy_before} busy with other work just before the runs and
{busy_after} just after (3 s each). keepsake runs with {threads} threads (one per CPU, the default: the thread
reading and writing the files, which seals or opens a batch itself rather than wait, and
{int(threads) - 1} more, which also write the sealed archive out in order; a restore writes
the files on one more) and with one; its archive stream then takes at most
{2 * int(threads) + 2} MiB (1 MiB with one thread). The machine is shared, so absolute figures move from run to run;
the ratios come from runs interleaved on the same machine at the same time, in an order
that rotates from run to run so that no measurement always follows the same one. CPU
time is user + system time of every process and thread of the command (bash's `times`
before and after). The floor is loopdev-tests/bench/read-floor.c: every file opened, read
and written out once into one file, on one thread (openat, fstat, read, close a file), with
no format, no names or attributes and no cipher: what any archive of the tree does at least.
The floor on {threads} threads is loopdev-tests/bench/parallel-floor.c: the same work, the files
listed first and then taken one at a time by each thread, each writing 1 MiB at a time, and
once more with every 64 KiB sealed by openssl's ChaCha20-Poly1305 before it goes out.

![throughput per tree shape](backup-benchmarks.svg)

{(chr(10) + chr(10)).join(tables)}
"""
open(out, "w").write(text)
print(text)
