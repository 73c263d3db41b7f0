#!/bin/busybox sh
# /init of the VM that `cargo xtask vm` boots. Mounts what nodesat needs, runs `nodesat check`,
# a short scenario (a CPU-capped hog, and more busy loops than CPUs for run-queue waits) with
# the preferred probe variants and with each fallback forced, and the offset check
# (nodesat-offsets), prints everything to the serial console between markers the harness
# parses, powers off.
# Markers: "@@nodesat-vm begin NAME@@", "@@nodesat-vm at SECONDS@@" (uptime, inside sections),
# "@@nodesat-vm end NAME rc=N@@", "@@nodesat-vm done@@".

/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

# Each section also says when it began and ended (seconds since boot), for its duration.
at() { echo "@@nodesat-vm at $(cut -d' ' -f1 /proc/uptime)@@"; }
begin() {
    echo "@@nodesat-vm begin $1@@"
    at
}
end() {
    at
    echo "@@nodesat-vm end $1 rc=$2@@"
}

# await_ready OUT PID TRIES: until the agent PID has written its ready line to OUT, it has
# exited, or TRIES tenths of a second have passed.
await_ready() {
    tries=0
    until grep -q '"type":"ready"' "$1" 2>/dev/null; do
        if ! kill -0 "$2" 2>/dev/null || [ $tries -ge "$3" ]; then
            break
        fi
        sleep 0.1
        tries=$((tries + 1))
    done
}

begin setup
fails=0
# Only emergencies on the console: a kernel message (an OOM kill's report) must not split a
# line of the agent's JSON output. `dmesg` still has them all.
dmesg -n 1
mount -t sysfs sysfs /sys || fails=$((fails + 1))
mount -t tmpfs tmpfs /tmp || fails=$((fails + 1))
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fails=$((fails + 1))
mount -t tracefs tracefs /sys/kernel/tracing || fails=$((fails + 1))
# The scheduler's debug file: ktime and the scheduler's clock side by side (nodesat-offsets clocks).
mount -t debugfs debugfs /sys/kernel/debug || fails=$((fails + 1))
mount -t bpf bpf /sys/fs/bpf || fails=$((fails + 1))
# BPF run-time statistics, so the reports carry each program's run count and time.
echo 1 >/proc/sys/kernel/bpf_stats_enabled || fails=$((fails + 1))
for c in cpu memory io; do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || fails=$((fails + 1))
done
# Loopback, for the offset check's TCP connections.
ip link set lo up || fails=$((fails + 1))
# Modules from the kernel's package (a block device for the offset check), in load order
# with their parameters; devtmpfs makes their /dev nodes.
while read -r module args; do
    # shellcheck disable=SC2086 # the parameters are separate words
    insmod "/lib/modules/$module" $args || fails=$((fails + 1))
done </lib/modules/order
echo "kernel $(uname -r), $(nproc) CPUs, cgroup v2 controllers enabled: $(cat /sys/fs/cgroup/cgroup.subtree_control), block devices: $(ls /sys/block | tr '\n' ' ')"
end setup $fails

begin check
nodesat check
end check $?

# The scale measurement (`cargo xtask bench --scale`, kernel command line
# `nodesat.scale=CGROUPS,CYCLES`): CGROUPS cgroups each with a process waking every 100 ms,
# then for each agent binary in /bin (nodesat, and nodesat-before when the initramfs has one)
# its map memory, resident memory and on-CPU time per 2 s collection cycle over CYCLES cycles.
scale_agent() {
    bin=$1 cycles=$2
    begin "scale-$bin"
    rm -f /tmp/scale.out /tmp/scale.err
    "$bin" run --output json --interval 2s --max-entities 100000 --kubelet-url off \
        >/tmp/scale.out 2>/tmp/scale.err &
    agent=$!
    await_ready /tmp/scale.out $agent 3000
    # One cycle to settle (the first collection names every cgroup), then the measured ones.
    sleep 3
    oncpu() { cat /proc/$agent/task/*/schedstat | awk '{s += $1} END {print s}'; }
    before=$(oncpu)
    sleep $((cycles * 2))
    after=$(oncpu)
    echo "scale oncpu_ns=$((after - before)) cycles=$cycles"
    grep -E '^(VmRSS|VmHWM)' /proc/$agent/status | tr -s ' \t' ' ' | sed 's/^/scale /'
    # The kernel's own figure for every map the agent holds (any agent version).
    maps=0 bytes=0
    for f in /proc/$agent/fdinfo/*; do
        if grep -q '^map_type' "$f"; then
            bytes=$((bytes + $(awk '/^memlock/ {print $2}' "$f")))
            maps=$((maps + 1))
        fi
    done
    echo "scale map_bytes=$bytes maps=$maps"
    kill -TERM $agent
    wait $agent
    rc=$?
    echo "scale reports=$(grep -c '"type":"interval"' /tmp/scale.out)"
    # The last report's map memory and how many cgroups it carried.
    tail -n 1 /tmp/scale.out
    tail -n 5 /tmp/scale.err
    end "scale-$bin" $rc
}
scale_arg=$(tr ' ' '\n' </proc/cmdline | grep '^nodesat.scale=' | cut -d= -f2)
if [ -n "$scale_arg" ]; then
    n=${scale_arg%,*} cycles=${scale_arg#*,}
    begin scale-setup
    # Every CPU but the first offline: possible CPUs stay what qemu booted with, the
    # measurement runs on one online CPU whatever their number.
    for c in /sys/devices/system/cpu/cpu[0-9]*; do
        [ "$c" = /sys/devices/system/cpu/cpu0 ] || echo 0 >"$c/online"
    done
    echo "scale possible=$(cat /sys/devices/system/cpu/possible) online=$(cat /sys/devices/system/cpu/online) cgroups=$n"
    i=0
    while [ $i -lt "$n" ]; do
        mkdir /sys/fs/cgroup/s$i
        sh -c "echo \$\$ >/sys/fs/cgroup/s$i/cgroup.procs && exec nodesat-load sleeper --period-ms 100 --work-us 50" &
        i=$((i + 1))
    done
    sleep 2
    echo "scale sleepers=$(cat /sys/fs/cgroup/s*/cgroup.procs | wc -l)"
    end scale-setup 0
    for bin in nodesat nodesat-before; do
        [ -x "/bin/$bin" ] && scale_agent "$bin" "$cycles"
    done
    echo "@@nodesat-vm done@@"
    poweroff -f
fi


# scenario SECTION HOG_CGROUP SECONDS [AGENT ARGS...]: the agent in the background; once it
# is attached, a hog in HOG_CGROUP (capped by cpu.max) and four unlimited busy loops in /busy
# (more runnable tasks than CPUs), for SECONDS; then SIGTERM (final report) and its output.
scenario() {
    section=$1 hog=$2 seconds=$3
    shift 3
    begin "$section"
    # A fresh output file: the ready wait below must not see a previous run's ready line.
    rm -f /tmp/run.out /tmp/run.err
    # Both clocks before and after: cpu.stat counts throttled time in the scheduler's clock,
    # the agent its durations in ktime, and under TCG the two run at different rates.
    nodesat-offsets clocks
    nodesat run --output json --interval 2s "$@" >/tmp/run.out 2>/tmp/run.err &
    agent=$!
    await_ready /tmp/run.out $agent 1200
    sh -c "echo \$\$ >/sys/fs/cgroup/$hog/cgroup.procs && while :; do :; done" &
    load=$!
    for i in 1 2 3 4; do
        sh -c "echo \$\$ >/sys/fs/cgroup/${busy:-busy}/cgroup.procs && while :; do :; done" &
        load="$load $!"
    done
    sleep "$seconds"
    kill $load
    # SIGTERM makes a final report; a watchdog kills the agent if it does not exit in 60 s.
    (sleep 60 && kill -KILL $agent) 2>/dev/null &
    watchdog=$!
    kill -TERM $agent
    wait $agent
    rc=$?
    kill $watchdog 2>/dev/null
    nodesat-offsets clocks
    cat /tmp/run.out
    end "$section" $rc
}

# The scenario: a hog capped at 20% of a CPU in /hog, busy loops in /busy, 6 s.
mkdir /sys/fs/cgroup/hog /sys/fs/cgroup/busy
echo "20000 100000" >/sys/fs/cgroup/hog/cpu.max
scenario run hog 6

begin run-stderr
cat /tmp/run.err
end run-stderr 0

begin hog-cpu.stat
cat /sys/fs/cgroup/hog/cpu.stat
end hog-cpu.stat $?

# The fallbacks: the same capped hog with every probe forced to a fallback variant (raw
# tracepoints, classic tracepoints; kprobes for the throttle probe), 4 s each.
mkdir /sys/fs/cgroup/hog2
echo "20000 100000" >/sys/fs/cgroup/hog2/cpu.max
for forced in raw_tracepoint tracepoint kprobe; do
    scenario "run-$forced" hog2 4 --probe-variant "$forced"
done

# The kernel struct offsets the agent resolved from BTF, each compared with procfs/sysfs
# (nodesat-offsets: TCP retransmits, an OOM kill, block I/O on nullb2, CFS throttling, and a
# whole-machine OOM, which this throwaway VM can take), with the preferred probe variants and
# with each fallback forced.
for variant in auto raw_tracepoint tracepoint kprobe; do
    begin "offsets-$variant"
    nodesat-offsets --agent /bin/nodesat --probe-variant "$variant" --disk /dev/nullb2 \
        --global-oom >/tmp/offsets.out 2>/tmp/offsets.err
    rc=$?
    cat /tmp/offsets.out
    echo "-- stderr (last lines)"
    tail -n 20 /tmp/offsets.err
    end "offsets-$variant" $rc
done

# Pure cgroup v1, as on a node booted with systemd.unified_cgroup_hierarchy=0: the unified
# hierarchy unmounted (the kernel keeps it, unused), cpu and memory on v1 hierarchies. The hog
# is capped at 20% in a kubelet-shaped cgroup (cgroupfs driver); the agent (auto) must key
# every figure by the v1 cpu hierarchy and name the pod's container.
begin v1-setup
fails=0
rmdir /sys/fs/cgroup/hog /sys/fs/cgroup/hog2 /sys/fs/cgroup/busy || fails=$((fails + 1))
for c in io memory cpu; do
    echo "-$c" >/sys/fs/cgroup/cgroup.subtree_control || fails=$((fails + 1))
done
umount /sys/fs/cgroup || fails=$((fails + 1))
mount -t tmpfs cgroup /sys/fs/cgroup || fails=$((fails + 1))
# v1mount CONTROLLERS TRIES: the controllers are released by the unified hierarchy once its
# cgroups are gone, which the kernel finishes asynchronously: retry every 0.2 s.
v1mount() {
    mkdir "/sys/fs/cgroup/$1"
    tries=0
    until mount -t cgroup -o "$1" cgroup "/sys/fs/cgroup/$1" 2>/dev/null; do
        tries=$((tries + 1))
        [ $tries -ge "$2" ] && { rmdir "/sys/fs/cgroup/$1"; return 1; }
        sleep 0.2
    done
}
v1mount cpu,cpuacct 50 || { echo "cannot mount the v1 cpu,cpuacct hierarchy"; fails=$((fails + 1)); }
# Kernels built without CONFIG_MEMCG_V1 (Debian's 6.12) have no v1 memory controller; the
# agent does not need it.
v1mount memory 10 || echo "no v1 memory hierarchy on this kernel (not needed)"
v1hog=kubepods/burstable/pod5f0c6a38-2b7e-4c1d-9a55-0d3e7f21c4b6/4c6e8a0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c
mkdir -p "/sys/fs/cgroup/cpu,cpuacct/$v1hog" /sys/fs/cgroup/cpu,cpuacct/busy || fails=$((fails + 1))
echo 100000 >"/sys/fs/cgroup/cpu,cpuacct/$v1hog/cpu.cfs_period_us" || fails=$((fails + 1))
echo 20000 >"/sys/fs/cgroup/cpu,cpuacct/$v1hog/cpu.cfs_quota_us" || fails=$((fails + 1))
grep cgroup /proc/mounts
end v1-setup $fails

busy=cpu,cpuacct/busy scenario run-v1 "cpu,cpuacct/$v1hog" 6

begin v1-hog-cpu.stat
cat "/sys/fs/cgroup/cpu,cpuacct/$v1hog/cpu.stat"
end v1-hog-cpu.stat $?

begin dmesg
dmesg | tail -n 40
end dmesg 0

echo "@@nodesat-vm done@@"
poweroff -f
