#!/usr/bin/env bash
# Starts or stops the Slurm the tests submit to: one node (this host, all its CPUs), slurmctld,
# slurmd and a munged of its own (own key and socket), all as root, from
# deploy/slurm/slurm.conf.in. Installs Debian's slurm-wlm and munge when missing. State, logs
# and sockets live in .cache/slurm; nothing is installed as a system service or left running.
#   eval "$(scripts/slurm-test-cluster.sh start)"   # prints export SLURM_CONF=...
#   scripts/slurm-test-cluster.sh stop              # cancels every job, stops the daemons
# Ports: SPARQ_SLURM_PORT (slurmctld, default 16817) and the next one (slurmd).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
D="$ROOT/.cache/slurm"
CONF="$D/slurm.conf"
PORT=${SPARQ_SLURM_PORT:-16817}
export SLURM_CONF="$CONF"

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { sed -n "s/^$1 //p" "$D/pids" 2>/dev/null || true; }
all_alive() { alive "$(pid_of munged)" && alive "$(pid_of slurmctld)" && alive "$(pid_of slurmd)"; }

install() {
  command -v slurmctld > /dev/null && command -v slurmd > /dev/null \
    && command -v munged > /dev/null && return
  echo "installing slurm-wlm and munge (apt-get)" >&2
  # Debian starts a package's services on install; these are ours to start, with our config.
  local policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    policy=1
  fi
  local status=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends slurm-wlm munge > "$D/apt.log" 2>&1; } || status=$?
  [ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d
  if [ "$status" != 0 ]; then
    echo "apt-get install slurm-wlm munge failed; $D/apt.log:" >&2; tail -20 "$D/apt.log" >&2
    exit 1
  fi
}

stop() {
  if alive "$(pid_of slurmctld)"; then
    # Jobs first, so slurmd reaps their processes before it goes.
    jobs=$(squeue -h -o %A 2>/dev/null | paste -sd' ' -)
    # shellcheck disable=SC2086  # one argument per job id
    [ -z "$jobs" ] || scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 60); do
      [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  for name in slurmd slurmctld munged; do
    pid=$(pid_of "$name")
    alive "$pid" || continue
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -f "$D/pids"
}

# Fails with the daemon's log when it is not running.
check() {
  alive "$(pid_of "$1")" && return
  echo "$1 exited; $2:" >&2; tail -n 30 "$2" >&2
  stop; exit 1
}

case "${1:-}" in
start)
  if all_alive; then echo "export SLURM_CONF=$CONF"; exit 0; fi
  mkdir -p "$D"
  stop
  install
  rm -rf "$D/state" "$D/spool" "$D/munge" "$D"/*.log
  mkdir -p "$D/state" "$D/spool"
  mkdir -m 700 "$D/munge"

  # munged refuses keys and sockets in folders others can write to; --force tolerates the
  # parents of a checkout (it checks every folder up to /).
  dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$D/munge/munge.key"
  setsid munged --foreground --force --key-file="$D/munge/munge.key" \
    --socket="$D/munge/munge.socket" --pid-file="$D/munge/munged.pid" \
    --seed-file="$D/munge/munged.seed" --log-file="$D/munge/munged.log" \
    > "$D/munge/stderr.log" 2>&1 &
  echo "munged $!" > "$D/pids"
  for _ in $(seq 1 50); do [ -S "$D/munge/munge.socket" ] && break; sleep 0.1; done
  check munged "$D/munge/munged.log"

  HOST=$(hostname -s)
  MEMORY=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
  [ -n "$MEMORY" ] || MEMORY=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$(nproc)|g" -e "s|@MEMORY@|$MEMORY|g" \
    -e "s|@DIR@|$D|g" -e "s|@CTLD_PORT@|$PORT|g" -e "s|@SLURMD_PORT@|$((PORT + 1))|g" \
    "$ROOT/deploy/slurm/slurm.conf.in" > "$CONF"

  setsid slurmctld -D -f "$CONF" > "$D/slurmctld.stderr" 2>&1 &
  echo "slurmctld $!" >> "$D/pids"
  setsid slurmd -D -f "$CONF" -N "$HOST" > "$D/slurmd.stderr" 2>&1 &
  echo "slurmd $!" >> "$D/pids"
  for _ in $(seq 1 120); do
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
    if [ "$state" = idle ]; then echo "export SLURM_CONF=$CONF"; exit 0; fi
    check slurmctld "$D/slurmctld.log"
    check slurmd "$D/slurmd.log"
    sleep 0.5
  done
  echo "node $HOST is not idle after 60 s (state: ${state:-none}); $D/slurmctld.log:" >&2
  tail -n 30 "$D/slurmctld.log" >&2
  stop; exit 1
  ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
