#!/usr/bin/env bash
# A protocol suite on LANES one-thread lanes (default 2: one per core of a 2-core machine), then its report:
#     bash benchmarks/protocol/lanes.sh SUITE [LANES] [--dry-run]
# Lane 1 is this checkout; lane k >= 2 the git worktree <this checkout>-lane<k> beside it, detached at
# this checkout's HEAD (made, or moved there), its .venv a link to this one's and its DVC cache this
# one's (.dvc/config.local). benchmarks/protocol/lanes.py splits the suite's chains, run by run (label x
# order x seed), between the lanes by their unfinished stages' one-thread hours, costliest first; the stages chains of
# two lanes need (the base, the data, the first-step experts) run first, here. Then every lane runs
#     cd LANE && PYTHONPATH=$PWD OMP_NUM_THREADS=1 PROTOCOL_LANES="<the other lanes>" RECALL_MEMORY_LOCK=... nice -n 19 \
#         bash benchmarks/protocol/run.sh SUITE <its chains' stage globs>
# at once, in the background (their largest training passes take turns: RECALL_MEMORY_LOCK, see
# recall/training/memory.py), and when all have succeeded this checkout runs the whole suite (every
# stage a lane finished is adopted, none runs again) and the report: benchmarks/results/protocol.{json,md}.
# --dry-run prints the plan and those commands, and runs nothing.
# Logs: benchmarks/protocol/SUITE/lanes/{first,lane<k>,final}.log in this checkout, appended to
# (`tail -f` them). A failed lane runs once more (it resumes) and stops no other; failing again, the
# script names it and its log once every lane has ended, and exits 1.
# Resumable: Ctrl-C (or SIGTERM) stops every lane (each runs in its own process group); the same command
# started again resumes each from DVC's cache and the lanes' dvc.lock files, a chain with a killed
# stage's files in a lane staying in that lane (a fine-tune resumes from its last checkpoint).
# A protocol runs one commit: refused while this checkout has uncommitted changes to tracked files.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
usage="usage: bash benchmarks/protocol/lanes.sh SUITE [LANES] [--dry-run]"
dry=0 args=()
for arg in "$@"; do
    case $arg in
        --dry-run) dry=1 ;;
        -h | --help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        -*) echo "lanes.sh: unknown option $arg; $usage" >&2; exit 2 ;;
        *) args+=("$arg") ;;
    esac
done
[ ${#args[@]} -ge 1 ] && [ ${#args[@]} -le 2 ] || { echo "$usage" >&2; exit 2; }
suite=${args[0]}
count=${args[1]:-2}
folder=benchmarks/protocol/$suite
logs=$root/$folder/lanes
refuse() { echo "lanes.sh: $*" >&2; exit 2; }
[ -f "$folder/params.yaml" ] || refuse "no $folder/params.yaml"
[[ $count =~ ^[1-9][0-9]*$ ]] || refuse "LANES must be a number >= 1, got $count; $usage"
[ -x .venv/bin/python ] || refuse "no .venv here; set it up first (scripts/setup.sh)"
git diff --quiet HEAD -- ||
    refuse "$root has uncommitted changes to tracked files (git status); commit or stash them: a protocol runs one commit"
# the suite's task data are links into <checkout>/../shared/data: the lanes are siblings of this checkout
[ -d "$(dirname "$root")/shared/data" ] ||
    refuse "no $(dirname "$root")/shared/data beside $root (the suite's data links read <checkout>/../shared/data); put it there"

# The plan: per lane its checkout and stage globs, and what runs first (benchmarks/protocol/lanes.py).
mkdir -p "$logs"
PYTHONPATH=$root OMP_NUM_THREADS=1 .venv/bin/python benchmarks/protocol/lanes.py "$folder" --lanes "$count" \
    --shell "$logs/plan.tsv"
quoted() { [ $# -eq 0 ] || printf " '%s'" "$@"; }  # each word, single-quoted, after a space
first=() checkout=() globs=()
while IFS=$'\t' read -r -a line; do
    case ${line[0]} in
        first) first=("${line[@]:1}") ;;
        lane) checkout[${line[1]}]=${line[2]} globs[${line[1]}]=$(quoted "${line[@]:3}") ;;
    esac
done <"$logs/plan.tsv"
[ ${#checkout[@]} -eq "$count" ] || refuse "lanes.py wrote no plan for $count lanes ($logs/plan.tsv)"
others() { local k; for k in "${!checkout[@]}"; do [ "$k" = "$1" ] || printf '%s ' "${checkout[$k]}"; done; }
command_in() {  # command_in K GLOBS: lane K's run.sh command
    local lanes
    lanes=$(others "$1")
    printf "cd '%s' && PYTHONPATH=\$PWD OMP_NUM_THREADS=1 PROTOCOL_LANES='%s' RECALL_MEMORY_LOCK='%s' nice -n 19 bash benchmarks/protocol/run.sh '%s'%s" \
        "${checkout[$1]}" "${lanes% }" "$logs/memory.lock" "$suite" "$2"
}
first_cmd=
[ ${#first[@]} -eq 0 ] || first_cmd=$(command_in 1 "$(quoted "${first[@]}")")
final_cmd=$(command_in 1 "")

# The lanes' checkouts: git worktrees beside this one, at its HEAD, sharing its .venv and DVC cache.
head=$(git rev-parse HEAD)
common=$(git rev-parse --path-format=absolute --git-common-dir)
setup() {  # setup K: lane K's checkout (K >= 2), made or moved to HEAD
    local lane=${checkout[$1]}
    if [ ! -e "$lane" ]; then
        git worktree add --quiet --detach "$lane" "$head"
    elif [ "$(git -C "$lane" rev-parse --path-format=absolute --git-common-dir 2>/dev/null)" != "$common" ] ||
        [ "$(git -C "$lane" rev-parse --show-toplevel)" != "$(realpath "$lane")" ]; then
        refuse "$lane is not a worktree of this repository; move it away and run again"
    elif [ "$(git -C "$lane" rev-parse HEAD)" != "$head" ]; then
        git -C "$lane" diff --quiet HEAD -- ||
            refuse "$lane has uncommitted changes to tracked files; commit or discard them there (it runs $head)"
        git -C "$lane" checkout --quiet --detach "$head"
    fi
    [ -e "$lane/.venv" ] || ln -s "$root/.venv" "$lane/.venv"
    (cd "$lane" && "$root/.venv/bin/dvc" config --local cache.dir "$cache")
}

if [ "$dry" = 1 ]; then
    for k in "${!checkout[@]}"; do
        [ "$k" = 1 ] || [ -e "${checkout[$k]}" ] || echo "git worktree add --detach '${checkout[$k]}' $head  # lane $k"
    done
    [ -z "$first_cmd" ] || echo "$first_cmd  # first, here: what the lanes share"
    for k in "${!checkout[@]}"; do
        [ -z "${globs[$k]}" ] || echo "$(command_in "$k" "${globs[$k]}")  # lane $k, in the background"
    done
    echo "$final_cmd  # when every lane has succeeded: the whole suite and its report"
    exit 0
fi
cache=$(.venv/bin/dvc cache dir)
for k in "${!checkout[@]}"; do [ "$k" = 1 ] || setup "$k"; done

# Each command in its own process group (setsid), so that stopping lanes.sh stops all of it.
pids=() names=() outs=()
start() {  # start NAME LOG COMMAND [tee]: COMMAND in the background, its output appended to LOG
    echo "== $(date '+%F %T') $3" >>"$2"
    if [ "${4:-}" = tee ]; then
        setsid -w bash -c "$3" > >(tee -a "$2") 2>&1 </dev/null &
    else
        setsid -w bash -c "$3" >>"$2" 2>&1 </dev/null &
    fi
    pids+=($!) names+=("$1") outs+=("$2")
}
finish() {  # wait for every started command; name each that failed and its log
    local i rc failed=0
    for i in "${!pids[@]}"; do
        rc=0
        wait "${pids[$i]}" || rc=$?
        [ $rc -eq 0 ] || { echo "lanes.sh: ${names[$i]} failed (exit $rc); its log: ${outs[$i]}" >&2; failed=1; }
    done
    pids=() names=() outs=()
    return $failed
}
alive() {  # whether a process of a started group still runs
    local pid
    for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done
    return 1
}
stop() {  # TERM every process group started, KILL what is left after 30 s
    local pid _
    trap - INT TERM
    echo "lanes.sh: stopping every lane; the same command resumes them" >&2
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for _ in $(seq 30); do alive || break; sleep 1; done
    for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM

if [ -n "$first_cmd" ]; then
    echo "lanes.sh: first, here, what the lanes share: ${first[*]} (log: $logs/first.log)"
    start first "$logs/first.log" "$first_cmd" tee
    finish || exit 1
fi
for k in "${!checkout[@]}"; do
    [ -n "${globs[$k]}" ] || continue
    echo "lanes.sh: lane $k (${checkout[$k]}) started; log: $logs/lane$k.log"
    # a failed lane runs once more, resuming from DVC's cache (a stage the kernel killed for memory, say)
    lane=$(command_in "$k" "${globs[$k]}")
    start "lane $k" "$logs/lane$k.log" "$lane || { echo '== lanes.sh: lane $k failed; once more'; $lane; }"
done
finish || exit 1
echo "lanes.sh: every lane done; the whole suite here, then its report (log: $logs/final.log)"
start final "$logs/final.log" "$final_cmd" tee
finish || exit 1
