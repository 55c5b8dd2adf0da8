#!/usr/bin/env bash
# A throwaway one-node SLURM cluster for tests: Debian's slurm-wlm 22.05 + munge, run as root.
#   bash scripts/slurm_single_node.sh install        # apt-get install (root, apt available)
#   bash scripts/slurm_single_node.sh start DIR      # config, state and logs in DIR; prints
#                                                    #   export SLURM_CONF=DIR/slurm.conf
#   bash scripts/slurm_single_node.sh stop DIR
# The cluster has its own ports and config file (SLURM_CONF), so it leaves a machine's own SLURM
# alone. One partition `debug` with every CPU; no accounting, no cgroups; a requeued job may
# start again after 10 s (cred_expire; SLURM's default is 120 s).
set -euo pipefail
CMD=${1:?usage: slurm_single_node.sh install | start DIR | stop DIR}
PACKAGES=(slurmctld slurmd slurm-client munge)

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "slurm_single_node: $1 needs root (SLURM's daemons run as root here)" >&2
    exit 2
  fi
}

case "$CMD" in
install)
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null; then
    exit 0
  fi
  need_root install
  command -v apt-get >/dev/null || { echo "slurm_single_node: no apt-get here" >&2; exit 2; }
  apt-get install -y -qq "${PACKAGES[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq "${PACKAGES[@]}" >/dev/null; }
  ;;
start)
  need_root start
  DIR=$(realpath -m "${2:?start needs a folder}")
  mkdir -p "$DIR/state" "$DIR/spool"
  # munged runs as the munge user, which may not reach into DIR (pytest's folders are 0700)
  MUNGE=$(mktemp -d /tmp/smallbatch-munge.XXXXXX)
  chown munge:munge "$MUNGE"
  chmod 755 "$MUNGE"
  ln -sfn "$MUNGE" "$DIR/munge"
  HOST=$(hostname -s)
  cat >"$DIR/slurm.conf" <<EOF
ClusterName=smallbatch-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
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
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE/munge.socket" \
    --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
  export SLURM_CONF=$DIR/slurm.conf
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N "$HOST"
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
      echo "export SLURM_CONF=$SLURM_CONF"
      exit 0
    fi
    sleep 0.5
  done
  echo "slurm_single_node: the node did not become idle in 30 s; see $DIR/*.log" >&2
  exit 1
  ;;
stop)
  DIR=$(realpath -m "${2:?stop needs a folder}")
  for pid in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  if [ -L "$DIR/munge" ]; then
    sleep 1
    rm -rf "$(readlink "$DIR/munge")" "$DIR/munge"
  fi
  ;;
*)
  echo "usage: slurm_single_node.sh install | start DIR | stop DIR" >&2
  exit 2
  ;;
esac
