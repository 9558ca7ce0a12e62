#!/bin/sh
# Exit 0 when zigbee2mqtt answers, non-zero otherwise.
wget -q -O /dev/null http://127.0.0.1:8080/
