#!/usr/bin/env bash
# A throwaway SLURM cluster of N nodes on this one machine, for tests: Debian's slurm-wlm 22.05 +
# munge, run as root. Each node is its own slurmd (`slurmd -N nK`) at its own loopback address
# (127.0.0.1+K) and port; one slurmctld; the disk is the shared filesystem. Node names resolve
# through /etc/hosts lines this script adds (marked "smallbatch-slurm") and removes again, since
# Lightning takes the master address from the job's node list.
#   bash scripts/slurm_cluster.sh install                  # apt-get install (root)
#   bash scripts/slurm_cluster.sh start --nodes N DIR      # config, state and logs in DIR; prints
#                                                          #   the nodes and export SLURM_CONF=...
#   bash scripts/slurm_cluster.sh stop DIR                 # every daemon it started, by PID
# N = 1 is the one-node cluster of scripts/slurm_single_node.sh: the node is this host at
# 127.0.0.1. The cluster has its own ports and config file (SLURM_CONF), so a machine's own SLURM
# is left alone. One partition `debug` with every node; no accounting, no cgroups; a requeued
# job may start again after 10 s (cred_expire; SLURM's default is 120 s). `start` on a running
# cluster of the same folder stops it first (idempotent).
set -euo pipefail
CMD=${1:?usage: slurm_cluster.sh install | start --nodes N DIR | stop DIR}
shift
PACKAGES=(slurmctld slurmd slurm-client munge)
MARK="# smallbatch-slurm"

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "slurm_cluster: $1 needs root (SLURM's daemons run as root here)" >&2
    exit 2
  fi
}

kill_tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
  kill -9 "$1" 2>/dev/null || true
}

stop_cluster() {
  local dir=$1 pid
  if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    # end the jobs first: a job step still closing when its slurmd goes would be orphaned
    SLURM_CONF="$dir/slurm.conf" scancel --partition=debug 2>/dev/null || true
    for _ in $(seq 30); do
      [ -z "$(SLURM_CONF="$dir/slurm.conf" squeue -h 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  for pid in "$dir"/slurmd-*.pid "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  for _ in $(seq 20); do  # gone before the folder or the hosts lines go
    local alive=0
    for pid in "$dir"/slurmd-*.pid "$dir/slurmctld.pid"; do
      [ -f "$pid" ] && kill -0 "$(cat "$pid")" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  rm -f "$dir"/slurmd-*.pid "$dir/slurmctld.pid"
  for pid in $(pgrep -x slurmstepd 2>/dev/null); do  # any job step of this cluster left over
    if { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qx "SLURM_CONF=$dir/slurm.conf"; then
      kill_tree "$pid"
    fi
  done
  if [ -L "$dir/munge" ]; then
    rm -rf "$(readlink "$dir/munge")" "$dir/munge"
  fi
  if [ -f "$dir/hosts.added" ] && [ -w /etc/hosts ]; then
    grep -v "$MARK $dir\$" /etc/hosts >"$dir/hosts.tmp" || true
    cat "$dir/hosts.tmp" >/etc/hosts  # in place: /etc/hosts may be a bind mount
    rm -f "$dir/hosts.tmp" "$dir/hosts.added"
  fi
}

case "$CMD" in
install)
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null; then
    exit 0
  fi
  need_root install
  command -v apt-get >/dev/null || { echo "slurm_cluster: no apt-get here" >&2; exit 2; }
  apt-get install -y -qq "${PACKAGES[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq "${PACKAGES[@]}" >/dev/null; }
  ;;
start)
  need_root start
  NODES=1
  if [ "${1:-}" = "--nodes" ]; then
    NODES=${2:?--nodes needs a number}
    shift 2
  fi
  case "$NODES" in '' | *[!0-9]* | 0) echo "slurm_cluster: --nodes must be an integer >= 1" >&2; exit 2 ;; esac
  DIR=$(realpath -m "${1:?start needs a folder}")
  [ -f "$DIR/slurmctld.pid" ] && stop_cluster "$DIR"
  mkdir -p "$DIR/state"
  # munged runs as the munge user, which may not reach into DIR (pytest's folders are 0700)
  MUNGE=$(mktemp -d /tmp/smallbatch-munge.XXXXXX)
  chown munge:munge "$MUNGE"
  chmod 755 "$MUNGE"
  ln -sfn "$MUNGE" "$DIR/munge"
  if [ "$NODES" = 1 ]; then
    NAMES=("$(hostname -s)")
    ADDRS=(127.0.0.1)
  else
    NAMES=()
    ADDRS=()
    for k in $(seq "$NODES"); do
      NAMES+=("n$k")
      ADDRS+=("127.0.0.$((k + 1))")
    done
    for k in "${!NAMES[@]}"; do  # the node names resolve (Lightning's master address)
      echo "${ADDRS[$k]} ${NAMES[$k]} $MARK $DIR" >>/etc/hosts
    done
    touch "$DIR/hosts.added"
  fi
  {
    cat <<EOF
ClusterName=smallbatch-test
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
JobRequeue=1
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
KillWait=5
EOF
    for k in "${!NAMES[@]}"; do
      echo "NodeName=${NAMES[$k]} NodeAddr=${ADDRS[$k]} Port=$((16818 + k)) CPUs=$(nproc) State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$DIR/slurm.conf"
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE/munge.socket" \
    --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
  export SLURM_CONF=$DIR/slurm.conf
  slurmctld -f "$SLURM_CONF"
  for name in "${NAMES[@]}"; do
    mkdir -p "$DIR/spool-$name"
    slurmd -f "$SLURM_CONF" -N "$name"
  done
  for _ in $(seq 60); do
    if [ "$(sinfo -h -N -o %t 2>/dev/null | grep -cx idle)" = "$NODES" ]; then
      echo "nodes: ${NAMES[*]}"
      echo "export SLURM_CONF=$SLURM_CONF"
      exit 0
    fi
    sleep 0.5
  done
  echo "slurm_cluster: the $NODES node(s) did not all become idle in 30 s; see $DIR/*.log" >&2
  exit 1
  ;;
stop)
  stop_cluster "$(realpath -m "${1:?stop needs a folder}")"
  ;;
*)
  echo "usage: slurm_cluster.sh install | start --nodes N DIR | stop DIR" >&2
  exit 2
  ;;
esac
