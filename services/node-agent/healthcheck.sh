#!/bin/sh
# Exit 0 when node-agent answers, non-zero otherwise.
homelab --version >/dev/null
