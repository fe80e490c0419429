#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, for the tests of `python -m byol_jax.study --launcher=slurm`
# (tests/test_slurm.py). .ci/run calls it once per suite run; run it by hand (as root) to try the launcher.
#
# Needs Debian's slurmctld, slurmd, slurm-client and munge (`apt-get install slurmctld slurmd slurm-client munge`;
# with --install this script installs them). Writes /etc/slurm/slurm.conf for this machine's CPUs and memory
# (node `localhost`, partition `debug`), starts munged, slurmctld and slurmd, and returns once `sinfo` shows the
# node idle and `srun hostname` works. Idempotent: a cluster that already answers is left as it is.
#
# The choices that work in a container without systemd or writable cgroups: ProctrackType=proctrack/linuxproc
# (tracks a job's processes by parentage, so scancel reaches the training process a job starts) and
# TaskPlugin=task/none; SelectType=select/cons_tres with CR_Core, so 1-CPU jobs share the node (one per core).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
NODE=localhost

if [ "${1:-}" = "--install" ] && ! command -v slurmctld >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
for cmd in munged slurmctld slurmd sinfo srun; do
  command -v "$cmd" >/dev/null || { echo "slurm_local.sh: $cmd not found; run with --install (Debian)" >&2; exit 1; }
done

node_up() { sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if node_up && timeout 60 srun -N1 -n1 -t 1 hostname >/dev/null 2>&1; then
  echo "slurm_local.sh: SLURM already up ($(sinfo -h -n "$NODE" -o '%n %T, %c CPUs, %m MB'))"
  exit 0
fi

# munge: the key (the package's postinst makes one; a bare image may lack it), then the daemon as user munge.
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
if ! running /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged
fi

# slurm.conf for this machine: every CPU, 90% of the memory (slurmd drains a node that claims more than it has).
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
new_conf=$(cat <<EOF
# Written by byol_jax scripts/cluster/slurm_local.sh: a one-node cluster on localhost.
ClusterName=byol_jax_local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
  echo "$new_conf" > "$CONF"
  changed=1
fi

if running /run/slurmctld.pid; then
  [ "$changed" = 0 ] || scontrol reconfigure
else
  slurmctld
fi
if ! running /run/slurmd.pid; then
  slurmd -N "$NODE"
fi

for _ in $(seq 60); do
  node_up && break
  # A node left DOWN or DRAINED by an earlier start comes back once slurmd answers.
  scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
  sleep 1
done
if ! node_up; then
  echo "slurm_local.sh: node $NODE not idle after 60 s: $(sinfo -h -N -o '%N %T %E' 2>&1); see /var/log/slurm/" >&2
  exit 1
fi
if ! timeout 60 srun -N1 -n1 -t 1 hostname >/dev/null; then
  echo "slurm_local.sh: srun hostname failed; see /var/log/slurm/" >&2
  exit 1
fi
echo "slurm_local.sh: SLURM up ($(sinfo -h -n "$NODE" -o '%n %T, %c CPUs, %m MB'), partition debug)"
