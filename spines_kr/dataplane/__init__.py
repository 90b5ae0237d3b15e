"""The user-space data plane: what the kernel cannot carry (design card, "The data plane").

Client messages between daemons, the link protocols Spines offers beyond best effort (reliable
links: per-link ARQ; soft-real-time links: deadline-bounded recovery), and multicast through the
overlay where the kernel has no multicast routing.  Each session and data link is a part of the
daemon like the overlay socket: it registers its file descriptors with the daemon's loop
(``daemon.loop``), owns its state and its next deadline (``loop.Deadline``), and talks to the
rest of the daemon through the commands API (``daemon.commands``).  The control plane always
goes first: data never delays a hello or a link-state update.
"""
