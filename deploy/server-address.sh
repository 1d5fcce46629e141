#!/usr/bin/env bash
# Waits for an nst-server started with `--port 0 2>LOG` and prints the address it listens on (HOST:PORT), read
# from its "listening on" log line. Fails, with the log on stderr, if the server exits first or 60 s pass.
#
#   address="$(bash deploy/server-address.sh LOG SERVER_PID)"
set -euo pipefail

log="$1"
server_pid="$2"
for _ in $(seq 600); do
    address="$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$log" 2>/dev/null || true)"
    [[ -n "$address" ]] && { echo "$address"; exit 0; }
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; echo "nst-server exited before listening" >&2; exit 1; }
    sleep 0.1
done
echo "nst-server did not start listening in 60 s; log: $log" >&2
exit 1
