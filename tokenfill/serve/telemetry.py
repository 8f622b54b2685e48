"""What the language server showed and whether the person kept it, saved on this machine only.

Each completion shown (the first item of a request) waits for its outcome: accepted (the item's
accept command, or llm-ls's acceptCompletion), rejected (llm-ls's rejectCompletion), or passed
over (the next request for the same document came first). The outcome is appended to a JSON
lines file with what the confidence gate scored (`features`, `confidence`), so that
`tokenfill gate --telemetry FILE` can refit the gate to this person. Nothing is ever sent
anywhere; the file starts anew (the previous one kept as `.1`) past `MAX_BYTES`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tokenfill.paths import user_state

log = logging.getLogger("tokenfill.lsp")
MAX_BYTES = 8 << 20


def telemetry_path() -> Path:
    """$XDG_STATE_HOME/tokenfill/telemetry.jsonl (~/.local/state by default)."""
    return user_state() / "telemetry.jsonl"


class Telemetry:
    def __init__(self, path: Path):
        self.path = path
        self.pending: dict[str, Any] = {}   # uri -> the answer shown there, awaiting its outcome

    def shown(self, uri: str, answer: Any) -> None:
        if answer.features is not None:
            self.pending[uri] = answer

    def accepted(self, text: str) -> None:
        """An item was accepted: its text ends with the completion shown (an item extending a
        selected suggestion holds the selection's text first)."""
        for uri, answer in list(self.pending.items()):
            if text.endswith(answer.text):
                self._save(self.pending.pop(uri), True)
                return

    def rejected(self) -> None:
        """The client said the last completion shown was rejected."""
        if self.pending:
            uri = next(reversed(self.pending))
            self._save(self.pending.pop(uri), False)

    def ignored(self, uri: str) -> None:
        """A new request for `uri`: what was shown there before was passed over."""
        answer = self.pending.pop(uri, None)
        if answer is not None:
            self._save(answer, False)

    def _save(self, answer: Any, accepted: bool) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size > MAX_BYTES:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": round(time.time()), "accepted": accepted,
                                    "confidence": answer.confidence,
                                    "features": answer.features}) + "\n")
        except OSError as e:  # a full or read-only disk costs the record, never a completion
            log.warning("telemetry not saved to %s: %s", self.path, e)
