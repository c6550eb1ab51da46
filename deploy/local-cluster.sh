#!/usr/bin/env bash
# Two routee-callbacks instances on one PostgreSQL, behind haproxy with deploy/haproxy.cfg — the deployment
# of docs/deploy.md on one machine, to try it. `make cluster` runs it; Ctrl-C stops everything and deletes the
# database. Needs Debian's postgresql and haproxy packages (apt-get install postgresql haproxy).
#
#   callbacks: http://127.0.0.1:8080/v1/callbacks/viber   (haproxy; instances on :8081 and :8082)
#   gRPC:      127.0.0.1:50051                              (haproxy; instances on :50061 and :50062)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[[ -x "$bin/initdb" ]] || { echo "PostgreSQL is not installed: apt-get install postgresql" >&2; exit 1; }
command -v haproxy >/dev/null || { echo "haproxy is not installed: apt-get install haproxy" >&2; exit 1; }

dir=$(mktemp -d /tmp/routee-callbacks-cluster.XXXXXX)
as_postgres=()
if [[ $(id -u) == 0 ]]; then  # PostgreSQL refuses to run as root.
    chown postgres "$dir"
    as_postgres=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
pids=()
stop() {
    trap - EXIT INT TERM
    set +e  # Stop everything, whatever fails.
    ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null
    wait "${pids[@]}" 2>/dev/null
    "${as_postgres[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT INT TERM

"${as_postgres[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
"${as_postgres[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w start \
    -o "-p 5433 -k $dir -c listen_addresses=127.0.0.1" >/dev/null
database=postgresql://postgres@127.0.0.1:5433/postgres

for n in 1 2; do
    # Local posts are allowed (no DNS allowlist); haproxy's X-Forwarded-For is believed from loopback.
    .venv/bin/routee-callbacks serve --database "$database" \
        --http-bind "127.0.0.1:808$n" --grpc-bind "127.0.0.1:5006$n" \
        --allowlist-host "" --allow-cidr 127.0.0.0/8 --trusted-proxy 127.0.0.1/32 --log-format text \
        2> >(sed "s/^/[instance $n] /" >&2) &
    pids+=($!)
done
HTTP_BIND=127.0.0.1:8080 GRPC_BIND=127.0.0.1:50051 \
    INSTANCE_1_HTTP=127.0.0.1:8081 INSTANCE_1_GRPC=127.0.0.1:50061 INSTANCE_1_CHECK_PORT=8081 \
    INSTANCE_2_HTTP=127.0.0.1:8082 INSTANCE_2_GRPC=127.0.0.1:50062 INSTANCE_2_CHECK_PORT=8082 \
    haproxy -db -f deploy/haproxy.cfg &
pids+=($!)

echo "PostgreSQL on 127.0.0.1:5433, instances on :8081/:50061 and :8082/:50062, haproxy on :8080 and :50051."
echo "Try: .venv/bin/routee-callbacks simulate --url http://127.0.0.1:8080/v1/callbacks/viber --messages 100"
echo "     .venv/bin/routee-callbacks watch --grpc-target 127.0.0.1:50051 --after-sequence 0"
echo "Ctrl-C stops everything."
wait -n "${pids[@]}"
