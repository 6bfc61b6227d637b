"""qkdlink — physics, key-rate estimation and an emulated QKD link.

Layers, each importing only the ones above it:

* ``qkdlink.physics``    pure functions: channel, source statistics, detectors, entropy, bounds.
* ``qkdlink.protocols``  per-protocol expected statistics and key-rate estimation
                         (decoy BB84, MDI-QKD, twin-field QKD), three analysis modes.
* ``qkdlink.emulator``   stateful device models, fault catalogue and the frame-stepping ``Link``.
"""
