"""Key delivery: the sites' key management entities (KMEs) serving ETSI GS QKD 014 over mutual TLS.

``store`` holds both ends' keys (fed by the runtime's hand-off), ``etsi`` is the API's rules,
``server`` its HTTPS listeners, ``pki`` the development certificates, ``client`` an SAE's side.
"""
