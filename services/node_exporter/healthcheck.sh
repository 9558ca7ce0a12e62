#!/bin/sh
# Exit 0 when node_exporter answers, non-zero otherwise.
wget -q -O /dev/null http://127.0.0.1:9100/metrics
