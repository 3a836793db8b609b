"""Drives a running `beamclaw up` with the official OpenAI Python SDK (pinned in requirements.txt).

Usage: python beamclaw_up_check.py BASE_URL TOKEN USER

Lists the models, streams one chat completion twice over (the raw `stream=True` iterator, then
the SDK's `chat.completions.stream` helper that rebuilds the final completion), then asks for one
without streaming, each in the session of OpenAI `user` USER. Prints one JSON object with what the SDK saw; tests/tests/
conformance.rs (package beamclaw-e2e) compares it with the node's scripted model. Retries are off
so that a wire error surfaces instead of being retried.
"""

import json
import sys

import openai


def main():
    base, token, user = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    client = openai.OpenAI(api_key=token, base_url=base + "/v1", max_retries=0, timeout=60)
    out = {"models": sorted(m.id for m in client.models.list())}

    deltas, finish, usage, ids, chunks = [], None, None, set(), 0
    stream = client.chat.completions.create(
        model="beamclaw",
        messages=[{"role": "user", "content": "first question, streamed"}],
        stream=True,
        stream_options={"include_usage": True},
        user=user,
    )
    for chunk in stream:
        chunks += 1
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = {"prompt": chunk.usage.prompt_tokens, "completion": chunk.usage.completion_tokens}
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    out["raw_stream"] = {
        "text": "".join(deltas),
        "content_chunks": len(deltas),
        "chunks": chunks,
        "ids": len(ids),
        "finish_reason": finish,
        "usage": usage,
    }

    helper_deltas = []
    with client.chat.completions.stream(
        model="beamclaw",
        messages=[{"role": "user", "content": "second question, through the stream helper"}],
        user=user,
    ) as stream:
        for event in stream:
            if event.type == "content.delta":
                helper_deltas.append(event.delta)
        completion = stream.get_final_completion()
    out["helper_stream"] = {
        "streamed_text": "".join(helper_deltas),
        "text": completion.choices[0].message.content,
        "finish_reason": completion.choices[0].finish_reason,
        "model": completion.model,
    }

    plain = client.chat.completions.create(
        model="beamclaw/main",
        messages=[{"role": "user", "content": "third question, not streamed"}],
        user=user,
    )
    out["non_stream"] = {
        "object": plain.object,
        "text": plain.choices[0].message.content,
        "role": plain.choices[0].message.role,
        "finish_reason": plain.choices[0].finish_reason,
        "usage": None
        if plain.usage is None
        else {"prompt": plain.usage.prompt_tokens, "completion": plain.usage.completion_tokens},
    }
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
