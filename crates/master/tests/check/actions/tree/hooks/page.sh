#!/bin/sh
# Reads the event (JSON) on stdin and pages whoever is on call.
exec logger -t halite-page
