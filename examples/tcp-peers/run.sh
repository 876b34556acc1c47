#!/usr/bin/env bash
# The whole example in one go: keys, three peer processes, writes, the view. Stops them on exit.
set -euo pipefail
cd "$(dirname "$0")"
if [[ -n "${SOUVERIX_CRDT:-}" ]]; then cli=$SOUVERIX_CRDT
elif [[ -x ../../.venv/bin/souverix-crdt ]]; then cli=../../.venv/bin/souverix-crdt
else cli=souverix-crdt; fi

rm -rf keys data ./*.ready ./*.log
# keys/offline/ holds the root keys; keys/planes/<name>/ is what each plane's machine gets.
"$cli" keys init topology.yaml --out keys --seed tcp-example >/dev/null
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait' EXIT
for plane in global region-a edge-a1; do
    "$cli" peer run --config "$plane.yaml" --ready-file "$plane.ready" 2>"$plane.log" &
    pids+=($!)
done
for plane in global region-a edge-a1; do    # bounded wait for each process to be up
    for _ in $(seq 100); do [[ -f $plane.ready ]] && break; sleep 0.1; done
done

echo "+ a node record written through edge-a1, a policy through global"
"$cli" peer write --config edge-a1.yaml global/region-a/edge-a1 nodes edge-a1-n01 \
    "{\"heartbeat_ms\": $(date +%s)000, \"versions\": {\"agent\": \"2.5.0\"}}" --json
"$cli" peer write --config global.yaml global policies max-unavailable 10%
for _ in $(seq 100); do     # bounded wait until global holds the zone's record
    "$cli" peer get --config global.yaml global/region-a/edge-a1 nodes edge-a1-n01 \
        >/dev/null 2>&1 && "$cli" peer get --config edge-a1.yaml global policies \
        max-unavailable >/dev/null 2>&1 && break
    sleep 0.1
done
echo "+ the Global Fleet View, from the three stores"
"$cli" view --config global.yaml --config region-a.yaml --config edge-a1.yaml
echo "+ a write edge-a1's key has no authority for"
"$cli" peer write --config edge-a1.yaml global policies max-unavailable 50% || true
echo "+ the logs (one line per sync)"
tail -n +1 ./*.log
