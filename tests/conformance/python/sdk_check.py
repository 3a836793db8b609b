"""Reads beamclaw mock-llm's streams with the official Anthropic and OpenAI Python SDKs.

Usage: python sdk_check.py BASE_URL

The mock must have the script in mock_script.json (next to this file) loaded, in that order:
an Anthropic streamed reply, an OpenAI streamed reply, then the same two non-streamed. Prints
one JSON object with what each SDK reconstructed; node/tests/mock_llm_sdk.rs compares it with
the script. Retries are off so a wire error surfaces instead of being retried.
"""

import json
import sys

import anthropic
import openai

TOOL = {
    "name": "read",
    "description": "Reads a file",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
}
OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": TOOL["name"],
        "description": TOOL["description"],
        "parameters": TOOL["input_schema"],
    },
}
MESSAGES = [{"role": "user", "content": "read a.txt"}]


def anthropic_blocks(message):
    out = {"text": "", "thinking": "", "signature": "", "tool_calls": []}
    for block in message.content:
        if block.type == "text":
            out["text"] += block.text
        elif block.type == "thinking":
            out["thinking"] += block.thinking
            out["signature"] += block.signature
        elif block.type == "tool_use":
            out["tool_calls"].append({"id": block.id, "name": block.name, "arguments": block.input})
    out["stop_reason"] = message.stop_reason
    out["usage"] = {"input": message.usage.input_tokens, "output": message.usage.output_tokens}
    return out


def openai_message(choice, usage):
    message = choice.message
    calls = [
        {"id": c.id, "name": c.function.name, "arguments": json.loads(c.function.arguments)}
        for c in (message.tool_calls or [])
    ]
    return {
        "text": message.content or "",
        "tool_calls": calls,
        "stop_reason": choice.finish_reason,
        "usage": {"input": usage.prompt_tokens, "output": usage.completion_tokens} if usage else None,
    }


def main():
    base = sys.argv[1].rstrip("/")
    results = {}

    client = anthropic.Anthropic(api_key="test-key", base_url=base, max_retries=0)
    with client.messages.stream(
        model="claude-mock",
        max_tokens=2048,
        messages=MESSAGES,
        tools=[TOOL],
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    results["anthropic_stream"] = anthropic_blocks(final)
    results["anthropic_stream"]["streamed_text"] = streamed_text

    oclient = openai.OpenAI(api_key="test-key", base_url=base + "/v1", max_retries=0)
    deltas = []
    with oclient.chat.completions.stream(
        model="gpt-mock",
        messages=MESSAGES,
        tools=[OPENAI_TOOL],
        stream_options={"include_usage": True},
    ) as stream:
        for event in stream:
            if event.type == "content.delta":
                deltas.append(event.delta)
        completion = stream.get_final_completion()
    results["openai_stream"] = openai_message(completion.choices[0], completion.usage)
    results["openai_stream"]["streamed_text"] = "".join(deltas)

    message = client.messages.create(model="claude-mock", max_tokens=1024, messages=MESSAGES, tools=[TOOL])
    results["anthropic_json"] = anthropic_blocks(message)

    completion = oclient.chat.completions.create(model="gpt-mock", messages=MESSAGES, tools=[OPENAI_TOOL])
    results["openai_json"] = openai_message(completion.choices[0], completion.usage)

    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
