#!/usr/bin/env bash
# Chaos check: three `shardpipe node` processes on loopback (every node may hold the coordinator, every node a seed)
# serve a generated ~134M-parameter Llama. A long greedy generation runs fault-free; then again while a worker
# process is SIGKILLed mid-way; then (a fresh node brought back) again while the node holding the coordinator is
# SIGKILLed, the client given every node as a contact point. Between the kills, node-3 is drained while a generation runs
# (`shardpipe drain`: its layers move live, its process leaves by itself), started again and rebalanced onto. Each faulted run must print exactly the fault-free
# tokens. Every connection runs mutual TLS with certificates made by `shardpipe cert`. Prints the time from each kill to the request's completion; the last line is the verdict (exit 0 only if
# both held). Usage: bash ops/chaos.sh   (needs the .NET SDK, as the README; stops everything it started)
set -uo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/shardpipe-chaos.XXXXXX)
bin="$work/bin"
declare -A pids=()
cleanup() { for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "building shardpipe into $bin" >&2
dotnet build -c Release -o "$bin" Host/ShardPipe.Host.csproj -nologo -v q 2>&1 | grep -E " error |rror\(s\)" >&2 || true
sp="$bin/shardpipe"
[ -x "$sp" ] || { echo "FAIL: build failed"; exit 1; }

model="$work/model"
echo "generating a Llama (hidden 768, 12 layers) in $model" >&2
"$sp" synth --out "$model" --preset llama-125m >/dev/null

export SHARDPIPE_TLS_PASSWORD=${SHARDPIPE_TLS_PASSWORD:-$(head -c 18 /dev/urandom | base64)}
"$sp" cert create-ca --dir "$work/certs" >/dev/null
for n in node-1 node-2 node-3; do "$sp" cert create-node "$n" --dir "$work/certs" >/dev/null; done
"$sp" cert create-client client --dir "$work/certs" >/dev/null
echo "shardpipe.tls { certificate = \"$work/certs/client.p12\", ca = \"$work/certs/ca.crt\" }" > "$work/client.conf"

base=${SHARDPIPE_BASE_PORT:-4153}
contacts="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
seeds="\"akka.tcp://shardpipe@127.0.0.1:$base\", \"akka.tcp://shardpipe@127.0.0.1:$((base + 1))\", \"akka.tcp://shardpipe@127.0.0.1:$((base + 2))\""
threads=$(( $(nproc) / 3 )); [ "$threads" -ge 1 ] || threads=1
start_node() {
  local i=$1 port=$((base + $1 - 1))
  cat > "$work/node-$i.conf" <<CONF
akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = $port }
akka.cluster { roles = [coordinator, worker], seed-nodes = [$seeds] }
shardpipe { node-name = "node-$i", devices = [ { device = cpu, budget = "2GiB" } ], compute-threads = $threads }
shardpipe.tls { certificate = "$work/certs/node-$i.p12", ca = "$work/certs/ca.crt" }
CONF
  "$sp" node --config "$work/node-$i.conf" >> "$work/node-$i.log" 2>&1 &
  pids[$i]=$!
  disown "$!"   # killed on purpose: no job-control notice
}
nodes_up() { "$sp" status --cluster "$contacts" --client-config "$work/client.conf" --json 2>/dev/null | sed -n 's/.*"nodes":\[\([^]]*\)\].*/\1/p' | tr ',' '\n' | grep -c node- || true; }
wait_nodes() {
  for _ in $(seq 1 90); do [ "$(nodes_up)" = "$1" ] && return 0; sleep 1; done
  echo "FAIL: the cluster did not reach $1 nodes; logs in $work" >&2; tail -n 20 "$work"/node-*.log >&2; exit 1
}
generate() { "$sp" generate --cluster "$contacts" --client-config "$work/client.conf" --model "$model" --input-ids "1,306,4966,304,5434,278,3186,29889" \
  --max-new-tokens 300 --ignore-eos --greedy --json 2>>"$work/client.log" | sed -n 's/.*"sequences":\(\[\[[^]]*\]\]\).*/\1/p'; }

# The cluster forms one node after another, so node-1 is the oldest and holds the coordinator.
start_node 1; sleep 3; start_node 2; start_node 3
wait_nodes 3
"$sp" load --cluster "$contacts" --client-config "$work/client.conf" --model "$model" --device-map balanced >&2 || { echo "FAIL: load"; exit 1; }
expected=$(generate)
[ -n "$expected" ] || { echo "FAIL: the fault-free generation produced nothing (see $work/client.log)"; exit 1; }
echo "fault-free run: $(echo "$expected" | tr ',' '\n' | wc -l) ids" >&2

# Runs a generation, SIGKILLs node $1 once it is under way, and checks the tokens; prints the seconds from kill to done.
faulted() {
  local victim=$1 out="$work/run-$1.txt"
  ( generate > "$out" ) &
  local gen=$!
  for _ in $(seq 1 100); do
    "$sp" status --cluster "$contacts" --client-config "$work/client.conf" --json 2>/dev/null | grep -q '"in_flight":[1-9]' && break; sleep 0.1
  done
  sleep 3
  local t0; t0=$(date +%s.%N)
  kill -9 "${pids[$victim]}"; unset "pids[$victim]"
  wait "$gen"
  local t1; t1=$(date +%s.%N)
  local secs; secs=$(echo "$t1 - $t0" | bc)
  if [ "$(cat "$out")" = "$expected" ]; then echo "ok: node-$victim killed mid-generation; done ${secs} s after the kill, tokens equal" >&2; return 0; fi
  echo "FAIL: node-$victim killed mid-generation; ${secs} s after the kill the tokens differ (or none came)" >&2; return 1
}

# Drains node $1 while a generation runs (its layers move to the others, the request keeps its tokens, the process ends
# by itself), then starts it again and rebalances layers back onto it while another generation runs.
drain_and_readd() {
  local node=$1 out="$work/run-drain.txt" ok=0
  ( generate > "$out" ) &
  local gen=$!
  for _ in $(seq 1 100); do
    "$sp" status --cluster "$contacts" --client-config "$work/client.conf" --json 2>/dev/null | grep -q '"in_flight":[1-9]' && break; sleep 0.1
  done
  sleep 3
  "$sp" drain --cluster "$contacts" --client-config "$work/client.conf" "node-$node" >&2 || ok=1
  wait "$gen"
  [ "$(cat "$out")" = "$expected" ] || { echo "FAIL: node-$node drained mid-generation; the tokens differ (or none came)" >&2; ok=1; }
  for _ in $(seq 1 60); do kill -0 "${pids[$node]}" 2>/dev/null || break; sleep 1; done
  if kill -0 "${pids[$node]}" 2>/dev/null || ! grep -q "left the cluster as asked" "$work/node-$node.log"; then
    echo "FAIL: drained node-$node did not leave by itself" >&2; ok=1
  fi
  unset "pids[$node]"
  [ "$ok" = 0 ] && echo "ok: node-$node drained mid-generation; tokens equal, the process left by itself" >&2
  start_node "$node"; wait_nodes 3
  out="$work/run-rebalance.txt"
  ( generate > "$out" ) &
  gen=$!
  sleep 4
  "$sp" rebalance --cluster "$contacts" --client-config "$work/client.conf" >&2 || ok=1
  wait "$gen"
  if [ "$(cat "$out")" = "$expected" ]; then echo "ok: node-$node re-added and rebalanced onto mid-generation; tokens equal" >&2
  else echo "FAIL: rebalance mid-generation; the tokens differ (or none came)" >&2; ok=1; fi
  return "$ok"
}

verdict=0
faulted 2 || verdict=1
start_node 2; wait_nodes 3   # a fresh node-2 rejoins, so that losing the next node still leaves a majority
drain_and_readd 3 || verdict=1  # maintenance: node-3 taken out live and put back
faulted 1 || verdict=1        # node-1 holds the coordinator singleton
if [ "$verdict" = 0 ]; then echo "PASS: a worker and the coordinator's node were killed mid-generation, and a node drained and re-added; every request finished with the fault-free tokens"
else echo "FAIL: see above (logs in $work)"; fi
exit "$verdict"
