#!/usr/bin/env bash
# Runs the official `openai` npm client against `shardpipe serve` on an embedded 3-node cluster: a generated Llama
# with a byte-level tokenizer, a completion and a streamed completion, both checked against `shardpipe generate`.
# (The test suite runs the same client, chat completions included: Tests/Host/OpenAiClientTests.cs.)
# Needs the .NET SDK, node and npm (the npm registry reachable for `npm install openai`).
# Usage: ops/openai-check.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
port=${1:-8321}
work=$(mktemp -d /tmp/shardpipe-openai.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

dotnet build -c Release -o "$work/bin" Host/ShardPipe.Host.csproj -nologo -v q 2>&1 | grep -E " error |rror CS" >&2 || true
sp="$work/bin/shardpipe"
"$sp" synth --out "$work/model" --preset tiny >/dev/null
prompt="Hello from the openai client"
expected=$("$sp" generate --model "$work/model" --prompt "$prompt" --max-new-tokens 12 --greedy --json 2>/dev/null \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.stringify(JSON.parse(s).text[0])))')

"$sp" serve --model "$work/model" --cluster embedded:3 --port "$port" > "$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "serve did not come up; log: $work/serve.log" >&2; tail -20 "$work/serve.log" >&2; exit 1; }

(cd "$work" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund openai >/dev/null)
cp ops/openai-client.mjs "$work/"
printf '{"baseURL": "http://127.0.0.1:%s/v1", "model": "%s", "prompt": "%s", "maxTokens": 12, "expected": %s, "chat": null}' \
  "$port" "$work/model" "$prompt" "$expected" > "$work/check.json"
node "$work/openai-client.mjs" "$work/check.json"
