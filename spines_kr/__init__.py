"""spines-kr: a kernel-routing overlay manager.

One daemon per router forms an overlay of virtual links, measures them, floods link state,
computes routes and installs them in the Linux kernel over netlink (see ../shared/design.md for
the architecture: measure -> flood -> compute -> reconcile).

Layers (imports point downwards only):
    cli, lab          user entry points
    daemon            the process: asyncio loop, sockets, lifecycle
    netlink           the only code that touches the kernel (pyroute2)
    routing, wire     pure: values in, values out (no sockets, no clock, no kernel)
"""

__version__ = "0.1.0"

#: Route protocol number written into rtm_protocol of every route we install; iproute2 names it
#: "spines" through systemd/iproute2/rt_protos.d/spines.conf.  81 is unassigned in iproute2's
#: rt_protos (the Spines port is 8100).
RTPROT_SPINES = 81
