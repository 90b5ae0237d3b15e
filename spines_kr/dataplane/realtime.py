"""Soft-real-time links (Spines' SOFT_REALTIME_LINKS, link protocol 2): recover what can still
arrive in time, drop what cannot, never hold anything back.  Pure: values in, values out.

Spines' behaviour honoured (daemon/realtime_udp.c, link.h; our own code): the sender keeps each
frame it sent for a short history (``HISTORY_TIME``, 100 ms); the receiver, seeing a gap in the
sequence, asks for the missing frames at once, one NACK for the gap; the sender retransmits a
frame asked for while it is still in the history; retransmissions are capped at a share of the
link's traffic (Spines' RT_RETRANSM_TOK: half); delivery never waits for a lost frame: whatever
arrives is handed on at once, a late retransmission included.

Ours beyond Spines: one second chance.  Spines asks once: a lost NACK or a lost retransmission
(each as likely as the loss itself) leaves about a tenth of the losses of a 5 % link
unrecovered, some 1.5 % over three such hops.  A frame still missing ``retry_after`` (the
link's round trip and a half, given by the owner) after it was asked for, and still within
the budget, is asked for once more (``poll``), and the sender answers a frame at most twice
(``MAX_RESENDS``); the retransmission cap bounds what that costs.

And the deadline is end to end.  Every record carries the extra delay it gained
on its way (``age``, ms, in ``wire.data``): a retransmission adds the time since the frame's
first transmission on this hop; a record whose age would pass ``budget_ms`` is not retransmitted
(and a receiver drops, counted ``late``, a record that arrives older than that), so a
soft-real-time message is delivered within its path's latency plus the budget, or not at all.

Data model, sending side (``RealtimeSender``): ``history`` (seq -> (sent_at, records, size)),
oldest first, pruned past ``history`` seconds; ``nxt``; retransmission ``tokens`` (bytes: each
new frame adds ``retransmit_share`` of its size, up to ``burst``).  Receiving side
(``RealtimeReceiver``): ``highest`` frame seen, the recent ones seen (duplicates suppressed
within ``window`` frames), the missing ones already asked for (``asked``: seq -> (first asked,
asked again?)), the earliest second request due (``retry_due``).

Entry points: ``RealtimeSender(params, epoch)`` with ``send(records, now) -> seq``,
``on_nack(ack, now) -> [(seq, records)]``, ``prune(now)``; ``RealtimeReceiver(params)`` with
``on_frame(data, now, retry_after) -> (records, nack or None)``, ``poll(now, retry_after) -> nack
or None`` (the second requests due), ``next_deadline()``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from spines_kr.dataplane.reliable import frame_size
from spines_kr.wire import links as wl

INF = float("inf")
MAX_RESENDS = 2  # a frame is retransmitted at most this often (a request and a second one)


@dataclass(frozen=True, slots=True)
class RealtimeParams:
    history: float = 0.1  # s a sent frame is kept for retransmission (Spines' HISTORY_TIME)
    budget_ms: int = 100  # extra delay a record may gain on its whole way
    retransmit_share: float = 0.5  # retransmitted bytes at most this share of new bytes
    burst: int = 64 * 1024
    window: int = 4096  # frames: duplicates recognised within, gaps asked for within
    max_gap: int = 256  # at most this many frames asked for after one jump


class RealtimeSender:
    def __init__(self, params: RealtimeParams, epoch: int) -> None:
        self.p = params
        self.epoch = epoch
        self.nxt = 0
        self.history: OrderedDict[int, tuple[float, tuple, int]] = OrderedDict()
        self.tokens = float(params.burst) * params.retransmit_share
        self.stats = {"frames_sent": 0, "nacks_in": 0, "retransmissions": 0,
                      "too_old": 0, "capped": 0, "late_records_dropped": 0}

    def send(self, records, now: float) -> int:
        """Assign the next sequence to a frame being sent now; keep it for the history."""
        self.prune(now)
        records = tuple(records)
        size = frame_size(records)
        seq = self.nxt
        self.nxt += 1
        self.history[seq] = (now, records, size, 0)
        self.tokens = min(self.p.burst, self.tokens + size * self.p.retransmit_share)
        self.stats["frames_sent"] += 1
        return seq

    def prune(self, now: float) -> None:
        h, limit = self.history, now - self.p.history
        while h:
            seq, (sent_at, _r, _s, _n) = next(iter(h.items()))
            if sent_at >= limit and len(h) <= self.p.window:
                break
            h.popitem(last=False)

    def on_nack(self, ack: wl.LinkAck, now: float) -> list[tuple[int, tuple]]:
        """The frames asked for that can still be useful, records aged by the wait."""
        if ack.epoch != self.epoch:
            return []
        self.prune(now)
        out = []
        for s32 in ack.nacks:
            self.stats["nacks_in"] += 1
            seq = wl.unwrap(s32, self.nxt)
            entry = self.history.get(seq)
            if entry is None:
                self.stats["too_old"] += 1
                continue
            sent_at, records, size, resent = entry
            if resent >= MAX_RESENDS:
                self.stats["too_old"] += 1
                continue
            if self.tokens < size:
                self.stats["capped"] += 1
                continue
            extra = int((now - sent_at) * 1000 + 0.999)
            aged = tuple(replace(r, age=min(0xFFFF, r.age + extra)) for r in records
                         if r.age + extra <= self.p.budget_ms)
            self.stats["late_records_dropped"] += len(records) - len(aged)
            if not aged:
                self.stats["too_old"] += 1
                continue
            self.tokens -= size
            self.history[seq] = (sent_at, records, size, resent + 1)
            self.stats["retransmissions"] += 1
            out.append((seq, aged))
        return out

    def status(self) -> dict:
        return {"history_frames": len(self.history), **self.stats}


class RealtimeReceiver:
    def __init__(self, params: RealtimeParams) -> None:
        self.p = params
        self.epoch: int | None = None
        self.highest = -1
        self.seen: set[int] = set()
        self.asked: OrderedDict[int, list] = OrderedDict()  # seq -> [first asked, asked again]
        self.retry_due = INF
        self.stats = {"frames_in": 0, "duplicates": 0, "nacks_out": 0, "nacks_again": 0,
                      "recovered": 0, "late_records": 0, "recovery_s_sum": 0.0,
                      "gaps_given_up": 0}

    def on_frame(self, data: wl.LinkData, now: float,
                 retry_after: float = INF) -> tuple[list, wl.LinkAck | None]:
        """(records to hand on now, the NACK to send now or None)."""
        if data.epoch != self.epoch:
            self.epoch, self.highest = data.epoch, -1
            self.seen.clear()
            self.asked.clear()
        self.stats["frames_in"] += 1
        near = self.highest if self.highest >= 0 else 0
        seq = wl.unwrap(data.seq, near)
        if self.highest < 0:
            seq = data.seq  # the first frame of an epoch
        if seq in self.seen or seq <= self.highest - self.p.window:
            self.stats["duplicates"] += 1
            return [], None
        self.seen.add(seq)
        nack = None
        asked = self.asked.pop(seq, None)
        if asked is not None:
            self.stats["recovered"] += 1
            self.stats["recovery_s_sum"] += now - asked[0]
        if seq > self.highest:
            if self.highest >= 0 and seq > self.highest + 1:
                first = max(self.highest + 1, seq - self.p.max_gap)
                self.stats["gaps_given_up"] += first - (self.highest + 1)
                missing = tuple(range(first, seq))
                for m in missing:
                    self.asked[m] = [now, False]
                if now + retry_after < self.retry_due:
                    self.retry_due = now + retry_after
                self.stats["nacks_out"] += len(missing)
                nack = wl.LinkAck(wl.REALTIME, data.epoch, seq + 1, 0,
                                  nacks=tuple(m & wl.MASK for m in missing[-wl.MAX_NACKS:]))
            self.highest = seq
            if len(self.seen) > 2 * self.p.window:
                floor = self.highest - self.p.window
                self.seen = {s for s in self.seen if s > floor}
                while self.asked and next(iter(self.asked)) <= floor:
                    self.asked.popitem(last=False)
        records = [r for r in data.records if r.age <= self.p.budget_ms]
        self.stats["late_records"] += len(data.records) - len(records)
        return records, nack

    def poll(self, now: float, retry_after: float) -> wl.LinkAck | None:
        """The second request for the frames asked for ``retry_after`` ago or more that did
        not come, while they can still be useful (within the budget of their first request)."""
        if now < self.retry_due or self.epoch is None:
            return None
        again, self.retry_due = [], INF
        budget = self.p.budget_ms / 1000
        for seq, entry in list(self.asked.items()):
            first, retried = entry
            if now - first >= budget:
                del self.asked[seq]  # too late for anything now
                continue
            if retried:
                continue
            due = first + retry_after  # compared as computed: no float drift can spin the loop
            if due <= now:
                entry[1] = True
                again.append(seq)
            elif due < self.retry_due:
                self.retry_due = due
        if not again:
            return None
        self.stats["nacks_again"] += len(again)
        return wl.LinkAck(wl.REALTIME, self.epoch, (self.highest + 1) & wl.MASK, 0,
                          nacks=tuple(m & wl.MASK for m in again[-wl.MAX_NACKS:]))

    def next_deadline(self) -> float:
        return self.retry_due

    def status(self) -> dict:
        s = dict(self.stats)
        rec = s.pop("recovery_s_sum")
        s["recovery_ms"] = round(1000 * rec / s["recovered"], 2) if s["recovered"] else None
        s["waiting_for"] = len(self.asked)
        return s
