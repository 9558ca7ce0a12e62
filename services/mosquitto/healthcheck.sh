#!/bin/sh
# Exit 0 when mosquitto answers, non-zero otherwise.
mosquitto_sub -h 127.0.0.1 -t "\$SYS/broker/uptime" -C 1 -W 5 >/dev/null
