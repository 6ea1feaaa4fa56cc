#!/usr/bin/env bash
# Starts a 3-process ShardPipe cluster on loopback (every node a worker that may hold the coordinator, every node a
# seed; node-3 has no local checkpoint and streams its slice), loads a generated multi-shard Llama across it, generates, and
# stops every process on exit. Every connection — Akka.Remote, bulk weights, activation links, the client — runs mutual
# TLS with certificates made by `shardpipe cert` (SHARDPIPE_TLS=off runs the nodes --insecure instead).
# Usage: ops/local-cluster.sh [MODEL_DIR]   (needs the .NET SDK, as the README)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/shardpipe-ops.XXXXXX)
bin="$work/bin"
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "building shardpipe into $bin" >&2
dotnet build -c Release -o "$bin" Host/ShardPipe.Host.csproj -nologo -v q 2>&1 | grep -E "error|Warn|Elapsed" >&2 || true
sp="$bin/shardpipe"

model=${1:-$work/model}
if [ ! -f "$model/config.json" ]; then
  echo "generating a multi-shard Llama in $model" >&2
  "$sp" synth --out "$model" --preset tiny >/dev/null
fi

tls_on=${SHARDPIPE_TLS:-on}
client=()
node_flags=()
tls_conf() { :; }
if [ "$tls_on" = on ]; then
  export SHARDPIPE_TLS_PASSWORD=${SHARDPIPE_TLS_PASSWORD:-$(head -c 18 /dev/urandom | base64)}
  "$sp" cert create-ca --dir "$work/certs" >/dev/null
  for n in node-1 node-2 node-3; do "$sp" cert create-node "$n" --dir "$work/certs" >/dev/null; done
  "$sp" cert create-client client --dir "$work/certs" >/dev/null
  # A certificate turns TLS on (shardpipe.tls.enabled = auto).
  tls_conf() { echo "shardpipe.tls { certificate = \"$work/certs/$1.p12\", ca = \"$work/certs/ca.crt\" }"; }
  tls_conf client > "$work/client.conf"
  client=(--client-config "$work/client.conf")
else
  node_flags=(--insecure)   # on loopback, and asked for: plaintext
fi

base=${SHARDPIPE_BASE_PORT:-4053}
contacts="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
for i in 1 2 3; do
  port=$((base + i - 1))
  local_ckpt=on; [ "$i" = 3 ] && local_ckpt=off
  cat > "$work/node-$i.conf" <<CONF
akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = $port }
akka.cluster { roles = [coordinator, worker], seed-nodes = ["akka.tcp://shardpipe@127.0.0.1:$base", "akka.tcp://shardpipe@127.0.0.1:$((base + 1))", "akka.tcp://shardpipe@127.0.0.1:$((base + 2))"] }
shardpipe { node-name = "node-$i", devices = [ { device = cpu, budget = "1GiB" } ], local-checkpoints = $local_ckpt }
$(tls_conf "node-$i")
CONF
  "$sp" node --config "$work/node-$i.conf" "${node_flags[@]}" > "$work/node-$i.log" 2>&1 &
  pids+=($!)
done

echo "waiting for 3 nodes" >&2
for _ in $(seq 1 60); do
  n=$("$sp" status --cluster "$contacts" "${client[@]}" --json 2>/dev/null | sed -n 's/.*"nodes":\[\([^]]*\)\].*/\1/p' | tr ',' '\n' | grep -c node- || true)
  [ "$n" = 3 ] && break
  sleep 1
done
[ "$n" = 3 ] || { echo "cluster did not form; logs in $work" >&2; tail -n 20 "$work"/node-*.log >&2; exit 1; }

"$sp" load --cluster "$contacts" "${client[@]}" --model "$model" --device-map balanced
"$sp" generate --cluster "$contacts" "${client[@]}" --model "$model" --input-ids "1,2,3,4,5" --max-new-tokens 8 --json
"$sp" status --cluster "$contacts" "${client[@]}"
"$sp" unload --cluster "$contacts" "${client[@]}"
echo "ok: 3-process cluster (TLS $tls_on) loaded and ran $model (logs in $work)" >&2
