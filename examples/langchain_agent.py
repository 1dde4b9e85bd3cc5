"""A LangChain agent with MemOS long-term memory: it learns something in one thread and uses it in another.

What it shows:

* ``MemOSMiddleware`` puts the memories relevant to the user's message into the system prompt before each
  model call, and hands each finished turn to the MemReader (so what the user says is remembered);
* ``create_memory_tools`` lets the model search, save, update and forget memories itself (tool calls);
* the user is taken from the run's context (``context=Ctx(user_id=...)``): Bob never sees Ann's memories.

Run offline (a scripted model stands in for an LLM; about two seconds):

    python examples/langchain_agent.py

or with a real model (anything ``init_chat_model`` accepts, with its API key in the environment):

    python examples/langchain_agent.py --model openai:gpt-4o-mini
    python examples/langchain_agent.py --model anthropic:claude-sonnet-4-5 --minilm

``--minilm`` uses MemOS's real offline embedder (all-MiniLM-L6-v2) instead of the tiny hashed stand-in;
``--dir FOLDER`` keeps the memory in FOLDER (run twice and the agent remembers across runs).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from memos_core import MemOS
from memos_langchain import MemOSMiddleware, create_memory_tools
from memos_langchain.testing import HashingEmbeddings, ScriptedChatModel, tool_call

SYSTEM = ("You are a friendly assistant with long-term memory. Save durable facts about the user with "
          "save_memory; look things up with search_memory when the prompt does not already hold them.")


@dataclass
class Ctx:
    user_id: str


def scripted_model() -> ScriptedChatModel:
    """Plays the part of an LLM, deciding from what it is shown (system prompt and tool results)."""

    def snack(msgs: list[BaseMessage]) -> str:
        prompt = "\n".join(m.text for m in msgs if m.type == "system")
        if "peanut" in prompt.lower():
            return "How about apple slices with sunflower-seed butter? (No peanuts, since you're allergic.)"
        return "How about a peanut butter sandwich?"

    def colour(msgs: list[BaseMessage]) -> str:
        found = msgs[-1].text
        return "Your favourite colour is teal." if "teal" in found else "I don't know your favourite colour yet."

    return ScriptedChatModel(script=[
        # thread 1 (Ann): the model saves what she tells it
        tool_call("save_memory", {"content": "Ann is allergic to peanuts", "kind": "fact"}),
        tool_call("save_memory", {"content": "Ann's favourite colour is teal", "kind": "preference"}),
        "Thanks Ann, I'll remember that.",
        # thread 2 (Ann): the middleware already put the allergy into the prompt
        snack,
        # thread 3 (Ann): the model searches memory with a tool
        tool_call("search_memory", {"query": "favourite colour"}),
        colour,
        # thread 4 (Bob): nothing about Bob is remembered
        snack,
    ])


CONVERSATION = [
    ("ann", "thread-1", "Hi, I'm Ann. I'm allergic to peanuts, and my favourite colour is teal."),
    ("ann", "thread-2", "Can you suggest a snack for me?"),
    ("ann", "thread-3", "What's my favourite colour?"),
    ("bob", "thread-4", "Can you suggest a snack for me?"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="an init_chat_model name, e.g. openai:gpt-4o-mini (default: scripted)")
    ap.add_argument("--minilm", action="store_true", help="use the real offline embedder (all-MiniLM-L6-v2)")
    ap.add_argument("--dir", help="memory folder (default: a temporary one, removed at the end)")
    args = ap.parse_args(argv)

    folder = args.dir or tempfile.mkdtemp(prefix="memos-agent-")
    mem = MemOS(folder, embedder=None if args.minilm else HashingEmbeddings(256))
    if args.model:
        from langchain.chat_models import init_chat_model

        model: Any = init_chat_model(args.model)
    else:
        model = scripted_model()

    agent = create_agent(
        model,
        tools=create_memory_tools(mem),  # search_memory, save_memory, update_memory, forget_memory
        middleware=[MemOSMiddleware(mem, k=5, token_budget=400)],
        system_prompt=SYSTEM,
        context_schema=Ctx,
        checkpointer=InMemorySaver(),  # short-term memory per thread; MemOS is the long-term memory
    )
    answers = []
    try:
        for user, thread, text in CONVERSATION:
            out = agent.invoke({"messages": [HumanMessage(text)]}, config={"configurable": {"thread_id": thread}},
                               context=Ctx(user_id=user))
            answer = out["messages"][-1].text
            answers.append(answer)
            print(f"[{thread}] {user}: {text}\n[{thread}] agent: {answer}\n")
        print("What MemOS holds for Ann:")
        print(mem.get_context("allergy snack colour", user_id="ann", k=8) or "(nothing)")
        if not args.model:  # the scripted run checks itself, so CI notices if memory stops working
            assert "No peanuts" in answers[1], answers[1]
            assert "teal" in answers[2], answers[2]
            assert "peanut butter" in answers[3], answers[3]
            print("OK: the agent remembered across threads, and only for the right user.")
    finally:
        mem.close()
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
