#!/bin/sh
# The checks of `cargo xtask systemd-test` (xtask/src/systemd_test.rs), run
# in the Debian 12 guest by tcpwatch-test.service once multi-user.target is
# up: install tcpwatch's package for real, then check the service as
# systemd runs it. The second serial port carries only the results:
# `CHECK NAME ok` or `CHECK NAME FAILED: why` per check, `TIMING NAME
# SECONDS`, `INFO ...`, `JOURNAL ...` after a failure, and
# `SYSTEMD-TEST-END rc=N` last.
set -u
OUT=/dev/ttyS1
PACKAGE=/root/tcpwatch.deb
CONFIG=/etc/tcpwatch/tcpwatch.toml
# CapEff that README documents for the daemon after attach (set by the host).
EXPECTED_CAPEFF=@EXPECTED_CAPEFF@
FAILED=0
PID=0
READY_AT=0

say() {
    echo "$*" >"$OUT"
    echo "$*"
}
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
prop() { systemctl show -p "$1" --value tcpwatch.service; }
state() { systemctl is-active tcpwatch.service; }
one_line() { tr '\n' '|' | cut -c1-600; }
# The unit's last journal lines, for a failure's reason.
journal_tail() { journalctl -u tcpwatch.service -o cat --no-pager -n 6 2>/dev/null | one_line; }
# What tcpwatch itself wrote (its stderr), not systemd's lines about it.
own_lines() { journalctl SYSLOG_IDENTIFIER=tcpwatch -o cat --no-pager 2>/dev/null; }

# check NAME FUNCTION: FUNCTION sets `why` and returns non-zero on failure.
check() {
    why=""
    if "$2"; then
        say "CHECK $1 ok"
    else
        say "CHECK $1 FAILED: ${why:-no reason given}"
        FAILED=$((FAILED + 1))
    fi
}

# wait_for SECONDS COMMAND...: until COMMAND succeeds, at most SECONDS.
wait_for() {
    limit=$1
    shift
    from=$(now)
    until "$@"; do
        if awk -v a="$from" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a >= l) }'; then
            return 1
        fi
        sleep 0.5
    done
}

installed() {
    from=$(now)
    if ! log=$(DEBIAN_FRONTEND=noninteractive dpkg -i "$PACKAGE" 2>&1); then
        why="dpkg -i failed: $(echo "$log" | tail -n 4 | one_line)"
        return 1
    fi
    say "TIMING install $(since "$from")"
    for f in /usr/bin/tcpwatch "$CONFIG" \
        /usr/share/tcpwatch/tcpwatch.rules.yml /usr/share/tcpwatch/tcpwatch.rules.test.yml \
        /usr/share/bash-completion/completions/tcpwatch /usr/share/zsh/vendor-completions/_tcpwatch \
        /usr/share/fish/vendor_completions.d/tcpwatch.fish \
        /usr/share/man/man1/tcpwatch.1.gz /usr/share/man/man1/tcpwatch-run.1.gz; do
        if [ ! -s "$f" ]; then
            why="$f is missing"
            return 1
        fi
    done
    unit=$(prop FragmentPath)
    case "$unit" in
    /lib/systemd/system/tcpwatch.service | /usr/lib/systemd/system/tcpwatch.service) ;;
    *)
        why="systemd loads tcpwatch.service from '$unit'"
        return 1
        ;;
    esac
    conffiles=$(dpkg-query -W -f='${Conffiles}' tcpwatch)
    if ! echo "$conffiles" | grep -q "^ $CONFIG "; then
        why="$CONFIG is not a conffile (conffiles: $(echo "$conffiles" | one_line))"
        return 1
    fi
    enabled=$(systemctl is-enabled tcpwatch.service)
    if [ "$enabled" != enabled ]; then
        why="systemctl is-enabled says $enabled"
        return 1
    fi
    if ! bash -c '. /usr/share/bash-completion/completions/tcpwatch && complete -p tcpwatch' >/dev/null 2>&1; then
        why="the bash completion script does not load"
        return 1
    fi
}

# dpkg -i returns once the postinst's start job is done: for Type=notify,
# once tcpwatch said READY=1.
started() {
    s=$(state)
    if [ "$s" != active ]; then
        why="after dpkg -i, systemctl is-active says $s: $(journal_tail)"
        return 1
    fi
    type=$(prop Type)
    if [ "$type" != notify ]; then
        why="Type=$type"
        return 1
    fi
    PID=$(prop MainPID)
    READY_AT=$(now)
    say "TIMING ready $(awk -v a="$(prop ExecMainStartTimestampMonotonic)" \
        -v b="$(prop ActiveEnterTimestampMonotonic)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')"
}

capabilities() {
    if [ "$PID" -le 0 ]; then
        why="no main process"
        return 1
    fi
    threads=0
    for status in /proc/"$PID"/task/*/status; do
        eff=$(awk '/^CapEff:/ { print $2 }' "$status")
        threads=$((threads + 1))
        if [ "$eff" != "$EXPECTED_CAPEFF" ]; then
            why="${status%/status}: CapEff $eff ($(capsh --decode="$eff" | cut -d= -f2)), documented $EXPECTED_CAPEFF ($(capsh --decode="$EXPECTED_CAPEFF" | cut -d= -f2))"
            return 1
        fi
    done
    say "INFO CapEff $EXPECTED_CAPEFF ($(capsh --decode="$EXPECTED_CAPEFF" | cut -d= -f2)) on $threads threads"
}

metrics() {
    if ! body=$(curl -sS --max-time 20 http://127.0.0.1:9775/metrics 2>&1); then
        why="GET /metrics: $body"
        return 1
    fi
    # Its own listener, seen through the eBPF programs and sock_diag.
    if ! echo "$body" | grep -q '^tcpwatch_sockets{state="LISTEN"} [1-9]'; then
        why="/metrics has no LISTEN socket ($(echo "$body" | grep -c '^tcpwatch_') tcpwatch_ samples)"
        return 1
    fi
    code=$(curl -sS --max-time 20 -o /dev/null -w '%{http_code}' http://127.0.0.1:9775/healthz 2>&1)
    if [ "$code" != 200 ]; then
        why="GET /healthz: $code"
        return 1
    fi
}

# WatchdogSec (30 s in the unit) passes with the same process, pinged.
watchdog() {
    limit=$(prop WatchdogUSec)
    case "$limit" in
    "" | 0 | infinity)
        why="the unit has no watchdog (WatchdogUSec=$limit)"
        return 1
        ;;
    esac
    sleep "$(awk -v r="$READY_AT" -v n="$(now)" 'BEGIN { l = r + 40 - n; print (l > 0 ? l : 0) }')"
    s=$(state)
    pid=$(prop MainPID)
    restarts=$(prop NRestarts)
    if [ "$s" != active ] || [ "$pid" != "$PID" ] || [ "$restarts" != 0 ]; then
        why="40 s after start: $s, pid $pid (was $PID), $restarts restarts: $(journal_tail)"
        return 1
    fi
    if journalctl -u tcpwatch.service -o cat --no-pager | grep -q 'Watchdog timeout'; then
        why="the watchdog fired: $(journal_tail)"
        return 1
    fi
    # The last ping came well after READY=1: tcpwatch keeps pinging.
    last=$(prop WatchdogTimestampMonotonic)
    ready=$(prop ActiveEnterTimestampMonotonic)
    if [ "${last:-0}" -lt $((ready + 20000000)) ]; then
        why="no watchdog ping 20 s after start (last ping at ${last:-none} us, ready at $ready us)"
        return 1
    fi
    say "INFO watchdog $limit, last ping $(((last - ready) / 1000000)) s after ready, no restart"
}

restarted() {
    [ "$(state)" = active ] && p=$(prop MainPID) && [ "$p" != 0 ] && [ "$p" != "$1" ]
}

restart_after_kill() {
    old=$(prop MainPID)
    from=$(now)
    systemctl kill -s KILL tcpwatch.service
    if ! wait_for 60 restarted "$old"; then
        why="no restart within 60 s of SIGKILL: $(state), pid $(prop MainPID) (was $old): $(journal_tail)"
        return 1
    fi
    say "TIMING restart $(since "$from")"
    n=$(prop NRestarts)
    if [ "$n" != 1 ]; then
        why="NRestarts=$n after one SIGKILL"
        return 1
    fi
    PID=$(prop MainPID)
}

bad_config() {
    cp "$CONFIG" /root/tcpwatch.toml.good
    echo 'bogus_key = 1' >>"$CONFIG"
    before=$(own_lines | wc -l)
    if systemctl restart tcpwatch.service 2>/dev/null; then
        cp /root/tcpwatch.toml.good "$CONFIG"
        why="systemctl restart succeeded with an unknown key in $CONFIG"
        return 1
    fi
    # Past RestartSec (5 s): still failed, not restarting.
    sleep 7
    s=$(state)
    status=$(prop ExecMainStatus)
    lines=$(own_lines | tail -n +$((before + 1)))
    count=$(printf '%s\n' "$lines" | grep -c .)
    cp /root/tcpwatch.toml.good "$CONFIG"
    if [ "$s" != failed ]; then
        why="with a bad configuration the unit is $s (exit status $status, $(prop NRestarts) restarts)"
        return 1
    fi
    if [ "$status" != 78 ]; then
        why="exit status $status, not 78 (EX_CONFIG)"
        return 1
    fi
    if [ "$count" != 1 ]; then
        why="$count lines from tcpwatch in the journal, not one: $(printf '%s' "$lines" | one_line)"
        return 1
    fi
    case "$lines" in
    *"$CONFIG"*bogus_key*) ;;
    *)
        why="the journal's line names not both the file and the key: $lines"
        return 1
        ;;
    esac
    say "INFO journal: $lines"
    systemctl reset-failed tcpwatch.service
    if ! systemctl start tcpwatch.service || [ "$(state)" != active ]; then
        why="with the configuration restored the unit is $(state): $(journal_tail)"
        return 1
    fi
}

purged() {
    before=$(journalctl -u tcpwatch.service -o cat --no-pager | wc -l)
    from=$(now)
    if ! log=$(DEBIAN_FRONTEND=noninteractive apt-get purge -y tcpwatch 2>&1); then
        why="apt-get purge failed: $(echo "$log" | tail -n 4 | one_line)"
        return 1
    fi
    say "TIMING purge $(since "$from")"
    for f in /usr/bin/tcpwatch /lib/systemd/system/tcpwatch.service \
        /usr/lib/systemd/system/tcpwatch.service /etc/tcpwatch \
        /etc/systemd/system/multi-user.target.wants/tcpwatch.service; do
        if [ -e "$f" ] || [ -L "$f" ]; then
            why="$f is still there after the purge"
            return 1
        fi
    done
    if pgrep -x tcpwatch >/dev/null; then
        why="tcpwatch still runs after the purge (pid $(pgrep -x tcpwatch | one_line))"
        return 1
    fi
    status=$(dpkg-query -W -f='${db:Status-Status}' tcpwatch 2>/dev/null)
    if [ -n "$status" ] && [ "$status" != not-installed ]; then
        why="dpkg says tcpwatch is $status"
        return 1
    fi
    load=$(prop LoadState)
    if [ "$load" != not-found ]; then
        why="systemd still has tcpwatch.service ($load)"
        return 1
    fi
    stop=$(journalctl -u tcpwatch.service -o cat --no-pager | tail -n +$((before + 1)))
    if ! echo "$stop" | grep -q 'Deactivated successfully' || echo "$stop" | grep -q 'Failed with result'; then
        why="not a clean stop: $(echo "$stop" | one_line)"
        return 1
    fi
}

say "TIMING boot $(now)"
checks_from=$(now)
check installed installed
check started started
check capabilities capabilities
check metrics metrics
check watchdog watchdog
check restart_after_kill restart_after_kill
check bad_config bad_config
check purge purged
say "TIMING checks $(since "$checks_from")"
if [ "$FAILED" -gt 0 ]; then
    journalctl -b -u tcpwatch.service -o short-monotonic --no-pager | tail -n 40 | sed 's/^/JOURNAL /' >"$OUT"
fi
say "SYSTEMD-TEST-END rc=$FAILED"
