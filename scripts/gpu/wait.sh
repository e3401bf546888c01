#!/usr/bin/env bash
# Watch the detached pipeline for up to $1 seconds (default 560), then pack its results into $OUT.
R=${R:-/tmp/h7res}; limit=${1:-560}; start=$(date +%s)
while (( $(date +%s) - start < limit )); do
  grep -q "PIPELINE \(DONE\|FAILED\)" $R/pipeline.log 2>/dev/null && break
  sleep 5
done
tar czf $OUT/results.tar.gz -C $R . 2>/dev/null  # one file back ($OUT takes at most 8)
grep -v "it/s\]" $R/pipeline.log | tail -60
