#!/usr/bin/env bash
# A real SLURM cluster on this one machine: slurmctld plus two slurmd daemons emulating the nodes
# node1 and node2 (Debian's multiple-slurmd build), authenticated by munge. For tests and trying
# sbatch/srun scripts locally; needs root.
#
# Usage: scripts/slurm-local.sh start|stop|status|env
#   start   install slurmctld, slurmd, slurm-client and munge with apt-get when missing, then start the
#           cluster; a running cluster is left as it is (idempotent). Prints where its state lives.
#   stop    cancel the cluster's jobs, then stop the daemons by the PIDs in the state folder
#           (munged only when this script started it).
#   status  exit 0 when the cluster answers, 1 when it is down.
#   env     print `export SLURM_CONF=...` for the shell: eval "$(scripts/slurm-local.sh env)".
# Environment: FABRIC_LITE_SLURM_DIR (state folder, default /var/tmp/fabric_lite-slurm),
#   FABRIC_LITE_SLURM_NODES (default 2), FABRIC_LITE_SLURM_CPUS (CPUs each node announces, default max(nproc, 8):
#   more than the machine has, so that a few small test jobs fit side by side).
# Exit codes: 0 done, 1 failed, 3 SLURM cannot be installed here (not root, or apt-get cannot reach it).
set -euo pipefail

STATE="${FABRIC_LITE_SLURM_DIR:-/var/tmp/fabric_lite-slurm}"
NODES="${FABRIC_LITE_SLURM_NODES:-2}"
CPUS="${FABRIC_LITE_SLURM_CPUS:-$(( $(nproc) > 8 ? $(nproc) : 8 ))}"
CONF="$STATE/slurm.conf"
RUN="$STATE/run"
HOSTS_TAG="# fabric_lite slurm-local"
export SLURM_CONF="$CONF"

say() { echo "[slurm-local] $*"; }
die() { echo "[slurm-local] $1" >&2; exit "${2:-1}"; }
node_names() { seq -f "node%g" "$NODES"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

installed() {
  [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/bin/srun ] && [ -x /usr/sbin/munged ]
}

install_packages() {
  installed && return 0
  [ "$(id -u)" = 0 ] || die "SLURM is not installed and installing it needs root (apt-get). Fix: run as root, or apt-get install slurmctld slurmd slurm-client munge." 3
  command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get here (a Debian/Ubuntu tool). Fix: install slurmctld, slurmd, slurm-client and munge with this system's package manager." 3
  local packages=(slurmctld slurmd slurm-client munge) policy=/usr/sbin/policy-rc.d ours=0
  # Keep the packages' post-install scripts from starting daemons of their own: this script starts them.
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; ours=1; fi
  say "installing ${packages[*]} (apt-get)"
  local ok=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}" >"$STATE/apt.log" 2>&1 && ok=1
  if [ "$ok" = 0 ]; then  # stale or missing package lists
    apt-get update -q >>"$STATE/apt.log" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}" >>"$STATE/apt.log" 2>&1 && ok=1
  fi
  [ "$ours" = 1 ] && rm -f "$policy"
  [ "$ok" = 1 ] && installed || die "apt-get could not install ${packages[*]}; see $STATE/apt.log. Fix: apt-get update, then rerun." 3
}

running() {
  alive "$RUN/slurmctld.pid" || return 1
  local node
  for node in $(node_names); do alive "$RUN/slurmd-$node.pid" || return 1; done
  timeout 10 sinfo -h >/dev/null 2>&1
}

start_munge() {
  if timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
    return 0  # a munged is already serving (ours from an earlier start, or the system's)
  fi
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  runuser -u munge -- /usr/sbin/munged --force 9>&-
  cp /run/munge/munged.pid "$RUN/munged.pid"  # recorded: stop ends only a munged this script started
  local _
  for _ in $(seq 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged did not start; see /var/log/munge/munged.log."
}

add_hosts() {
  # The job's main address is its first node's name (node1): it must resolve, to this machine.
  local node
  for node in $(node_names); do
    getent hosts "$node" >/dev/null || echo "127.0.0.1 $node $HOSTS_TAG" >>/etc/hosts
  done
}

conf_text() {
  local host ports nodes
  host=$(hostname -s)
  nodes="node[1-$NODES]"
  ports="[17001-$((17000 + NODES))]"
  [ "$NODES" = 1 ] && { nodes=node1; ports=17001; }
  cat <<EOF
# Written by fabric_lite scripts/slurm-local.sh: $NODES emulated nodes on $host.
ClusterName=fabric-lite
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire + 1 seconds before it may start again: keep that short.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The nodes announce the CPUs written here, not the machine's: tests need 2 tasks per node on any box.
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
SlurmdTimeout=30
MinJobAge=300
KillWait=5
NodeName=$nodes NodeHostname=$host NodeAddr=127.0.0.1 Port=$ports CPUs=$CPUS CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=1000
PartitionName=debug Nodes=$nodes Default=YES MaxTime=INFINITE State=UP
EOF
}

write_conf() {
  conf_text >"$CONF"
  # Let plain `srun` in any shell find this cluster, unless the machine has a configuration of its own.
  mkdir -p /etc/slurm
  if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  fi
}

wait_idle() {
  local _ up
  for _ in $(seq 150); do
    up=$(sinfo -h -t idle,alloc,mix -o %D 2>/dev/null | awk '{s += $1} END {print s + 0}')
    [ "$up" -ge "$NODES" ] && return 0
    sleep 0.2
  done
  sinfo >&2 || true
  die "the nodes did not come up within 30 s; see $STATE/log/."
}

print_where() {
  say "state: $STATE (slurm.conf, spool/, log/, run/*.pid)"
  say "use it: export SLURM_CONF=$CONF   (or: eval \"\$(scripts/slurm-local.sh env)\")"
}

start() {
  mkdir -p "$STATE" "$RUN"
  exec 9>"$STATE/lock"
  flock 9  # concurrent starts (two test sessions) wait for the first
  local t0
  t0=$(date +%s.%N)
  if installed && running && [ "$(conf_text)" = "$(cat "$CONF")" ]; then
    say "already running ($(sinfo -h -o '%D nodes %T' | paste -sd, -)); checked in $(elapsed "$t0")"
    print_where
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "starting the local cluster needs root (munged, slurmd and /etc/hosts). Fix: run as root, or point SLURM_CONF at a real cluster." 3
  install_packages
  stop_daemons
  start_munge
  add_hosts
  rm -rf "$STATE/spool" "$STATE/log"
  mkdir -p "$STATE/spool/ctld" "$STATE/log"
  local node
  for node in $(node_names); do mkdir -p "$STATE/spool/$node"; done
  write_conf
  slurmctld -i -f "$CONF" 9>&-
  for node in $(node_names); do slurmd -f "$CONF" -N "$node" 9>&-; done
  wait_idle
  local smoke
  smoke=$(timeout 60 srun -N"$NODES" -n"$NODES" --time=1 bash -c 'echo $SLURMD_NODENAME' | sort | paste -sd' ' -) ||
    die "the smoke job (srun -N$NODES) failed; see $STATE/log/."
  say "up in $(elapsed "$t0"): nodes $smoke, $CPUS CPUs each"
  print_where
}

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f s", b - a}'; }

stop_pid() {  # stop_pid PIDFILE: SIGTERM, wait up to 5 s, then SIGKILL
  local file=$1 pid _
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != Z ] || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop_daemons() {
  local file
  for file in "$RUN"/slurmd-*.pid "$RUN/slurmctld.pid" "$RUN/munged.pid"; do
    [ -e "$file" ] && stop_pid "$file"
  done
  return 0
}

stop() {
  [ -d "$RUN" ] || { say "not running (no $RUN)"; return 0; }
  exec 9>"$STATE/lock"
  flock 9
  if alive "$RUN/slurmctld.pid"; then
    # Jobs first, so that their slurmstepd and tasks end with the cluster.
    local jobs
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | paste -sd' ' -) || true
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      for _ in $(seq 50); do [ -z "$(timeout 5 squeue -h -t R,CG -o %i 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  stop_daemons
  say "stopped (state kept in $STATE)"
}

status() {
  local node
  if [ -f "$RUN/slurmctld.pid" ]; then
    echo "slurmctld pid $(cat "$RUN/slurmctld.pid") $(alive "$RUN/slurmctld.pid" && echo alive || echo dead)"
  fi
  for node in $(node_names); do
    [ -f "$RUN/slurmd-$node.pid" ] &&
      echo "slurmd $node pid $(cat "$RUN/slurmd-$node.pid") $(alive "$RUN/slurmd-$node.pid" && echo alive || echo dead)"
  done
  if installed && running; then
    sinfo
    print_where
    return 0
  fi
  say "down"
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) die "usage: $0 start|stop|status|env (got '${1:-}'). Fix: pass one of those." 2 ;;
esac
