"""Chat conversations carried in an execution's prompt, and turned back into what each
provider kind takes.

An execution holds one prompt string (the store keeps nothing else). A conversation of a
single user message is stored as that message's text, exactly as the same question sent to
`POST /jobs` or `POST /inference`. Anything longer (a system message, earlier turns) is
stored as CHAT_MARKER followed by the messages as JSON, so no field is added to the store.
OpenAI-compatible providers get the messages back as they were sent; Modal endpoints, whose
protocol takes one `prompt` string (DESIGN section 5), get them as a transcript.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# Starts a prompt that holds a conversation. Only a conversation that decodes in full counts,
# so an ordinary prompt that happens to start this way stays an ordinary prompt.
CHAT_MARKER = "hybrid-router/chat:"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation."""

    role: str
    content: str


def encode(messages: tuple[ChatMessage, ...]) -> str:
    """The prompt that carries `messages` (one user message: its text as it is)."""
    if not messages:
        raise ValueError("a conversation needs at least one message")
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    payload = [{"role": m.role, "content": m.content} for m in messages]
    return CHAT_MARKER + json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def decode(prompt: str) -> tuple[ChatMessage, ...]:
    """The conversation a prompt carries; an ordinary prompt is one user message."""
    if prompt.startswith(CHAT_MARKER):
        try:
            data = json.loads(prompt.removeprefix(CHAT_MARKER))
        except ValueError:
            data = None
        messages = _messages(data)
        if messages:
            return messages
    return (ChatMessage("user", prompt),)


def transcript(prompt: str) -> str:
    """The prompt as one string, for providers that take no messages: an ordinary prompt
    as it is, a conversation as `Role: text` paragraphs ending with `Assistant:`, the usual
    cue for a completion model to answer the last turn."""
    messages = decode(prompt)
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    turns = [f"{m.role.capitalize()}: {m.content}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


def _messages(data: object) -> tuple[ChatMessage, ...]:
    """`data` as messages when it is a list of role/content objects, else ()."""
    if not isinstance(data, list):
        return ()
    messages = []
    for item in data:
        if not isinstance(item, dict) or set(item) != {"role", "content"}:
            return ()
        role, content = item["role"], item["content"]
        if role not in ROLES or not isinstance(content, str):
            return ()
        messages.append(ChatMessage(role, content))
    return tuple(messages)
