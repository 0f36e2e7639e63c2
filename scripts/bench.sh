#!/usr/bin/env bash
# make bench: measures a real `flotilla up` on this machine, each figure
# beside its reference in the same run (see docs/benchmarks.md), and prints
# one JSON line per figure. BENCH_SHORT=1 (make bench-short, run by CI so
# the benchmarks cannot rot) runs everything briefly and smaller.
#
# Everything runs on loopback, in a temporary data directory, and is
# stopped and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

short=${BENCH_SHORT:-}
port=${BENCH_PORT:-27900}
out=${BENCH_OUT:-}
pass="bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
work=$(mktemp -d /tmp/flotilla-bench.XXXXXX)
chmod 755 "$work" # local VMs run as users of their own when this runs as root
dir=$work/data
up_pid=

stop_up() {
	if [[ -n $up_pid ]] && kill -0 "$up_pid" 2>/dev/null; then
		kill "$up_pid"
		wait "$up_pid" 2>/dev/null || true
	fi
	up_pid=
}
finish() {
	set +e
	stop_up
	for f in "$dir"/vms/*/agent.pid; do
		[[ -f $f ]] && kill -9 -- "-$(cat "$f")" 2>/dev/null
	done
	rm -rf "$work"
}
trap finish EXIT

emit() {
	set -- "${1//$'\t'/ }" # JSON strings hold no raw tabs (go test's columns)
	echo "$1"
	if [[ -n $out ]]; then echo "$1" >>"$out"; fi
}

echo "bench: building" >&2
# Into the work directory, which every local VM's user can read (the
# checkout may not be), flotilla-agent and flotilla-node beside flotilla as
# `make run` has them.
mkdir -m 755 "$work/bin"
go build -ldflags "-X main.version=0.1.0-bench" -o "$work/bin/" ./cmd/flotilla ./cmd/flotilla-agent ./cmd/flotilla-node
(cd loadtest && GOWORK=off go build -o "$work/fleetbench" ./cmd/fleetbench)
flotilla=$work/bin/flotilla

"$flotilla" admin initial-setup admin "$pass" --port "$port" --data-dir "$dir" >/dev/null

# start_up starts flotilla up and sets started_ms to how long it took to
# answer.
start_up() {
	local t0 t1
	t0=$(date +%s%N)
	"$flotilla" up --data-dir "$dir" --port "$port" >>"$work/up.log" 2>&1 &
	up_pid=$!
	for _ in $(seq 1200); do
		if curl -sf "http://127.0.0.1:$port/api/v1/status" >/dev/null; then
			t1=$(date +%s%N)
			started_ms=$(((t1 - t0) / 1000000))
			return 0
		fi
		kill -0 "$up_pid" 2>/dev/null || { tail -20 "$work/up.log" >&2; return 1; }
		sleep 0.05
	done
	echo "bench: flotilla up did not answer" >&2
	return 1
}

# rss_kb sums the resident memory of pids and their children.
rss_kb() {
	local total=0 pid
	for pid in "$@"; do
		total=$((total + $(ps -o rss= -p "$pid" 2>/dev/null || echo 0)))
		for c in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
			total=$((total + $(ps -o rss= -p "$c" 2>/dev/null || echo 0)))
		done
	done
	echo "$total"
}

start_up
cold=$started_ms
stop_up
start_up
warm=$started_ms
emit "{\"figure\":\"start\",\"firstStartMs\":$cold,\"warmStartMs\":$warm,\"target\":\"warm start < 1 s\"}"

sleep "${BENCH_IDLE_WAIT:-10}"
postmaster=$(head -1 "$dir/postgres/postmaster.pid")
up_kb=$(rss_kb "$up_pid")
pg_kb=$(rss_kb "$postmaster")
emit "{\"figure\":\"idle-memory\",\"flotillaUpMB\":$((up_kb / 1024)),\"postgresMB\":$((pg_kb / 1024)),\"totalMB\":$(((up_kb + pg_kb) / 1024)),\"target\":\"< 250 MB\"}"

pg_url=$(grep -o '"databaseURL": *"[^"]*"' "$dir/config/settings.json" | cut -d'"' -f4)
if [[ -n $short ]]; then
	args=(-c 4 -d 2s -one 2 -many 10)
else
	args=(-c 8 -d 10s -one 9 -many 100)
fi
"$work/fleetbench" -api "http://127.0.0.1:$port" -password "$pass" -pg "$pg_url" "${args[@]}" -hold 5s >"$work/fleet.json" &
fb=$!
while kill -0 "$fb" 2>/dev/null && ! grep -q '"holding"' "$work/fleet.json"; do sleep 0.2; done
agents=$(pgrep -f "flotilla-agent --gateway" || true)
if [[ -n $agents ]]; then
	n=0 sum=0 most=0
	for p in $agents; do
		r=$(ps -o rss= -p "$p" 2>/dev/null || echo 0)
		n=$((n + 1)) sum=$((sum + r)) most=$((r > most ? r : most))
	done
	emit "{\"figure\":\"agent-memory\",\"agents\":$n,\"averageMB\":$((sum / n / 1024)),\"maxMB\":$((most / 1024)),\"target\":\"< 25 MB\"}"
fi
wait "$fb"
grep -v '"holding"' "$work/fleet.json" | while read -r line; do emit "$line"; done
stop_up

# In-process benchmarks, each beside its reference.
if [[ -n $short ]]; then n=2000; else n=100000; fi
go test -run '^$' -bench 'Logs' -benchtime "${n}x" -count 1 ./services/agentgw/ | grep -E '^Benchmark' | while read -r line; do
	emit "{\"figure\":\"go-bench\",\"line\":\"$line\"}"
done
if [[ -n $short ]]; then n=1000; else n=20000; fi
go test -run '^$' -bench . -benchtime "${n}x" -count 1 ./libs/outbox/ | grep -E '^Benchmark' | while read -r line; do
	emit "{\"figure\":\"go-bench\",\"line\":\"$line\"}"
done
if [[ -n $short ]]; then n=50; else n=10000; fi
(cd loadtest && FLOTILLA_BENCH_AGENTS=$n go test -run '^$' -bench 'AgentGatewayRestart' -benchtime 1x -count 1 -timeout 2h ./agentsim/) | grep -E '^Benchmark' | while read -r line; do
	emit "{\"figure\":\"go-bench\",\"agents\":$n,\"line\":\"$line\"}"
done
if [[ -n $short ]]; then n=20000; else n=1000000; fi
FLOTILLA_BENCH_EVENTS=$n go test -run '^$' -bench 'Replay' -benchtime 1x -count 1 ./services/gateway/overview/ | grep -E '^Benchmark' | while read -r line; do
	emit "{\"figure\":\"go-bench\",\"events\":$n,\"line\":\"$line\"}"
done
if [[ -n $short ]]; then n=300; else n=10000; fi
FLOTILLA_BENCH_INSTANCES=$n go test -run '^$' -bench 'TheInstancesPage' -benchtime 20x -count 1 -timeout 30m ./services/gateway/console/ | grep -E '^Benchmark' | while read -r line; do
	emit "{\"figure\":\"go-bench\",\"instances\":$n,\"line\":\"$line\"}"
done
