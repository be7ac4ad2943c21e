#!/usr/bin/env python3
"""Live heap by allocation site, minute by minute, from a heaptrack file.

heaptrack_print answers "what is live at the peak" and "what is leaked at
exit", but a creep asks another question: does anything still in use grow
with time? This reads heaptrack's own file (zstd-compressed text: `a` size
and backtrace of an allocation kind, `+`/`-` one allocated or freed, `c` a
timestamp in ms), finds in each minute the moment of least heap in use (so
requests in flight count as little as possible), and groups what is live
then by the first three src/main.rs frames of its backtrace.

    python3 tests/soak/heap_by_minute.py heaptrack.bgtasks.PID.zst [SITE ...]

prints the heap in use at each minute's quiet moment, the largest sites at
the last full minute, the sites that changed most since the first, and for
each SITE given (a substring such as `submitted:5666`) its series.

A caution learnt on issue 13: heaptrack records a realloc after the libc
call, so when another thread's malloc reuses the moved block's old address
in between, the old block is never seen freed. Such phantoms appear only
with more than one thread, at sites that grow a buffer, in steps that never
come back; compare with a run under `--threads 1` before calling it a leak.
"""

import collections
import subprocess
import sys


def lines(path):
    """Yields the lines of a heaptrack file."""
    proc = subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE, text=True, errors="replace")
    yield from proc.stdout
    proc.wait()


def quiet_moments(path):
    """Returns, for each minute, the ms timestamp at which the heap in use
    was least."""
    sizes, heap, best = [], 0, {}
    for line in lines(path):
        kind = line[0]
        if kind == "+":
            heap += sizes[int(line[2:], 16)]
        elif kind == "-":
            heap -= sizes[int(line[2:], 16)]
        elif kind == "a":
            sizes.append(int(line[2:].split()[0], 16))
        elif kind == "c":
            now = int(line[2:], 16)
            minute = now // 60000
            if minute not in best or heap < best[minute][1]:
                best[minute] = (now, heap)
    return {minute: at for minute, (at, _) in best.items()}


def snapshots(path, moments):
    """Returns the live count of each allocation kind at each moment, and
    what is needed to name the kinds' sites."""
    targets = sorted((at, minute) for minute, at in moments.items())
    strings, ips, traces, kinds = [""], [None], [None], []
    live, snaps, next_target = collections.Counter(), {}, 0
    for line in lines(path):
        kind = line[0]
        if kind == "+":
            live[int(line[2:], 16)] += 1
        elif kind == "-":
            live[int(line[2:], 16)] -= 1
        elif kind == "c":
            now = int(line[2:], 16)
            while next_target < len(targets) and now >= targets[next_target][0]:
                snaps[targets[next_target][1]] = (now, +live)
                next_target += 1
        elif kind == "a":
            size, trace = line[2:].split()
            kinds.append((int(size, 16), int(trace, 16)))
        elif kind == "s":
            text = line[2:].rstrip("\n")
            strings.append(text.split(" ", 1)[1] if " " in text else "")
        elif kind == "i":
            # ip, module, then (function, file, line) per frame, inlined
            # frames included.
            rest = line.split()[3:]
            frames = [
                (strings[int(rest[j], 16)], strings[int(rest[j + 1], 16)], int(rest[j + 2], 16))
                for j in range(0, len(rest) - 2, 3)
            ]
            ips.append(frames)
        elif kind == "t":
            ip, parent = line[2:].split()
            traces.append((int(ip, 16), int(parent, 16)))
    return snaps, kinds, ips, traces


def main():
    path, patterns = sys.argv[1], sys.argv[2:]
    snaps, kinds, ips, traces = snapshots(path, quiet_moments(path))
    names = {}

    def site(trace):
        """Names a backtrace by its first three frames in src/main.rs."""
        if trace not in names:
            found, t = [], trace
            while t and len(found) < 3:
                ip, t = traces[t]
                for function, file, line in ips[ip]:
                    if file.endswith("src/main.rs"):
                        short = function.split("::h")[0].replace("bgtasks::", "")
                        found.append(f"{short.replace('::_$u7b$$u7b$closure$u7d$$u7d$', '')}:{line}")
            names[trace] = " <- ".join(found[:3]) or "(outside src/main.rs)"
        return names[trace]

    by_minute = {}
    for minute, (now, live) in sorted(snaps.items()):
        sites = collections.Counter()
        for index, count in live.items():
            size, trace = kinds[index]
            sites[site(trace)] += size * count
        by_minute[minute] = sites
        print(f"minute {minute:3d}  quiet moment {now / 1000:8.1f} s  heap in use {sum(sites.values()) / 1024:8.1f} KiB")
    full = [m for m in by_minute if m >= 1][:-1] or list(by_minute)
    first, last = full[0], full[-1]
    print(f"\nlargest live sites at minute {last} (and at minute {first}), KiB:")
    for name, size in by_minute[last].most_common(15):
        print(f"{size / 1024:8.1f} ({by_minute[first][name] / 1024:8.1f})  {name}")
    print(f"\nlargest changes from minute {first} to {last}, KiB:")
    changed = set(by_minute[first]) | set(by_minute[last])
    for name in sorted(changed, key=lambda n: -abs(by_minute[last][n] - by_minute[first][n]))[:10]:
        print(f"{(by_minute[last][name] - by_minute[first][name]) / 1024:+8.1f}  {name}")
    for pattern in patterns:
        series = " ".join(
            f"{m}:{sum(s for n, s in by_minute[m].items() if pattern in n) / 1024:.1f}" for m in sorted(by_minute)
        )
        print(f"\n{pattern} by minute, KiB: {series}")


if __name__ == "__main__":
    main()
