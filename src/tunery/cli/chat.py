"""``tunery chat MODEL``: an interactive terminal chat that streams, or one answer with ``-m``."""

from __future__ import annotations

from typing import Annotated, Any

import openai
import typer

from tunery.cli.client import ApiKeyOption, BaseUrlOption, api_errors, make_client
from tunery.cli.output import console

EXIT_WORDS = {"/exit", "/quit", "exit", "quit"}


def chat(
    model: Annotated[str, typer.Argument(help="Deployment name, fine-tuned model or base model")],
    message: Annotated[str | None, typer.Option("--message", "-m", help="Ask once and print the answer")] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System message (use the training one)")] = None,
    temperature: Annotated[float, typer.Option(help="0 for greedy")] = 0.7,
    max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens")] = 256,
    base_url: BaseUrlOption = "http://127.0.0.1:8000/v1",
    api_key: ApiKeyOption = None,
) -> None:
    """Chat with a model; answers stream as they are generated. Type /exit to leave."""
    client = make_client(base_url, api_key)
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    if message is not None:
        history.append({"role": "user", "content": message})
        _answer(client, model, history, temperature, max_tokens)
        return
    console.print(f"Chatting with [bold]{model}[/bold]. /exit to leave.")
    while True:
        try:
            line = console.input("[bold cyan]you>[/bold cyan] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not line:
            continue
        if line in EXIT_WORDS:
            return
        history.append({"role": "user", "content": line})
        history.append({"role": "assistant", "content": _answer(client, model, history, temperature, max_tokens)})


def _answer(
    client: openai.OpenAI, model: str, history: list[dict[str, Any]], temperature: float, max_tokens: int
) -> str:
    text = ""
    with api_errors():
        stream = client.chat.completions.create(
            model=model,
            messages=history,
            stream=True,
            temperature=temperature,
            max_tokens=max_tokens,  # type: ignore[arg-type]
        )
        for chunk in stream:
            for choice in chunk.choices:
                piece = choice.delta.content or ""
                text += piece
                console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
    console.print()
    return text
