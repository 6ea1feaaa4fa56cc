#!/usr/bin/env bash
# Profiles one shardpipe command with perf, JIT-compiled .NET methods named, and prints where the CPU time went:
# per thread, the top self symbols and the top ShardPipe frames (inclusive).
#
#   bash ops/profile.sh [--seconds S] -- bench decode --speculate --json
#
# --seconds S: only the last S seconds of the run (the measured part of most benchmarks; default: all of it).
# Needs perf (linux-perf) and python3; writes perf.data and the symbol map under $PROFILE_DIR (default /tmp/shardpipe-profile).
#
# Two runtime settings make the JIT's code visible to perf: DOTNET_PerfMapEnabled=1 writes /tmp/perf-PID.map (method
# addresses and names), and DOTNET_EnableWriteXorExecute=0 runs that code where it was written — with W^X on, .NET
# executes it through a second mapping of an anonymous file, and perf files every sample of it under that file
# ("doublemapper (deleted)") at an offset the map does not name: 70 % of a decode profile came out as [unknown].
set -euo pipefail
seconds=0
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    *) echo "usage: $0 [--seconds S] -- <shardpipe arguments>" >&2; exit 2 ;;
  esac
done
[[ "${1:-}" == "--" ]] && shift
[[ $# -gt 0 ]] || { echo "usage: $0 [--seconds S] -- <shardpipe arguments>" >&2; exit 2; }
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
dll="$root/Host/bin/Release/net10.0/shardpipe.dll"
[[ -f "$dll" ]] || { echo "build first: dotnet build Cluster.sln -c Release" >&2; exit 2; }
out="${PROFILE_DIR:-/tmp/shardpipe-profile}"
mkdir -p "$out"

DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0 \
  perf record -F 1999 -g -o "$out/perf.data" -- dotnet "$dll" "$@"

pid=$(perf script -i "$out/perf.data" -F pid 2>/dev/null | sort | uniq -c | sort -rn | head -1 | awk '{print $2}')
perf script -i "$out/perf.data" -F comm,tid,time,ip,sym 2>/dev/null > "$out/samples.txt"
python3 - "$out/samples.txt" "/tmp/perf-$pid.map" "$seconds" <<'PY'
import bisect, collections, re, sys
samples_file, map_file, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
methods = []
try:
    for line in open(map_file, errors="replace"):
        parts = line.rstrip("\n").split(" ", 2)
        if len(parts) == 3:
            try: methods.append((int(parts[0], 16), int(parts[1], 16), parts[2]))
            except ValueError: pass
except FileNotFoundError:
    print(f"no {map_file}: JIT-compiled methods stay unnamed", file=sys.stderr)
methods.sort()
starts = [m[0] for m in methods]
def name(ip, sym):
    i = bisect.bisect_right(starts, ip) - 1
    if i >= 0 and ip < methods[i][0] + methods[i][1]:
        n = re.sub(r"\(.*", "", methods[i][2]).split(" ")[-1]
        return n.replace("ShardPipe.Modeling.", "SP.").replace("ShardPipe.Actors.", "SA.")[:90]
    sym = re.sub(r"\(.*", "", sym).strip()
    return sym[:90] if sym else "[unknown]"
header = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+(\d+\.\d+):")
samples, current = [], None
for line in open(samples_file, errors="replace"):
    if not line.strip():
        if current: samples.append(current)
        current = None
        continue
    if not line.startswith("\t"):
        m = header.match(line)
        current = (float(m.group(3)), re.sub(r"\d+$", "#", m.group(1).strip()), []) if m else None
        continue
    if current is None: continue
    fields = line.strip().split(" ", 1)
    try: ip = int(fields[0], 16)
    except ValueError: continue
    current[2].append(name(ip, fields[1] if len(fields) > 1 else ""))
if current: samples.append(current)
if not samples: sys.exit("no samples")
if seconds > 0:
    end = max(s[0] for s in samples)
    samples = [s for s in samples if s[0] > end - seconds]
total = len(samples)
print(f"{total} samples")
threads = collections.Counter(s[1] for s in samples)
print("-- threads"); [print(f"{100*v/total:6.2f}% {k}") for k, v in threads.most_common(10)]
own = collections.Counter(s[2][0] if s[2] else "?" for s in samples)
print("-- self"); [print(f"{100*v/total:6.2f}% {k}") for k, v in own.most_common(30)]
inclusive = collections.Counter()
for s in samples:
    for f in set(s[2]):
        if f.startswith("SP.") or f.startswith("SA."): inclusive[f] += 1
print("-- ShardPipe frames, inclusive"); [print(f"{100*v/total:6.2f}% {k}") for k, v in inclusive.most_common(30)]
PY
