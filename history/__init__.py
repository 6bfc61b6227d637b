"""Weeks of emulated operation, backfilled into Prometheus in minutes (``qkdops history``).

``emulation`` runs the fleet on an emulated clock — drift, the calibration jobs acting, the incidents
of a plan (``plan``) — and renders every exporter's samples at each step; ``tsdb`` turns them, and
the recording rules evaluated over them, into TSDB blocks with ``promtool``; ``backfill`` puts the
two together and moves the blocks into the local Prometheus's data directory.
"""
