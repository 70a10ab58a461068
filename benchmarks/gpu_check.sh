#!/usr/bin/env bash
# The GPU check (issue 33), prepared for a lent GPU machine and sized to fit in about 8 minutes:
# installs from the lock (`make setup`, a no-op when .venv is current), runs the smoke batch on
# the device, then bench_captioning.py (the tutorial decoder against ours at the tutorial's
# sizes: eager, AMP, compiled), bench_features.py and bench_fusion.py on the device, and adds
# their figures to benchmarks/RESULTS.md under a heading naming the device.
#
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--small] [--no-batch] [--no-setup]
#                           [--results FILE]
#
# --small: tiny sizes and a dry run of the smoke batch (its plan, checked, run nowhere): the
#          fast test runs `--device cpu --small`, so the script is known to work before a GPU
#          is lent.
# --no-batch: leave out the smoke batch. --no-setup: leave .venv as it is.
# --results FILE (or $MMLAB_RESULTS): where the section goes (default benchmarks/RESULTS.md).
# Each step runs under a time limit of its own; a failed step is recorded in the section and
# the script goes on to the next, then exits non-zero.
set -uo pipefail

device=cuda small=0 batch=1 setup=1
results=${MMLAB_RESULTS:-}
while [ $# -gt 0 ]; do
    case $1 in
        --device) device=${2:?--device needs cpu or cuda}; shift ;;
        --device=*) device=${1#*=} ;;
        --small) small=1 ;;
        --no-batch) batch=0 ;;
        --no-setup) setup=0 ;;
        --results) results=${2:?--results needs a file}; shift ;;
        --results=*) results=${1#*=} ;;
        -h|--help) sed -n '2,17p' "$0" | cut -c3-; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case $device in
    cpu|cuda) ;;
    *) echo "gpu_check.sh: --device must be cpu or cuda, not '$device'" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
results=${results:-$root/benchmarks/RESULTS.md}
py=.venv/bin/python  # relative: the section shows the commands as a reader types them
work=$(mktemp -d "${TMPDIR:-/tmp}/mmlab-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
section=$work/section.md
failed=0

# `step NAME SECONDS COMMAND...`: runs the command under a time limit, shows its output as it
# comes, and adds it to the section as a block of its own.
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" >&2
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$work/out.txt" >&2
    local code=${PIPESTATUS[0]}
    {
        printf '### %s\n\n`%s` (%d s)' "$name" "$*" $((SECONDS - started))
        if [ "$code" -ne 0 ]; then
            printf ': **failed (exit %d)**, the last lines:\n\n```\n' "$code"
            tail -n 20 "$work/out.txt" | grep -v cpp_extension.py
            printf '```\n\n'
        else
            printf '\n\n'
            grep -v -e cpp_extension.py -e '^\s*warnings.warn' "$work/out.txt"
            printf '\n'
        fi
    } >>"$section"
    [ "$code" -eq 0 ] || failed=1
}

if [ "$setup" -eq 1 ]; then
    make --no-print-directory setup >&2 || { echo "gpu_check.sh: make setup failed" >&2; exit 1; }
fi
[ -x "$py" ] || { echo "gpu_check.sh: no $py (run make setup)" >&2; exit 1; }

name=$("$py" - "$device" <<'EOF'
import sys
import torch

if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("gpu_check.sh: --device cuda, but torch sees no CUDA device")
    print(torch.cuda.get_device_name(0))
else:
    with open("/proc/cpuinfo") as f:
        models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    print(models[0] if models else "CPU")
EOF
) || exit 1
cores=$(nproc 2>/dev/null || echo "?")
torch_version=$("$py" -c "import torch; print(torch.__version__)")

# Steps in the order of what they answer (the smoke batch finishes on the device; AMP's speed-up
# over the tutorial; compile's), each under a limit that keeps the whole within a lent slot.
if [ "$small" -eq 1 ]; then
    captioning=(--sizes small --train-batches 1 --rounds 1 --images 2 --max-len 3
        --amp on --compile off --threads 1)
    compiled=()
    beam=()
    features=(--encoder small_cnn --n 8 --batch-size 4 --image-size 32 --matmul-size 256)
    fusion=(--steps 2 --rounds 1 --compile off)
else
    captioning=(--sizes "tutorial 2048x14x14" "tutorial 1280x8x8" default --parts train
        --train-batches 4 --rounds 3 --amp on --compile off)
    # compilation takes tens of seconds a model: one size, eager and AMP, compiled
    compiled=(--sizes "tutorial 1280x8x8" --parts train --train-batches 4 --rounds 3
        --amp on --compile on)
    beam=(--sizes default "tutorial 1280x8x8" --parts beam --images 32 --rounds 2 --compile off)
    features=(--n 1024 --batch-size 64)
    fusion=(--steps 20 --rounds 3 --compile on)
fi

if [ "$batch" -eq 1 ]; then
    # the smoke batch in a workspace of its own: its data, cache and store start empty
    export MMLAB_HOME=$work/home
    mkdir -p "$MMLAB_HOME"
    if [ "$small" -eq 1 ]; then
        step "smoke batch (plan only)" 120 .venv/bin/mmlab run params/smoke.yaml \
            --set "device=$device" --dry-run
    else
        step "smoke batch" 240 .venv/bin/mmlab run params/smoke.yaml --set "device=$device"
    fi
    unset MMLAB_HOME
fi
step "bench_captioning.py, training" 150 "$py" benchmarks/bench_captioning.py \
    --device "$device" "${captioning[@]}"
if [ ${#compiled[@]} -gt 0 ]; then
    step "bench_captioning.py, training, compiled" 150 "$py" benchmarks/bench_captioning.py \
        --device "$device" "${compiled[@]}"
fi
if [ ${#beam[@]} -gt 0 ]; then
    step "bench_captioning.py, beam search" 90 "$py" benchmarks/bench_captioning.py \
        --device "$device" "${beam[@]}"
fi
step "bench_features.py" 90 "$py" benchmarks/bench_features.py --device "$device" "${features[@]}"
step "bench_fusion.py" 120 "$py" benchmarks/bench_fusion.py --device "$device" "${fusion[@]}"

# The section goes to the end of the results file, written to a temporary name and renamed.
{
    [ -s "$results" ] && printf '\n'
    printf '## GPU check on %s (%s)\n\n' "$name" "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf '`benchmarks/gpu_check.sh --device %s%s`: %s, %s cores, torch %s.\n\n' \
        "$device" "$([ "$small" -eq 1 ] && echo ' --small')" "$name" "$cores" "$torch_version"
    cat "$section"
} >"$work/tail.md"
mkdir -p "$(dirname "$results")"
tmp=$results.tmp.$$
{ [ -f "$results" ] && cat "$results"; cat "$work/tail.md"; } >"$tmp" && mv "$tmp" "$results"
echo "gpu_check.sh: figures for $name added to $results" >&2
exit "$failed"
