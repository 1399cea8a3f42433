#!/usr/bin/env bash
# usage: run.sh BUILD_DIR CONSUMER_SOURCE_DIR [EXTRA_CXX_FLAGS]
set -euo pipefail
build="$1"; src="$2"; flags="${3:-}"
work="$(mktemp -d)"
dsrd_pid=""
cleanup() { [ -n "$dsrd_pid" ] && kill -9 "$dsrd_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
# Only the public doors (<module>/include/formica/<module>/) and the generated
# protos are installed: no internal or private header.
root="$(cd "$src/../../.." && pwd)"
stray=""
while IFS= read -r header; do
  module="${header#formica/}"; module="${module%%/*}"
  [ -f "$root/$module/include/$header" ] || stray="$stray $header"
done < <(cd "$work/prefix/include" && find formica -name '*.h' ! -name '*.pb.h' | sort)
if [ -n "$stray" ]; then echo "installed headers that are not public doors:$stray"; exit 1; fi
for module in common registry rpc dts dms dds; do
  for header in "$root/$module/include/formica/$module"/*.h; do
    [ -f "$work/prefix/include/formica/$module/$(basename "$header")" ] ||
      { echo "public header $header was not installed"; exit 1; }
  done
done
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" "${launcher[@]}" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" >/dev/null
cmake --build "$work/build" -j2 >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$work/prefix/bin/dsrd" --listen "127.0.0.1:$port" --data-dir "$work/data" --set push.warmup=0s \
  >"$work/dsrd.log" 2>&1 &
dsrd_pid=$!
for _ in $(seq 1 100); do grep -q "dsrd ready" "$work/dsrd.log" && break; sleep 0.1; done
if ! grep -q "dsrd ready" "$work/dsrd.log"; then
  echo "installed dsrd did not start:"; cat "$work/dsrd.log"; exit 1
fi
status=0
LD_LIBRARY_PATH="$work/prefix/lib:$work/prefix/lib64:${LD_LIBRARY_PATH:-}" \
  "$work/build/consumer" "127.0.0.1:$port" "$work" >"$work/stdout" 2>"$work/stderr" || status=$?
echo "--- consumer stdout"; cat "$work/stdout"
echo "--- consumer stderr"; cat "$work/stderr"
[ "$status" -eq 0 ] || { echo "consumer failed (exit $status)"; exit 1; }
# The program never called formica::InitLogging: the library's lines are on
# stderr, its stdout holds only what the program printed, and the lines sent
# to the program's log sink are on neither.
if grep -v '^consumer ' "$work/stdout"; then
  echo "libformica wrote the lines above to the program's stdout"; exit 1
fi
grep -q 'info \[formica\] registry session .* opened' "$work/stderr" ||
  { echo "libformica's log lines did not reach stderr"; exit 1; }
if grep 'stopped' "$work/stderr"; then
  echo "a line meant for the program's log sink reached stderr"; exit 1
fi
