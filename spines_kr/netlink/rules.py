"""The policy rule that makes an overlay's own route table take effect.

Data model: one overlay owns one route table; when that table is not main (254), the kernel
only consults it through a rule ``priority P lookup T``, which we install with our route
protocol (FRA_PROTOCOL, Linux >= 4.17) so it is recognisably ours (``ip rule`` shows
``proto spines``).  Two overlays on one host have two tables and two rules, and each touches
only the rule of its own table and protocol.

Entry points: ``RuleTable(table, priority, protocol, netns)`` with ``dump()`` (our rules for our
table: a list of priorities), ``ensure()`` (exactly one rule at our priority: adds it, removes
ours at other priorities, left behind by a configuration change) and ``remove()`` (at exit).
The codec, ``encode_rule`` and ``decode_rule``, is the one place rules are built and read:
also for the multicast rules of ``netlink.mroute`` (family RTNL_FAMILY_IPMR, with an iif).

Messages are pyroute2's ``fibmsg`` (linux/fib_rules.h); rules are few, so no fast path.

Kernel behaviour (6.18): a rule is keyed by all its selectors, so adding the same rule twice
fails with EEXIST (``ip rule add pref 20100 lookup 100 proto 81`` twice -> "File exists"); a
delete that names priority, table and protocol removes exactly ours.
"""

from __future__ import annotations

import errno
import socket
from typing import NamedTuple

from spines_kr import RTPROT_SPINES
from spines_kr.netlink import messages
from spines_kr.netlink.core import (NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSGHDR,
                                    Netlink)

RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
FR_ACT_TO_TBL = 1
RT_TABLE_MAIN = 254
FIB_RULE_HDR_SIZE = 12  # struct fib_rule_hdr


class Rule(NamedTuple):
    family: int
    table: int
    priority: int
    protocol: int
    iifname: str = ""


def default_priority(table: int) -> int:
    """A rule priority derived from the table: before main's 32766, distinct per table."""
    return 20000 + table % 10000


def encode_rule(msg_type: int, seq: int, table: int, priority: int, protocol: int, *,
                family: int = socket.AF_INET, iifname: str | None = None) -> bytes:
    """RTM_NEWRULE (with NLM_F_CREATE | NLM_F_EXCL) or RTM_DELRULE of ``[iif IIFNAME] lookup
    TABLE pref PRIORITY proto PROTOCOL``."""
    msg = messages.fibmsg()
    msg["family"] = family
    msg["table"] = table if table < 256 else 0
    msg["action"] = FR_ACT_TO_TBL
    attrs = [("FRA_IIFNAME", iifname)] if iifname is not None else []
    msg["attrs"] = attrs + [("FRA_TABLE", table), ("FRA_PRIORITY", priority),
                            ("FRA_PROTOCOL", protocol)]
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | (
        NLM_F_CREATE | NLM_F_EXCL if msg_type == RTM_NEWRULE else 0)
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


def decode_rule(payload: bytes) -> Rule:
    msg = messages.fibmsg(NLMSGHDR.pack(NLMSGHDR.size + len(payload), RTM_NEWRULE, 0, 0, 0) + payload)
    msg.decode()
    return Rule(msg["family"], msg.get_attr("FRA_TABLE") or msg["table"],
                msg.get_attr("FRA_PRIORITY") or 0, msg.get_attr("FRA_PROTOCOL") or 0,
                msg.get_attr("FRA_IIFNAME") or "")


def dump_rules(nl: Netlink, family: int = socket.AF_INET) -> list[Rule]:
    """Every rule of ``family`` in the namespace."""
    body = bytes([family]) + bytes(FIB_RULE_HDR_SIZE - 1)  # only the family
    return [decode_rule(payload) for _mtype, payload in list(nl.dump(RTM_GETRULE, body))]


def write_rule(nl: Netlink, msg_type: int, table: int, priority: int, protocol: int, *,
               family: int = socket.AF_INET, iifname: str | None = None) -> tuple[int, str]:
    """Add or delete one rule; (errno, message), with "already there" (EEXIST on add) and
    "already gone" (ENOENT on delete) as success."""
    seq = nl.next_seq()
    code, message = nl.send_request(seq, encode_rule(msg_type, seq, table, priority, protocol,
                                                     family=family, iifname=iifname))
    if (msg_type == RTM_NEWRULE and code == errno.EEXIST) or (
            msg_type == RTM_DELRULE and code == errno.ENOENT):
        return 0, ""
    return code, message


class RuleTable:
    def __init__(self, table: int, priority: int | None = None, protocol: int = RTPROT_SPINES,
                 netns: str | None = None):
        self.table = table
        self.priority = default_priority(table) if priority is None else priority
        self.protocol = protocol
        self._nl = Netlink(netns)

    def close(self) -> None:
        self._nl.close()

    def dump(self) -> list[int]:
        """Priorities of IPv4 rules with our protocol that look up our table."""
        return sorted(r.priority for r in dump_rules(self._nl)
                      if r.protocol == self.protocol and r.table == self.table)

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
        code, message = write_rule(self._nl, msg_type, self.table, priority, self.protocol)
        if code:
            raise OSError(code, f"policy rule priority {priority} lookup {self.table}: {message}")
