#!/usr/bin/env bash
# A 3-member Ballast cluster on this machine, for trying things out (etcd's Procfile layout):
# members infra1..3 with clients on 127.0.0.1:2379, :22379, :32379 and peers on :2380, :22380,
# :32380.
#
#   deploy/local-cluster.sh start [DIR]    # data and logs under DIR (default ./local-cluster)
#   deploy/local-cluster.sh status [DIR]
#   deploy/local-cluster.sh stop [DIR]
#
# BALLAST (default: ballast on PATH, else target/release or target/debug) picks the binary;
# BASE_PORT (default 2379) and PORT_STEP (default 20000, the distance between members) move
# the ports.
set -euo pipefail

cmd=${1:-start}
dir=${2:-./local-cluster}
base=${BASE_PORT:-2379}
step=${PORT_STEP:-20000}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${BALLAST:-$(command -v ballast || true)}
for b in "$here/target/release/ballast" "$here/target/debug/ballast"; do
  [[ -n "$bin" ]] || { [[ -x "$b" ]] && bin=$b; }
done
[[ -n "$bin" ]] || { echo "no ballast binary: build it or set BALLAST" >&2; exit 1; }

client() { echo $((base + (i - 1) * step)); }
peer() { echo $((base + 1 + (i - 1) * step)); }
cluster=""
for i in 1 2 3; do
  cluster+="${cluster:+,}infra$i=http://127.0.0.1:$(peer)"
done

case $cmd in
  start)
    mkdir -p "$dir"
    for i in 1 2 3; do
      "$bin" --name "infra$i" --data-dir "$dir/infra$i.ballast" \
        --listen-client-urls "http://127.0.0.1:$(client)" \
        --advertise-client-urls "http://127.0.0.1:$(client)" \
        --listen-peer-urls "http://127.0.0.1:$(peer)" \
        --initial-advertise-peer-urls "http://127.0.0.1:$(peer)" \
        --initial-cluster "$cluster" --initial-cluster-token local-cluster \
        --initial-cluster-state new \
        >>"$dir/infra$i.log" 2>&1 &
      echo $! >"$dir/infra$i.pid"
    done
    for i in 1 2 3; do
      for _ in $(seq 1 100); do
        if curl -fsS "http://127.0.0.1:$(client)/health" >/dev/null 2>&1; then break; fi
        sleep 0.1
      done
      curl -fsS "http://127.0.0.1:$(client)/health" >/dev/null ||
        { echo "infra$i did not become healthy; see $dir/infra$i.log" >&2; exit 1; }
    done
    eps=""
    for i in 1 2 3; do eps+="${eps:+,}127.0.0.1:$(client)"; done
    echo "cluster up: etcdctl --endpoints=$eps endpoint status -w table"
    ;;
  status)
    for i in 1 2 3; do
      printf 'infra%s 127.0.0.1:%s ' "$i" "$(client)"
      curl -sS "http://127.0.0.1:$(client)/health" || echo down
      echo
    done
    ;;
  stop)
    for i in 1 2 3; do
      if [[ -f "$dir/infra$i.pid" ]]; then
        kill "$(cat "$dir/infra$i.pid")" 2>/dev/null || true
        rm -f "$dir/infra$i.pid"
      fi
    done
    ;;
  *)
    echo "usage: $0 start|status|stop [DIR]" >&2
    exit 2
    ;;
esac
