"""The running system: links stepping in real time, block archive, post-processing, key hand-off.

Data flows one way: ``fleet`` steps each emulated link frame by frame and closes post-processing
blocks → ``archive`` makes each block durable → ``pipeline`` turns it into a result and key →
``keybuffer`` holds the key → ``handoff`` moves it into both ends' KME stores (``qkdops.kme``) →
``state`` accumulates what the exporters publish. Jobs, game days and
the control API act on links only through ``Fleet``'s methods.
"""
