"""Recalibration beside live sessions: the admin jobs (`/admin/calibrations`) and the embedded
default build, each a child process (protocol, child, worker), with the quality gate and the
speed check that decide whether a new version may be activated."""
