#!/bin/sh
# Per-request server cost: a trivial V2 model (slices 10 of 256 floats) vs the bare
# grpc.aio echo (bench/echo_server.py), same client, same request, side by side.
# Needs a repository at /tmp/px holding the "trivial" model (see docs/benchmarks.md).
cd /work/main
PY=.venv/bin/python
run_bench() { $PY -m dl_inference bench --url grpc://$1 --model trivial --concurrency 8,32 --duration 3 --warmup 1 --quiet --input input:FP32:1,256 2>&1 | grep "^c=" | sed "s/^/$2 /"; }
# echo
$PY bench/echo_server.py > /tmp/px/echo.log 2>&1 & pid=$!; sleep 2
addr=$(grep -o "127.0.0.1:[0-9]*" /tmp/px/echo.log | head -1)
run_bench $addr echo
kill $pid; wait $pid 2>/dev/null
# ours, access log on / off
for mode in on off; do
  if [ $mode = off ]; then LL=warning; else LL=info; fi
  $PY -m dl_inference serve --model-repository /tmp/px --host 127.0.0.1 --grpc-port 18700 --http-port 0 --log-level $LL > /tmp/px/srv.log 2>&1 & pid=$!; sleep 5
  run_bench 127.0.0.1:18700 "ours-log$mode"
  kill $pid; wait $pid 2>/dev/null
done
