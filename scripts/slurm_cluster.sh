#!/usr/bin/env bash
# Starts a one-node Slurm cluster on this machine (Debian's slurmctld, slurmd and munge),
# for tests: `source scripts/slurm_cluster.sh start DIR` exports SLURM_CONF pointing at
# DIR/slurm.conf; `scripts/slurm_cluster.sh stop DIR` stops it. Needs root (the daemons
# and, where missing, `apt-get install`). Exits 77 when Slurm cannot be had here.
set -euo pipefail

action=${1:?usage: slurm_cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: slurm_cluster.sh start|stop DIR}")

stop() {
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        if [[ -f $pidfile ]]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
    done
    if [[ -f $dir/munged.pid ]]; then
        kill "$(cat "$dir/munged.pid")" 2>/dev/null || true
    fi
}

if [[ $action == stop ]]; then
    stop
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "slurm_cluster: Slurm is not installed and cannot be installed here (needs root and apt-get)" >&2
        exit 77
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null ||
        { echo "slurm_cluster: apt-get could not install slurmctld, slurmd and munge" >&2; exit 77; }
fi

mkdir -p "$dir/spool/ctld" "$dir/spool/d" "$dir/log" "$dir/munge"
node=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
cat >"$dir/slurm.conf" <<CONF
ClusterName=qexp-test
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( memory / cpus ))
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6917
SlurmdPort=6918
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
printf 'CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n' >"$dir/cgroup.conf"
export SLURM_CONF=$dir/slurm.conf

# munge: the key Debian made on install, a socket of our own.
if [[ ! -f /etc/munge/munge.key ]]; then
    mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --pid-file="$dir/munged.pid" 2>/dev/null ||
        /usr/sbin/munged --force --pid-file="$dir/munged.pid"
fi
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
        echo "slurm_cluster: one node ($node, $cpus CPUs) up; SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "slurm_cluster: the node did not come up; see $dir/log" >&2
sinfo >&2 || true
tail -20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
stop
exit 1
