"""Game days: Chaos Toolkit experiments that break a running qkdops stack on purpose and prove that
detection (pages at the pager sink) and recovery (calibration jobs or the runbook's action) work.

``scenarios/`` holds one experiment per file; ``chaosqkd`` is the small Chaos Toolkit extension
whose actions and probes they call; ``scenario`` loads and checks a scenario file.
"""
