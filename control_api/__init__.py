"""The control API: the one write path into the running links (faults, calibration actions, the
runtime's status), served beside the exporters by ``qkdops up``.

``server`` holds the HTTP service; its client (``qkdops.control_client``) lives in the core layer
so the calibration jobs and game days can act on a link without loading the server.
"""
