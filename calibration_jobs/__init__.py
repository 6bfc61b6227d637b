"""Calibration and decoy-estimation jobs that close the loop: read signals, act through the control
API, verify, record (see README.md beside this file)."""
