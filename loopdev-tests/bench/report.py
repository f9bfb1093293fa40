#!/usr/bin/env python3
"""Turns the measurements of loopdev-tests/bench/run into docs/benchmarks.md, and the
unlock and lock times against N into docs/benchmarks.svg (plain SVG, no plotting library).

    report.py OUT_FILE MARKDOWN RUNS HOST_DESCRIPTION VM_MEM
"""
import os, statistics, sys
from collections import defaultdict

path, out, runs, host, mem = sys.argv[1:6]
samples, machine = defaultdict(list), ""
for line in open(path):
    key, _, value = line.strip().partition("=")
    if key == "machine":
        machine = value
    elif value.isdigit():
        samples[key].append(int(value) / 1000)  # µs -> ms

def med(key):
    return statistics.median(samples[key]) if samples.get(key) else None

def low(key):
    return min(samples[key]) if samples.get(key) else None

sizes = sorted({int(k.split(".")[1]) for k in samples if k.startswith("keepsake_unlock.")})
rows = []
rows.append("| N features | | keepsake unlock | bare unlock | ratio | busybox unlock | ratio | KDF alone | keepsake − KDF | bare − KDF | keepsake lock | bare lock | ratio | busybox lock | ratio |")
rows.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in sizes:
    for label, f in (("median", med), ("minimum", low)):
        ku, bu, xu, kdf = f(f"keepsake_unlock.{n}"), f(f"bare_unlock.{n}"), f(f"busybox_unlock.{n}"), f(f"kdf.{n}")
        kl, bl, xl = f(f"keepsake_lock.{n}"), f(f"bare_lock.{n}"), f(f"busybox_lock.{n}")
        rows.append(f"| {n if label == 'median' else ''} | {label} | {ku:.0f} ms | {bu:.0f} ms | **{ku / bu:.2f}** | {xu:.0f} ms | {ku / xu:.2f} | {kdf:.0f} ms | {ku - kdf:.0f} ms | {bu - kdf:.0f} ms | {kl:.0f} ms | {bl:.0f} ms | **{kl / bl:.2f}** | {xl:.0f} ms | {kl / xl:.2f} |")
create = ["| image | keepsake create | bare luksFormat + mkfs.ext4 | ratio |", "|---|---:|---:|---:|"]
for size in ("1G", "8G"):
    k, b = med(f"keepsake_create.{size}"), med(f"bare_create.{size}")
    if k and b:
        create.append(f"| {size} (sparse) | {k:.0f} ms | {b:.0f} ms | {k / b:.2f} |")
status, bare_status = med("status_json.100"), med("bare_status.100")
if status is None:
    status_text = "not measured (N=100 not in this run)."
elif bare_status is None:
    status_text = f"{status:.0f} ms (median)."
else:
    status_text = "\n".join([
        "| | keepsake --json status | findmnt --json + cryptsetup status | ratio |",
        "|---|---:|---:|---:|",
        f"| median | {status:.0f} ms | {bare_status:.0f} ms | **{status / bare_status:.2f}** |",
        f"| minimum | {low('status_json.100'):.0f} ms | {low('bare_status.100'):.0f} ms | **{low('status_json.100') / low('bare_status.100'):.2f}** |",
    ])

# The plot: unlock and lock time against N (log scale), keepsake and the bare tools, medians.
svg_path = os.path.splitext(out)[0] + ".svg"
W, H, left, top, plot_w, plot_h = 720, 400, 60, 40, 620, 270
series = [("keepsake unlock", "keepsake_unlock", "#1f77b4", ""), ("bare unlock", "bare_unlock", "#1f77b4", "6 4"),
          ("busybox unlock", "busybox_unlock", "#1f77b4", "2 3"),
          ("keepsake lock", "keepsake_lock", "#d62728", ""), ("bare lock", "bare_lock", "#d62728", "6 4"),
          ("busybox lock", "busybox_lock", "#d62728", "2 3")]
values = [med(f"{k}.{n}") for _, k, _, _ in series for n in sizes]
top_value = max(values + [1]) * 1.1
import math
def x(n):
    lo, hi = math.log10(min(sizes)), math.log10(max(sizes))
    return left + (plot_w * (math.log10(n) - lo) / (hi - lo) if hi > lo else plot_w / 2)
def y(v):
    return top + plot_h - plot_h * v / top_value
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">unlock and lock time (ms, median of {runs}) against N features</text>']
step = next(s for s in (50, 100, 200, 250, 500, 1000, 2000) if top_value / s <= 8)
v = 0
while v <= top_value:
    svg.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
    svg.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
    v += step
for n in sizes:
    svg.append(f'<text x="{x(n):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{n}</text>')
svg.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 36}" text-anchor="middle">N features (log scale)</text>')
for label, key, colour, dash in series:
    points = " ".join(f"{x(n):.1f},{y(med(f'{key}.{n}')):.1f}" for n in sizes)
    svg.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
    for n in sizes:
        svg.append(f'<circle cx="{x(n):.1f}" cy="{y(med(f"{key}.{n}")):.1f}" r="3" fill="{colour}"/>')
for i, (label, _, colour, dash) in enumerate(series):
    # Two rows: unlock above, lock below.
    lx, ly = left + (i % 3) * 200, H - 32 + (i // 3) * 20
    svg.append(f'<line x1="{lx}" x2="{lx + 24}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
    svg.append(f'<text x="{lx + 30}" y="{ly + 4}">{label}</text>')
svg.append("</svg>")
open(svg_path, "w").write("\n".join(svg) + "\n")

text = f"""# Benchmarks

Generated by `loopdev-tests/bench/run {runs}`; do not edit by hand. Medians and minimums of {runs} runs,
keepsake and the bare tools alternating in the same boot of the test VM, on the same volume
and keyslot (argon2id, 8 MiB, 4 iterations, 1 thread: the same KDF cost for both, kept
small so that the comparison is about everything but the KDF).

- Host: {host}
- VM: qemu TCG (no KVM), -m {mem}; the guest sees {machine}. Volumes are container
  files on an ext4 virtio disk, so loop + dm-crypt + ext4 are all real.
- "bare unlock" is `cryptsetup open` + `mount` + N `mount --bind`; "bare lock" is N
  `umount` + `umount` + `cryptsetup close`, as shell commands, with util-linux's `mount` and
  `umount`: those of Tails and Debian, copied into the guest from the host. "busybox" is
  the same script with the guest's own busybox `mount` and `umount`, which do much less
  (no libmount, no libblkid) and start faster: a stricter baseline than any live system
  has, shown for comparison with earlier runs, which used it.
- keepsake binds the same N folders: the volume's default features (Persistent folder,
  Additional Software) are disabled, and each run checks that the volume is mounted once
  plus N binds, nothing more.

## Unlock and lock

![unlock and lock time against N](benchmarks.svg)

{chr(10).join(rows)}

"KDF alone" is `cryptsetup open --test-passphrase` on the same keyslot; "− KDF" subtracts
its median (its minimum on the minimum line). keepsake's own cost is its checks (preflight,
the ext4 superblock, config validation), the binds with their nosuid,nodev remounts, and
the runtime record; the bare script starts one `mount` process per bind instead. The
ratios in bold are against the bare script; the others against its busybox variant. Each
command reads the mount table, the block devices and /proc/keys once (scenario
20-scans-once counts them). Lock also walks /proc for mount namespaces that hold the
volume, drops the page cache (`drop_caches`, tens of ms under TCG) and verifies that
nothing of the volume is left, which the bare script does not do. keepsake closes the
mapping without loading the LUKS header (device-mapper's table is all closing needs), so
its lock does not start libcryptsetup's crypto backend; `cryptsetup close` does.

## status --json with 100 features

Against the bare tools' way to tell the same: `findmnt --json` + `cryptsetup status`.

{status_text}

## Create

{chr(10).join(create)}
"""
open(out, "w").write(text)
print(text)
