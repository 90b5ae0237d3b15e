"""The policy rule that makes an overlay's own route table take effect.

Data model: one overlay owns one route table; when that table is not main (254), the kernel
only consults it through a rule ``priority P lookup T``, which we install with our route
protocol (FRA_PROTOCOL, Linux >= 4.17) so it is recognisably ours (``ip rule`` shows
``proto spines``).  Two overlays on one host have two tables and two rules, and each touches
only the rule of its own table and protocol.

Entry points: ``RuleTable(table, priority, protocol, netns)`` with ``dump()`` (our rules for our
table: a list of priorities), ``ensure()`` (exactly one rule at our priority: adds it, removes
ours at other priorities, left behind by a configuration change) and ``remove()`` (at exit).

Messages are pyroute2's ``fibmsg`` (linux/fib_rules.h); rules are few, so no fast path.

Kernel behaviour (6.18): a rule is keyed by all its selectors, so adding the same rule twice
fails with EEXIST (``ip rule add pref 20100 lookup 100 proto 81`` twice -> "File exists"); a
delete that names priority, table and protocol removes exactly ours.
"""

from __future__ import annotations

import errno
import socket

from pyroute2.netlink.rtnl.fibmsg import fibmsg

from spines_kr import RTPROT_SPINES
from spines_kr.netlink.kernel import (NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NLMSGHDR,
                                      dump_request, exchange, open_socket)

RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
FR_ACT_TO_TBL = 1
NLM_F_EXCL = 0x200
RT_TABLE_MAIN = 254


def default_priority(table: int) -> int:
    """A rule priority derived from the table: before main's 32766, distinct per table."""
    return 20000 + table % 10000


def _rule(msg_type: int, seq: int, table: int, priority: int, protocol: int) -> bytes:
    msg = fibmsg()
    msg["family"] = socket.AF_INET
    msg["table"] = table if table < 256 else 0
    msg["action"] = FR_ACT_TO_TBL
    msg["attrs"] = [("FRA_TABLE", table), ("FRA_PRIORITY", priority), ("FRA_PROTOCOL", protocol)]
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | (
        NLM_F_CREATE | NLM_F_EXCL if msg_type == RTM_NEWRULE else 0)
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


class RuleTable:
    def __init__(self, table: int, priority: int | None = None, protocol: int = RTPROT_SPINES,
                 netns: str | None = None):
        self.table = table
        self.priority = default_priority(table) if priority is None else priority
        self.protocol = protocol
        self._sock = open_socket(netns)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def dump(self) -> list[int]:
        """Priorities of IPv4 rules with our protocol that look up our table."""
        found = []
        body = bytes([socket.AF_INET]) + bytes(11)  # struct fib_rule_hdr: only the family
        for _mtype, payload in dump_request(self._sock, self._next(), RTM_GETRULE, body):
            msg = fibmsg(_header(payload))
            msg.decode()
            if (msg.get_attr("FRA_PROTOCOL") == self.protocol
                    and (msg.get_attr("FRA_TABLE") or msg["table"]) == self.table):
                found.append(msg.get_attr("FRA_PRIORITY") or 0)
        return sorted(found)

    def ensure(self) -> list[str]:
        """Exactly one rule of ours for our table, at our priority; return what changed."""
        changes = []
        have = self.dump()
        for prio in have:
            if prio != self.priority:
                self._write(RTM_DELRULE, prio)
                changes.append(f"removed stale rule priority {prio}")
        if self.priority not in have:
            self._write(RTM_NEWRULE, self.priority)
            changes.append(f"added rule priority {self.priority} lookup {self.table}")
        return changes

    def remove(self) -> bool:
        removed = False
        for prio in self.dump():
            self._write(RTM_DELRULE, prio)
            removed = True
        return removed

    def _write(self, msg_type: int, priority: int) -> None:
        seq = self._next()
        code, message = exchange(self._sock, [(seq, _rule(msg_type, seq, self.table, priority,
                                                           self.protocol))])[seq]
        ok = (code == 0 or (msg_type == RTM_NEWRULE and code == errno.EEXIST)
              or (msg_type == RTM_DELRULE and code == errno.ENOENT))
        if not ok:
            raise OSError(code, f"policy rule priority {priority} lookup {self.table}: {message}")


def _header(payload: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), RTM_NEWRULE, 0, 0, 0) + payload
