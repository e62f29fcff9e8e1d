"""Parsing a jobs file that changes while the queue runs, keeping each job line's identity.

A job is known by ``Line.key`` = (command, ident). In a file read once, ident is the occurrence
(how many earlier lines have the same command). While the queue runs, lines with the same
command are told apart across edits: when the text changes other than by an append, the new
lines are matched to the old ones (unchanged lines first, then lines edited in place by command)
and keep their idents; other lines get the ident of a line last seen with the same text (a
half-written file read during an editor's save must not renumber anything), else the lowest
free one. So deleting the first of two identical lines leaves the second with its own identity
(and its own status), although its occurrence drops from 1 to 0. Such occurrence changes are
handed out (``take_moves``) so the state log, which is keyed by occurrence, can follow them.
"""
from __future__ import annotations

import difflib
from collections import deque
from typing import Optional

from utility.queue.jobsfile import Line, parse_text

Moves = dict[str, list[tuple[int, int]]]     # command -> [(old occurrence, new occurrence)]


class ParseCache:
    """parse_text(strict=False) for a file that is mostly appended to: when the new text
    starts with the last one (ending at a line end), only the tail is parsed; after a
    status write, set() hands over the lines the writer already knows."""

    def __init__(self, path: str = "Jobs.csv"):
        self.path = path
        self.text: Optional[str] = None
        self.lines: list[Line] = []
        self.counts: dict[str, int] = {}      # occurrences so far, per command
        # per command: ident -> (raw line, occurrence) when last seen; it outlives a read of a
        # half-written file (an editor's save), so a line that comes back gets its ident back
        self.seen: dict[str, dict[int, tuple[str, int]]] = {}
        self.moves: Moves = {}                # occurrence changes not yet taken

    def parse(self, text: str, errors: Optional[list[str]] = None) -> list[Line]:
        old = self.text
        if old is not None and text == old:
            return self.lines
        if old and old.endswith("\n") and text.startswith(old):
            tail = parse_text(text[len(old):], self.path, strict=False, errors=errors,
                              first_lineno=len(self.lines) + 1, counts=self.counts)
            used: dict[str, set] = {}
            for ln in self.lines:
                if ln.kind == "job":
                    used.setdefault(ln.command, set()).add(ln.ident)
            self._assign([ln for ln in tail if ln.kind == "job"], used)
            self._remember(tail)
            lines = self.lines + tail
        else:
            self.counts = {}
            lines = parse_text(text, self.path, strict=False, errors=errors, counts=self.counts)
            self._carry_idents(self.lines, lines)
            self._remember(lines)
        self.text, self.lines = text, lines
        return lines

    def set(self, text: str, lines: list[Line]) -> None:
        """The writer changed only status words: same commands, same occurrences."""
        self.text, self.lines = text, lines
        self._remember(lines)

    def take_moves(self) -> Moves:
        """Occurrence changes of job lines since the last call (command -> [(old, new)])."""
        moves, self.moves = self.moves, {}
        return moves

    # -- identities -------------------------------------------------------------------------
    def _carry_idents(self, old: list[Line], new: list[Line]) -> None:
        used: dict[str, set] = {}
        paired = set()
        for o, n in _pairs(old, new):
            n.ident = o.ident
            paired.add(id(n))
            used.setdefault(n.command, set()).add(n.ident)
        self._assign([n for n in new if n.kind == "job" and id(n) not in paired], used)

    def _assign(self, lines: list[Line], used: dict[str, set]) -> None:
        """Idents for lines not matched to a line of the previous read: the ident of a line
        seen before with exactly this text if it is free, else the lowest free one."""
        for ln in lines:
            taken = used.setdefault(ln.command, set())
            known = self.seen.get(ln.command, {})
            same = [i for i, (raw, _) in sorted(known.items()) if raw == ln.raw and i not in taken]
            ident = same[0] if same else min(set(range(len(taken) + 1)) - taken)
            ln.ident = ident
            taken.add(ident)

    def _remember(self, lines: list[Line]) -> None:
        for ln in lines:
            if ln.kind != "job":
                continue
            known = self.seen.setdefault(ln.command, {})
            before = known.get(ln.ident)
            if before is not None and before[1] != ln.occurrence:
                self.moves.setdefault(ln.command, []).append((before[1], ln.occurrence))
            known[ln.ident] = (ln.raw, ln.occurrence)


def _pairs(old: list[Line], new: list[Line]) -> list[tuple[Line, Line]]:
    """Job lines of `old` and `new` that are the same job: equal lines matched in order (the
    common head and tail first, cheap for the usual one-line edit), then, within each changed
    block, lines whose command is unchanged (a status or option edited by hand)."""
    head = 0
    while head < min(len(old), len(new)) and old[head].raw == new[head].raw:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail].raw == new[-1 - tail].raw:
        tail += 1
    out = [(old[i], new[i]) for i in range(head)]
    out += [(old[len(old) - 1 - k], new[len(new) - 1 - k]) for k in range(tail)]
    mid_old, mid_new = old[head:len(old) - tail], new[head:len(new) - tail]
    sm = difflib.SequenceMatcher(None, [x.raw for x in mid_old], [x.raw for x in mid_new],
                                 autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            out += list(zip(mid_old[i1:i2], mid_new[j1:j2]))
        elif tag == "replace":
            waiting: dict[str, deque] = {}
            for o in mid_old[i1:i2]:
                if o.kind == "job":
                    waiting.setdefault(o.command, deque()).append(o)
            for n in mid_new[j1:j2]:
                if n.kind == "job" and waiting.get(n.command):
                    out.append((waiting[n.command].popleft(), n))
    return [(o, n) for o, n in out if o.kind == "job" and n.kind == "job"]
