#!/usr/bin/env bash
# Tile requests per second answered by `debusine-signing audit serve`, with
# wrk (a load generator in C, so that the client costs little next to the
# server), over loopback, on a SQLite log of 300 rows: a full hash tile
# (tile/0/000), the partial tile at the tree's edge (tile/0/001.p/44) and
# the checkpoint. The target is 5,000 requests/s or more for tiles.
# BenchmarkServeTile measures the same in Go, client included.
#
# Needs: go, wrk, curl.
# Usage: bench/serve-tiles.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}

work=$(mktemp -d)
bin=$work/debusine-signing
server=
trap '[ -z "$server" ] || kill "$server"; rm -rf "$work"' EXIT
CGO_ENABLED=0 go build -o "$bin" .
"$bin" generate-service-key "$work/service-key" >/dev/null
printf 'database = "%s"\nservice_keys = ["%s"]\n' "$work/db.sqlite3" "$work/service-key" >"$work/signing.toml"
export DEBUSINE_SIGNING_CONFIG=$work/signing.toml
fpr=$("$bin" generate-key --purpose openpgp --description "serve bench")
mkdir "$work/in"
for i in $(seq 299); do echo "file $i" >"$work/in/$i"; done
"$bin" sign --purpose openpgp --key "$fpr" "$work"/in/* >/dev/null
"$bin" audit checkpoint --output "$work/checkpoint"
port=$((20000 + RANDOM % 20000))
cat >>"$work/signing.toml" <<EOT
[audit_serve]
listen = "127.0.0.1:$port"
checkpoint_file = "$work/checkpoint"
audit_public_key = "$("$bin" audit key)"
EOT
"$bin" audit serve 2>"$work/serve.log" &
server=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/checkpoint" >/dev/null && break; sleep 0.1; done
head -2 "$work/checkpoint"

for path in tile/0/000 tile/0/001.p/44 checkpoint; do
	curl -sf -o /dev/null "http://127.0.0.1:$port/$path" || { echo "GET $path fails" >&2; exit 1; }
	rate=$(wrk -t2 -c32 -d"${secs}s" "http://127.0.0.1:$port/$path" | awk '/^Requests\/sec:/ { print $2 }')
	printf '%-18s %8.0f requests/s\n' "$path" "$rate"
done
