#!/usr/bin/env bash
# ./formica cluster up|status|down as a user runs it: three etcd members and
# three dsrd nodes from deploy/cluster/, on their fixed loopback ports.
#   cluster_script_test.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src="$1"
export FORMICA_BIN_DIR="$2" FORMICA_NO_BUILD=1
export FORMICA_CLUSTER_DATA; FORMICA_CLUSTER_DATA="$(mktemp -d)"
ctl="$FORMICA_BIN_DIR/tools/formicactl"
trap '"$src/formica" cluster down --clean >/dev/null 2>&1 || true' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$src/formica" cluster up
status="$("$src/formica" cluster status)"
echo "$status"
[ "$(grep -c ' running ' <<<"$status")" = 6 ] || fail "want 6 running processes"
grep -q 'cluster local' <<<"$status" || fail "no cluster name"
for n in 1 2 3; do grep -q "dsrd$n .*127.0.0.1:737$n" <<<"$status" || fail "dsrd$n not a member"; done
grep -q 'leader' <<<"$status" || fail "no etcd leader shown"
"$src/formica" cluster up && fail "a second 'cluster up' must refuse"

# A write on one node is read on another.
"$ctl" --registry 127.0.0.1:7371 config put demo/greeting hello
[ "$("$ctl" --registry 127.0.0.1:7373 config get demo/greeting | tail -1)" = hello ] ||
  fail "node 3 does not read node 1's write"

# A killed node shows as stopped; the others still serve.
kill -9 "$(cat "$FORMICA_CLUSTER_DATA/dsrd1.pid")"
sleep 0.3
status="$("$src/formica" cluster status)"
grep -q 'dsrd1  stopped' <<<"$status" || fail "dsrd1 not shown stopped"
"$ctl" --registry 127.0.0.1:7372 config get demo/greeting >/dev/null || fail "node 2 stopped serving"

"$src/formica" cluster down --clean
[ ! -d "$FORMICA_CLUSTER_DATA" ] || fail "--clean left the data"
for port in 2379 22379 32379 7372 7373; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then fail "port $port still served after down"; fi
done
echo "cluster script: ok"
