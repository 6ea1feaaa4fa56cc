#!/usr/bin/env bash
# Fuzzes every parser that reads outside input (safetensors header, shard index, config.json, generation_config.json,
# the message codec, chunk reassembly, activation-link and bulk frames, the side-channel opening, tokenizer.json and
# tokenizer.model) with many more cases than the test suite runs, and prints each target's cases, crashes and time.
#   ops/fuzz.sh [CASES_PER_TARGET]        (default 100000; config.json and the tokenizers run a quarter of that)
# A crash fails the run and names the FsCheck seed that replays it (Tests/Fuzz/FuzzEngine.cs).
set -uo pipefail
cd "$(dirname "$0")/.."
cases=${1:-100000}
report=$(mktemp /tmp/shardpipe-fuzz.XXXXXX)
SHARDPIPE_FUZZ_CASES=$cases SHARDPIPE_FUZZ_REPORT=$report \
  dotnet test Tests/ShardPipe.Tests.csproj -c Release --filter "Category=Fuzz" 2>&1 | grep -E "Passed!|Failed!|error|fuzz " >&2
status=${PIPESTATUS[0]}
printf '%-24s %10s %8s %9s\n' target cases crashes seconds
sort "$report" | awk '{ printf "%-24s %10d %8d %9.1f\n", $1, $2, $3, $4; n += $2; c += $3 } END { printf "%-24s %10d %8d\n", "total", n, c }'
rm -f "$report"
exit "$status"
