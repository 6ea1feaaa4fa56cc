#!/usr/bin/env bash
# A closer-to-production check: 3 ShardPipe nodes in 3 network namespaces with their own IP addresses, joined by
# a bridge (real routing between interfaces, not loopback). node-3 has no local checkpoint and streams its slice.
# The client runs in a 4th namespace. Mutual TLS with certificates made by `shardpipe cert` for each node's address.
# Needs root and iproute2. Usage: sudo ops/netns-cluster.sh [MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
work=$(mktemp -d /tmp/shardpipe-netns.XXXXXX)
bin="$work/bin"
net=${SHARDPIPE_NETNS_SUBNET:-10.77.0}
br=spbr0
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for i in 1 2 3 4; do ip netns del "sp$i" 2>/dev/null || true; done
  ip link del "$br" 2>/dev/null || true
}
trap cleanup EXIT

dotnet build -c Release -o "$bin" Host/ShardPipe.Host.csproj -nologo -v q 2>&1 | grep -E " error" >&2 || true
sp="$bin/shardpipe"
model=${1:-$work/model}
[ -f "$model/config.json" ] || "$sp" synth --out "$model" --preset tiny >/dev/null

export SHARDPIPE_TLS_PASSWORD=${SHARDPIPE_TLS_PASSWORD:-$(head -c 18 /dev/urandom | base64)}
"$sp" cert create-ca --dir "$work/certs" >/dev/null
for i in 1 2 3; do "$sp" cert create-node "node-$i" --dir "$work/certs" --host "$net.$i" >/dev/null; done
"$sp" cert create-client client --dir "$work/certs" >/dev/null
echo "shardpipe.tls { certificate = \"$work/certs/client.p12\", ca = \"$work/certs/ca.crt\" }" > "$work/client.conf"

ip link add "$br" type bridge
ip addr add "$net.254/24" dev "$br"
ip link set "$br" up
for i in 1 2 3 4; do
  ip netns add "sp$i"
  ip link add "veth$i" type veth peer name eth0 netns "sp$i"
  ip link set "veth$i" master "$br" up
  ip -n "sp$i" addr add "$net.$i/24" dev eth0
  ip -n "sp$i" link set eth0 up
  ip -n "sp$i" link set lo up
done

for i in 1 2 3; do
  local_ckpt=on; [ "$i" = 3 ] && local_ckpt=off
  cat > "$work/node-$i.conf" <<CONF
akka.remote.dot-netty.tcp { hostname = "$net.$i", port = 4053 }
akka.cluster { roles = [coordinator, worker], seed-nodes = ["akka.tcp://shardpipe@$net.1:4053", "akka.tcp://shardpipe@$net.2:4053", "akka.tcp://shardpipe@$net.3:4053"] }
shardpipe { node-name = "node-$i", devices = [ { device = cpu, budget = "1GiB" } ], local-checkpoints = $local_ckpt }
shardpipe.tls { certificate = "$work/certs/node-$i.p12", ca = "$work/certs/ca.crt" }
CONF
  ip netns exec "sp$i" "$sp" node --config "$work/node-$i.conf" > "$work/node-$i.log" 2>&1 &
  pids+=($!)
done

for _ in $(seq 1 60); do
  n=$(ip netns exec sp4 "$sp" status --cluster "$net.1:4053,$net.2:4053,$net.3:4053" --client-config "$work/client.conf" --json 2>/dev/null | sed -n 's/.*"nodes":\[\([^]]*\)\].*/\1/p' | tr ',' '\n' | grep -c node- || true)
  [ "$n" = 3 ] && break
  sleep 1
done
[ "$n" = 3 ] || { echo "cluster did not form; logs in $work" >&2; tail -n 20 "$work"/node-*.log >&2; exit 1; }
ip netns exec sp4 "$sp" load --cluster "$net.1:4053,$net.2:4053,$net.3:4053" --client-config "$work/client.conf" --model "$model"
ip netns exec sp4 "$sp" generate --cluster "$net.1:4053,$net.2:4053,$net.3:4053" --client-config "$work/client.conf" --model "$model" --input-ids "1,2,3,4,5" --max-new-tokens 8 --json
echo "ok: 3 namespaced nodes loaded and ran $model (logs in $work)" >&2
