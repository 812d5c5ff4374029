"""Stop sequences for a streamed local reply: the text that may begin one is held back, and
the reply is cut where one appears (the sequence itself is never sent, as Anthropic does)."""

from __future__ import annotations


class StopGate:
    """Holds back streamed text that may be the start of a stop sequence, and cuts the reply
    where one appears (the stop sequence itself is never sent, as Anthropic does)."""

    def __init__(self, stops: tuple[str, ...] | list[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.hit: str | None = None

    def feed(self, segment: str) -> str:
        if self.hit is not None or not segment:
            return ""
        self.text += segment
        found = [(self.text.find(s), s) for s in self.stops]
        found = [(i, s) for i, s in found if i >= 0]
        if found:
            index, self.hit = min(found)
            self.text = self.text[:index]
            return self.flush()
        upto = max(self.sent, len(self.text) - self.hold)
        out, self.sent = self.text[self.sent : upto], upto
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent :], len(self.text)
        return out
