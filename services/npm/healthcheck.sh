#!/bin/sh
# Exit 0 when npm answers, non-zero otherwise.
wget -q -O /dev/null http://127.0.0.1:81/
