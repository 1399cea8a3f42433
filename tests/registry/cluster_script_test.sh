#!/usr/bin/env bash
# ./formica cluster up|status|down as a user runs it: three etcd members,
# three dsrd nodes, and the dtsd and dmsd groups of three from
# deploy/cluster/, on their fixed loopback ports.
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
[ "$(grep -c ' running ' <<<"$status")" = 12 ] || fail "want 12 running processes"
grep -q 'cluster local' <<<"$status" || fail "no cluster name"
for n in 1 2 3; do grep -q "dsrd$n .*127.0.0.1:737$n" <<<"$status" || fail "dsrd$n not a member"; done
grep -q 'leader' <<<"$status" || fail "no etcd leader shown"
"$src/formica" cluster up && fail "a second 'cluster up' must refuse"

# A write on one node is read on another.
"$ctl" --registry 127.0.0.1:7371 config put demo/greeting hello
[ "$("$ctl" --registry 127.0.0.1:7373 config get demo/greeting | tail -1)" = hello ] ||
  fail "node 3 does not read node 1's write"

# The groups: each has one leader, which serves; the broker group created
# demo.events on every member.
dms_leader="$(sed -n 's/.*dmsd group leader: dmsd\([123]\) .*/\1/p' <<<"$status")"
dts_leader="$(sed -n 's/.*dtsd group leader: dtsd\([123]\) .*/\1/p' <<<"$status")"
[ -n "$dms_leader" ] && [ -n "$dts_leader" ] || fail "a group has no leader"
"$ctl" --registry 127.0.0.1:7371 --dts "127.0.0.1:738$((dts_leader + 3))" dts ls >/dev/null ||
  fail "the dtsd leader does not serve"
"$ctl" --registry 127.0.0.1:7371 --dms "127.0.0.1:739$((dms_leader + 3))" dms topics |
  grep -q demo.events || fail "the dmsd leader does not list demo.events"
follower=$((dms_leader % 3 + 1))
out="$("$ctl" --registry 127.0.0.1:7371 --dms "127.0.0.1:739$((follower + 3))" dms topics 2>&1)" &&
  fail "a dmsd follower served: $out"
grep -q "leader" <<<"$out" || fail "a dmsd follower's refusal names no leader: $out"

# kill -9 of the broker group's leader: another member leads within 10 s
# and serves the same topics.
kill -9 "$(cat "$FORMICA_CLUSTER_DATA/dmsd$dms_leader.pid")"
next=""
for _ in $(seq 1 100); do
  next="$(sed -n 's/.*dmsd group leader: dmsd\([123]\) .*/\1/p' <<<"$("$src/formica" cluster status)")"
  [ -n "$next" ] && [ "$next" != "$dms_leader" ] && break
  sleep 0.1
done
[ -n "$next" ] && [ "$next" != "$dms_leader" ] || fail "no new dmsd leader after killing dmsd$dms_leader"
"$ctl" --registry 127.0.0.1:7371 --dms "127.0.0.1:739$((next + 3))" dms topics |
  grep -q demo.events || fail "the new dmsd leader does not list demo.events"

# A killed node shows as stopped; the others still serve.
kill -9 "$(cat "$FORMICA_CLUSTER_DATA/dsrd1.pid")"
sleep 0.3
status="$("$src/formica" cluster status)"
grep -q 'dsrd1  stopped' <<<"$status" || fail "dsrd1 not shown stopped"
"$ctl" --registry 127.0.0.1:7372 config get demo/greeting >/dev/null || fail "node 2 stopped serving"

"$src/formica" cluster down --clean
[ ! -d "$FORMICA_CLUSTER_DATA" ] || fail "--clean left the data"
for port in 2379 22379 32379 7372 7373 7384 7385 7386 7394 7395 7396; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then fail "port $port still served after down"; fi
done
echo "cluster script: ok"
