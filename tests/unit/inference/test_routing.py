"""Which backend answers: ``RoutedEngine`` between Tunery's engine and llama.cpp, with stand-in backends.

The stand-ins stream a chunk per ``next`` and record which requests they served; what llama.cpp itself answers
is tested against a real ``llama-server`` in ``test_llama_cpp.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from tunery.config import Settings
from tunery.domain.errors import Unavailable
from tunery.inference.engine import GenerationChunk, GenerationRequest, SamplingParams
from tunery.inference.llama_cpp import LlamaCppEngine
from tunery.inference.routing import RoutedEngine


def chunks(backend: str, request: GenerationRequest) -> Iterator[GenerationChunk]:
    yield GenerationChunk(text=f"{backend}:{request.adapter_dir}")
    yield GenerationChunk(text="", finish_reason="stop", completion_tokens=1)


class FakeTunery:
    def __init__(self) -> None:
        self.served: list[str | None] = []
        self.closed = False

    def generate(self, request: GenerationRequest) -> Iterator[GenerationChunk]:
        self.served.append(request.adapter_dir)
        return chunks("tunery", request)

    def active_rows(self) -> int:
        return 0

    def generated_tokens(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class FakeLlama:
    def __init__(self, *, fits: bool = True, busy: bool = False, broken: bool = False) -> None:
        self.served: list[str | None] = []
        self._fits, self._busy, self._broken = fits, busy, broken

    def fits(self, request: GenerationRequest) -> bool:
        return self._fits

    def running(self, key: tuple[str, str | None]) -> bool:
        return key[1] in self.served

    def open(self, request: GenerationRequest) -> Iterator[GenerationChunk] | None:
        if self._broken:
            raise Unavailable("llama-server exited with code 1 at start-up")
        if self._busy:
            return None
        self.served.append(request.adapter_dir)
        return chunks("llama.cpp", request)

    def active_rows(self) -> int:
        return 0

    def generated_tokens(self) -> int:
        return 0

    def status(self) -> dict[str, Any]:
        return {"servers": []}

    def close(self) -> None:
        pass


def req(adapter: str | None) -> GenerationRequest:
    return GenerationRequest(base_model="tiny", prompt_ids=[1, 2, 3], params=SamplingParams(max_tokens=4),
                             adapter_dir=adapter)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def routed(llama: FakeLlama, policy: str = "auto", clock: Clock | None = None) -> tuple[RoutedEngine, list[FakeTunery]]:
    built: list[FakeTunery] = []

    def factory() -> FakeTunery:
        built.append(FakeTunery())
        return built[-1]

    engine = RoutedEngine(factory, cast(LlamaCppEngine, llama), policy, window_s=10.0, clock=clock or Clock())  # type: ignore[arg-type]
    return engine, built


def first_text(stream: Iterator[GenerationChunk]) -> str:
    return next(stream).text


def test_auto_sends_one_model_at_a_time_to_llama_cpp_and_mixed_models_to_tunery() -> None:
    llama = FakeLlama()
    clock = Clock()
    engine, built = routed(llama, clock=clock)
    a1 = engine.generate(req("a"))
    assert first_text(a1) == "llama.cpp:a"
    a2 = engine.generate(req("a"))  # the same model in flight: still llama.cpp
    assert first_text(a2) == "llama.cpp:a"
    b = engine.generate(req("b"))  # another adapter in flight alongside: Tunery batches them
    assert first_text(b) == "tunery:b"
    base = engine.generate(req(None))
    assert first_text(base) == "tunery:None"
    for stream in (a1, a2, b, base):
        list(stream)
    # Nothing else in flight, but models mixed within the window: no llama.cpp server is started for "b" ...
    assert [c.text for c in engine.generate(req("b"))] == ["tunery:b", ""]
    # ... while "a", whose server is up, goes back to it as soon as it is alone in flight.
    assert [c.text for c in engine.generate(req("a"))] == ["llama.cpp:a", ""]
    clock.now += 11  # a window with one model alone
    assert first_text(engine.generate(req("b"))) == "llama.cpp:b"
    assert engine.routed == {"llama.cpp": 4, "tunery": 3}
    assert len(built) == 1


def test_a_closed_stream_stops_counting_as_in_flight() -> None:
    clock = Clock()
    engine, _ = routed(FakeLlama(), clock=clock)
    a = engine.generate(req("a"))
    first_text(a)
    a.close()  # the client left mid-answer
    clock.now += 11
    assert first_text(engine.generate(req("b"))) == "llama.cpp:b"


def test_always_sends_every_request_llama_cpp_can_take() -> None:
    engine, built = routed(FakeLlama(), "always")
    a, b = engine.generate(req("a")), engine.generate(req("b"))
    assert (first_text(a), first_text(b)) == ("llama.cpp:a", "llama.cpp:b")
    assert built == []  # Tunery's engine (and torch) never loaded


@pytest.mark.parametrize(
    "llama", [FakeLlama(fits=False), FakeLlama(busy=True), FakeLlama(broken=True)], ids=["too-long", "busy", "broken"]
)
def test_what_llama_cpp_cannot_take_tunery_answers(llama: FakeLlama) -> None:
    engine, built = routed(llama, "always")
    assert [c.text for c in engine.generate(req("a"))] == ["tunery:a", ""]
    assert llama.served == []
    assert built[0].served == ["a"]


def test_status_shows_both_backends_and_close_closes_both() -> None:
    engine, built = routed(FakeLlama())
    assert engine.status()["state"] == "not started"
    list(engine.generate(req("a")))
    other = engine.generate(req("a"))
    first_text(other)
    list(engine.generate(req("b")))
    status = engine.status()
    assert status["llama_cpp"]["routed"] == {"llama.cpp": 2, "tunery": 1}
    assert status["llama_cpp"]["window_s"] == 10.0
    assert status["llama_cpp"]["policy"] == "auto"
    engine.close()
    assert built[0].closed


def test_the_server_builds_the_router_only_when_asked_and_a_llama_server_is_found(tmp_path: Path) -> None:
    from tunery.bootstrap import build_engine

    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)

    def settings(**inference: Any) -> Settings:
        return Settings(data_dir=tmp_path / "data", inference={"isolation": "thread", **inference})

    def base_weights(name: str) -> Path:
        raise AssertionError("nothing is loaded before the first request")

    for plain in (settings(), settings(llama_cpp="auto", llama_cpp_server=str(tmp_path / "nowhere"))):
        engine = build_engine(plain, base_weights)  # off by default; on but no llama-server found
        assert not isinstance(engine, RoutedEngine)
        engine.close()
    engine = build_engine(settings(llama_cpp="auto", llama_cpp_server=str(binary)), base_weights)
    assert isinstance(engine, RoutedEngine)
    assert engine.status()["llama_cpp"]["binary"] == str(binary)
    engine.close()
