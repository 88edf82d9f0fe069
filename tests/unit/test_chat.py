"""Conversations carried in an execution's prompt (core.chat)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hybrid_router.core import chat
from hybrid_router.core.chat import CHAT_MARKER, ChatMessage

messages = st.lists(
    st.builds(ChatMessage, st.sampled_from(chat.ROLES), st.text()), min_size=1, max_size=6
).map(tuple)


@given(messages)
def test_a_conversation_comes_back_as_it_was_sent(conversation: tuple[ChatMessage, ...]) -> None:
    assert chat.decode(chat.encode(conversation)) == conversation


@given(st.text())
def test_an_ordinary_prompt_is_one_user_message_and_its_own_text(prompt: str) -> None:
    assert chat.decode(prompt) == (ChatMessage("user", prompt),)
    assert chat.transcript(prompt) == prompt


def test_one_user_message_is_stored_as_its_text() -> None:
    assert chat.encode((ChatMessage("user", "Is the sky blue?"),)) == "Is the sky blue?"


def test_a_prompt_that_only_looks_like_a_conversation_stays_a_prompt() -> None:
    for prompt in (CHAT_MARKER, CHAT_MARKER + "[1, 2]", CHAT_MARKER + '[{"role": "x"}]'):
        assert chat.decode(prompt) == (ChatMessage("user", prompt),)


def test_a_conversation_reads_as_a_transcript_ending_with_the_answer_cue() -> None:
    prompt = chat.encode((ChatMessage("system", "Be brief."), ChatMessage("user", "Why?")))
    assert chat.transcript(prompt) == "System: Be brief.\n\nUser: Why?\n\nAssistant:"
