#!/bin/sh
# Exit 0 when outline answers, non-zero otherwise.
wget -q -O /dev/null http://127.0.0.1:3000/_health
