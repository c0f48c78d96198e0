#!/usr/bin/env bash
# Starts a local HA pair to try docs/ha.md on one machine: two Alertmanager peers gossiping on loopback
# (web 9093 and 9095, cluster 9094 and 9096) and two rabbitwatch replicas (9488, 9489) with one config.
# Needs the Debian package prometheus-alertmanager and a built rabbitwatch (cargo build). Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")"
RW=../../target/debug/rabbitwatch
AM=/usr/bin/prometheus-alertmanager
export RABBITMQ_PASSWORD=${RABBITMQ_PASSWORD:-guest}
work=$(mktemp -d)
pids=()
stop() { trap - EXIT INT TERM; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap stop EXIT INT TERM

for i in 0 1; do
  web=$((9093 + 2 * i)); gossip=$((9094 + 2 * i)); other=$((9096 - 2 * i))
  "$AM" --config.file=alertmanager.yml --storage.path="$work/am$i" \
    --web.listen-address=127.0.0.1:$web \
    --cluster.listen-address=127.0.0.1:$gossip --cluster.advertise-address=127.0.0.1:$gossip \
    --cluster.peer=127.0.0.1:$other >"$work/am$i.log" 2>&1 &
  pids+=($!)
done
until curl -sf http://127.0.0.1:9093/-/ready >/dev/null && curl -sf http://127.0.0.1:9095/-/ready >/dev/null; do sleep 0.5; done

for i in 0 1; do
  RABBITWATCH_LISTEN=127.0.0.1:$((9488 + i)) RABBITWATCH_STATE="$work/rw$i" \
    "$RW" run --config rabbitwatch.yaml >"$work/rw$i.log" 2>&1 &
  pids+=($!)
done
echo "Alertmanager: http://127.0.0.1:9093 and :9095 (logs in $work)"
echo "rabbitwatch:  http://127.0.0.1:9488 and :9489"
echo "Kill either of each: the pair goes on paging once. Ctrl-C stops everything."
wait
