#!/usr/bin/env bash
# Custodes beside fapolicyd on the shared peer-gate workload (../shared/tools/peer-gate), in
# one run: ungated baseline, fapolicyd (permissive) and the Custodes agent gating the same
# loop-mounted XFS filesystem. Root only. Usage:
#   sudo bench/peer_gate.sh            # realistic (unpinned)
#   sudo PIN=same bench/peer_gate.sh   # low-noise comparison (gate and openers on CPU 0)
# Any measure.sh knob passes through (REPS, SECS, WORKLOADS); ROUNDS repeats the whole run
# with the gates' order swapped each round; MARKS sets agent.toml's
# `marks` (default "mount"). The agent's state lives in
# $PEERGATE/custodes, outside the marked filesystem; setup/teardown are peer-gate's own.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tools=${PEERGATE_TOOLS:-$here/../shared/tools/peer-gate}
PG=${PEERGATE:-/tmp/peergate}
[ "$(id -u)" = 0 ] || { echo "peer_gate: run as root" >&2; exit 1; }
[ -x "$tools/measure.sh" ] || { echo "peer_gate: no $tools/measure.sh" >&2; exit 1; }
[ -d "$PG/mnt" ] || bash "$tools/setup.sh"

state=$PG/custodes
rm -rf "$state"; mkdir -p "$state"
cat > "$state/agreement.yaml" <<YAML
client: {id: peer-gate, name: Peer gate benchmark}
privacy_contact: {name: Bench, email: bench@example.invalid, phone: "+61 2 0000 0000"}
retention: 7y
detection: {bulk_read: {files: 50, minutes: 10}, heartbeat_silence: 5m, clock_skew: 30s}
version: "bench-1"
timezone: UTC
business_hours:
  - {days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59"}
technicians:
  - {id: benchtech, name: Bench Technician, email: tech@example.invalid, accounts: [custodes-benchtech]}
areas:
  - id: work
    description: the workload's files
    paths: ["$PG/mnt/**"]
    kinds: [health]
    individuals_per_file: 1
in_scope: []
others: allow
YAML
"$here/.venv/bin/custodes" agent init --config "$state/agent.toml" --agent-id peer-gate \
    --client peer-gate --agreement "$state/agreement.yaml" --state-dir "$state/state" >/dev/null
# One mount mark on $PG/mnt: measure.sh accepts a mark whose fdinfo shows the mount's mnt_id
# or `stat -c %D` as sdev; inode and filesystem marks print the kernel's internal dev
# encoding (sdev:700000 for 7:0, where stat says 700), so it would refuse them as foreign.
echo "marks = \"${MARKS:-mount}\"" >> "$state/agent.toml"
"$here/.venv/bin/custodes" policy check "$state/agreement.yaml"
custodes="custodes=$here/.venv/bin/custodes --log-format json agent run --config $state/agent.toml"
# ROUNDS=N runs the tool N times, the gates' order swapped each round: on this VM a quiet
# machine makes cross-CPU wake-ups several times dearer for a minute or two at a time, so
# modes measured one after the other can land in different weather. Compare within a round.
rounds=${ROUNDS:-1}
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order=(${MODES:-baseline fapolicyd} "$custodes")
  else order=("$custodes" ${MODES:-fapolicyd baseline}); fi
  [ "$rounds" = 1 ] || echo "# round $round of $rounds"
  bash "$tools/measure.sh" "${order[@]}"
done
