"""The Python client of a spines-kr daemon: a socket-like API over the client-daemon protocol
(Spines' libspines, byte-compatible: ``../shared/libspines-protocol.md``), so that Python
applications send and receive messages across the overlay as C programs linked with libspines do.
"""
