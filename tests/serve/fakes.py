"""A fake engine for the serving layer's tests: it speaks `CompletionRequest`s and answers with
what it was asked, so protocol adapters and the worker are tested without a model."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tokenfill.completion.engine import Completion
from tokenfill.completion.fim import FimUnsupportedError
from tokenfill.completion.request import CompletionRequest


class FakeCache:
    max_seq = 64


class FakeModel:
    def new_cache(self, batch: int, max_seq: int) -> FakeCache:
        return FakeCache()


class FakeMonitor:
    def warm_up(self) -> None:
        pass


@dataclass
class FakeFormat:
    name: str = "starcoder"
    prefix: str = "<fim_prefix>"
    suffix: str = "<fim_suffix>"
    middle: str = "<fim_middle>"


@dataclass
class FakeFim:
    format: FakeFormat = field(default_factory=FakeFormat)


class FakeTokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


class FakeEngine:
    """Completes with `text` in `pieces` pieces. `gate`, when set, holds each job until released
    (so a test can queue others behind it); a prefix of "boom" raises."""

    def __init__(self, text: str = "hello world", pieces: int = 2, fim: bool = True):
        self.text, self.pieces = text, pieces
        self.model, self.context, self.name = FakeModel(), 64, "fake"
        self.remote = None  # the model runs in-process
        self.monitor, self.tokenizer = FakeMonitor(), FakeTokenizer()
        self.fim = FakeFim() if fim else None
        self.requests: list[CompletionRequest] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def check(self, request: CompletionRequest) -> None:
        if self.fim is None and request.suffix:
            raise FimUnsupportedError("this model has no fill-in-the-middle tokens")

    def complete(self, request: CompletionRequest, *, slots=None, abort=None, on_text=None
                 ) -> Completion:
        self.requests.append(request)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if request.prefix == "boom":
            raise RuntimeError("the model fell over")
        step = max(1, len(self.text) // self.pieces)
        sent = ""
        for i in range(0, len(self.text), step):
            if abort is not None and abort():
                return Completion(sent, len(sent), "aborted", 1, 1, 0.0, 0.0, 0.0)
            piece = self.text[i:i + step]
            sent += piece
            if on_text is not None:
                on_text(piece)
        return Completion(sent, request.max_tokens, "length", 3, 3, 1.0, 2.0, 3.0)
