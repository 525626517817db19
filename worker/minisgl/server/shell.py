"""`--shell-mode`: a chat REPL over the same processes as the HTTP server.

Streams tokens as they arrive, keeps the multi-turn history (chat template from the tokenizer),
`/reset` clears it, `/exit` or Ctrl+D quits. Ctrl+C at the prompt clears the line; while a
reply streams it reaches the launcher, which stops the shell (the request is aborted).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import aclosing
from typing import TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import WordCompleter

from minisgl.errors import MiniSGLError
from minisgl.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

COMMANDS = {"/reset": "clear the conversation", "/exit": "quit (or Ctrl+D)",
            "/help": "show this help"}
DEFAULT_MAX_TOKENS = 1024
MAX_TOKENS_ENV = "MINISGL_SHELL_MAX_TOKENS"
PROMPT = ">>> "
# C0/C1 control characters other than newline and tab: model output must not drive the terminal
# (escape sequences could move the cursor, retitle the window or hide text).
_CONTROL = {c: "\ufffd" for c in [*range(0x00, 0x09), *range(0x0b, 0x20), 0x7f,
                                   *range(0x80, 0xa0)]}


def printable(text: str) -> str:
    return text.translate(_CONTROL)


class ChatShell:
    """The REPL's state and one turn of it; `run()` is the loop."""

    def __init__(self, frontend, args, session: PromptSession | None = None,
                 out: TextIO | None = None) -> None:
        self.frontend = frontend
        self.max_tokens = (getattr(args, "shell_max_tokens", None)
                           or int(os.environ.get(MAX_TOKENS_ENV, DEFAULT_MAX_TOKENS)))
        self.temperature = getattr(args, "shell_temperature", None) or 0.0
        self.session = session or PromptSession(completer=WordCompleter(list(COMMANDS)))
        self.out = out or sys.stdout
        self.history: list[dict[str, str]] = []

    def _print(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def _prompt_ids(self) -> list[int]:
        tok = self.frontend.tokenizer
        text = tok.apply_chat_template(self.history, tokenize=False, add_generation_prompt=True)
        return tok.encode(text, add_special_tokens=False)

    async def turn(self, user_text: str) -> str | None:
        """Send one user message with the history; stream and return the reply (None: failed)."""
        self.history.append({"role": "user", "content": user_text})
        try:
            ids = self._prompt_ids()
            room = self.frontend.max_model_len - len(ids)
            if room < 1:
                raise MiniSGLError(f"the conversation ({len(ids)} tokens) fills the context; "
                                   f"/reset to start over")
            params = SamplingParams(max_tokens=min(self.max_tokens, room),
                                    temperature=self.temperature)
            reply: list[str] = []
            async with aclosing(self.frontend.generate(ids, params)) as chunks:
                async for chunk in chunks:
                    reply.append(chunk.text)
                    self._print(printable(chunk.text), end="")
            self._print()
        except MiniSGLError as e:
            self.history.pop()
            self._print(f"error: {e}")
            return None
        text = "".join(reply)
        self.history.append({"role": "assistant", "content": text})
        return text

    def _command(self, line: str) -> bool:
        """Handle a /command; return False to quit."""
        if line == "/exit":
            return False
        if line == "/reset":
            self.history.clear()
            self._print("(history cleared)")
        else:
            if line != "/help":
                self._print(f"unknown command {line}")
            for name, doc in COMMANDS.items():
                self._print(f"  {name:8s} {doc}")
        return True

    async def run(self) -> None:
        self._print(f"minisgl shell — {self.frontend.model_name}. /help for commands, "
                    f"Ctrl+D to quit.")
        while True:
            try:
                line = (await self.session.prompt_async(PROMPT)).strip()
            except EOFError:
                break
            except KeyboardInterrupt:
                continue
            if not line:
                continue
            if line.startswith("/"):
                if not self._command(line):
                    break
                continue
            await self.turn(line)
        self._print("bye")


async def run_shell(frontend, args, session: PromptSession | None = None,
                    out: TextIO | None = None) -> None:
    """The REPL until /exit or Ctrl+D. The launcher owns the frontend's lifetime (start is
    idempotent, so calling it here is harmless) and cancels this coroutine on signals."""
    await frontend.start()
    await ChatShell(frontend, args, session, out).run()
