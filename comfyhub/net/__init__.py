"""Networking helpers with no knowledge of comfyhub's own parts: the HTTP/1.1 client that
the proxy and the health checks share (http1.py) and the port checks (ports.py).

This package sits at the bottom of the layers, beside config, db and models: the
proxy, the lifecycle (services) and the launchers all use it, and it imports none of
them. Importing it does no work.
"""
