"""The ``qkdops`` command (``cli``, one ``*_cmd`` module per subcommand) and the supervision of the
local stack it brings up (``stack``) — the top layer: nothing else imports it.
"""
