#!/usr/bin/env bash
# Shared by benchmarks/run and benchmarks/scaling (sourced): the virtualenv, nginx, and traps that
# stop the Python driver and any server it registered. Call `prepare`, then `launch SCRIPT ARGS...`.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"

base_python() {
    local candidate
    for candidate in "$HOME"/.pyenv/versions/3.11*/bin/python; do
        if [ -x "$candidate" ]; then echo "$candidate"; return; fi
    done
    command -v python3
}

# (Re)make the virtualenv when it is missing or requirements.txt changed since it was made
ensure_venv() {
    local stamp="$VENV/.requirements.sha256" want
    want="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
    echo "benchmarks/run: preparing $VENV" >&2
    rm -rf "$VENV"
    "$(base_python)" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
    echo "$want" > "$stamp"
}

ensure_nginx() {
    if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then return; fi
    echo "benchmarks/run: installing nginx" >&2
    # Keep the package's own service from starting: the harness runs its own nginx, and nothing else
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1; fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    if [ -n "$made_policy" ]; then rm -f "$policy"; fi
}

ensure_tinyproxy() {
    # For the proxy-small-seq workload
    if command -v tinyproxy >/dev/null 2>&1 || [ -x /usr/sbin/tinyproxy ]; then return; fi
    echo "benchmarks/run: installing tinyproxy" >&2
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1; fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tinyproxy >/dev/null
    if [ -n "$made_policy" ]; then rm -f "$policy"; fi
}

ensure_lowhaio_0_0_89() {
    # lowhaio 0.0.89, a benchmark peer: its wheel is unpacked beside the virtualenv, and never
    # installed, where it would shadow the repository's lowhaio
    local dir="$VENV/lowhaio-0.0.89"
    if [ -e "$dir/lowhaio.py" ]; then return; fi
    echo "benchmarks/run: fetching lowhaio 0.0.89" >&2
    rm -rf "$dir"
    "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary :all: --dest "$dir/wheel" 'lowhaio==0.0.89'
    "$VENV/bin/python" -m zipfile -e "$dir"/wheel/lowhaio-0.0.89-*.whl "$dir/unpacked"
    mv "$dir/unpacked/lowhaio.py" "$dir/lowhaio.py"
    "$VENV/bin/python" -m compileall -q "$dir/lowhaio.py"   # as installed, like the snapshot
}

prepare() {
    ensure_venv
    ensure_lowhaio_0_0_89
    ensure_nginx
    ensure_tinyproxy
    command -v taskset >/dev/null || { echo "benchmarks/run: taskset (util-linux) is required" >&2; exit 2; }
}

# The harness stops its servers itself (on normal exit, errors and SIGTERM). It runs in the background
# so that these traps fire at once on Ctrl-C or TERM: they ask it to stop, wait for its cleanup, and then
# kill whatever server it had registered in BENCH_PID_FILE, in case it could not clean up.
BENCH_PID_FILE="$(mktemp)"
export BENCH_PID_FILE
HARNESS=""
cleanup() {
    local pid
    if [ -n "$HARNESS" ] && kill -0 "$HARNESS" 2>/dev/null; then
        kill -TERM "$HARNESS" 2>/dev/null || true
        wait "$HARNESS" 2>/dev/null || true
    fi
    while read -r pid; do
        kill "$pid" 2>/dev/null || true
    done < "$BENCH_PID_FILE"
    rm -f "$BENCH_PID_FILE"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs "$@" (the Python driver) in the background, so that the traps fire at once, and waits for it
launch() {
    "$VENV/bin/python" "$@" &
    HARNESS=$!
    wait "$HARNESS"
}
