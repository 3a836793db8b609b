#!/usr/bin/env python3
"""Generate gateway/src/protocol/schema_tables.rs from OpenClaw's published protocol schema.

The tables are the official method list (name and required scope), the closed client id and
mode enums of ConnectParams, and the property names each method's Params schema allows.

Regenerate (needs npm and python3):

    python3 gateway/tools/gen_protocol_tables.py            # npm-packs the pinned version
    python3 gateway/tools/gen_protocol_tables.py SCHEMA.json  # or reads a local schema file

then `cargo fmt -p beamclaw-gateway` and commit the result. Bump PACKAGE below (and the pin
in tests/conformance/node/package.json) together.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "@openclaw/gateway-protocol@2026.9.1"
OUT = pathlib.Path(__file__).resolve().parent.parent / "src" / "protocol" / "schema_tables.rs"


def load_schema(argv):
    if len(argv) > 1:
        with open(argv[1], encoding="utf-8") as f:
            return json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", PACKAGE, "--silent", "--pack-destination", tmp],
            check=True,
            capture_output=True,
            text=True,
        )
        tgz = os.path.join(tmp, out.stdout.strip().splitlines()[-1])
        with tarfile.open(tgz) as tar:
            member = tar.extractfile("package/protocol.schema.json")
            if member is None:
                sys.exit(f"{PACKAGE} has no package/protocol.schema.json")
            return json.load(member)


def params_definition_name(method):
    """`chat.send` -> `ChatSendParams`, `system-presence` -> `SystemPresenceParams`."""
    parts = re.split(r"[.\-]", method)
    return "".join(p[:1].upper() + p[1:] for p in parts) + "Params"


def rust_str(s):
    return json.dumps(s)


def main(argv):
    schema = load_schema(argv)
    methods = schema["methods"]
    defs = schema["definitions"]
    client = defs["ConnectParams"]["properties"]["client"]["properties"]
    client_ids = client["id"]["enum"]
    client_modes = client["mode"]["enum"]

    lines = [
        "//! Tables generated from OpenClaw's `protocol.schema.json`; do not edit by hand.",
        "//!",
        f"//! Source: npm `{PACKAGE}`. Regenerate with `python3 gateway/tools/gen_protocol_tables.py`",
        "//! (see that script), then `cargo fmt`.",
        "",
        "/// The npm package the tables were generated from.",
        f"pub(crate) const SCHEMA_PACKAGE: &str = {rust_str(PACKAGE)};",
        "",
        "/// Every method of the official protocol, with the scope the schema says it needs",
        "/// (`operator.*`, `node`, or `dynamic`).",
        "pub(crate) const OFFICIAL_METHODS: &[(&str, &str)] = &[",
    ]
    for name, info in methods.items():
        lines.append(f"    ({rust_str(name)}, {rust_str(info['scope'])}),")
    lines += [
        "];",
        "",
        "/// The closed enum of `ConnectParams.client.id`.",
        "pub(crate) const CLIENT_IDS: &[&str] = &[",
    ]
    lines += [f"    {rust_str(i)}," for i in client_ids]
    lines += [
        "];",
        "",
        "/// The closed enum of `ConnectParams.client.mode`.",
        "pub(crate) const CLIENT_MODES: &[&str] = &[",
    ]
    lines += [f"    {rust_str(m)}," for m in client_modes]
    lines += [
        "];",
        "",
        "/// The top-level properties of `ConnectParams` (it is a closed object).",
        "pub(crate) const CONNECT_PARAMS_PROPERTIES: &[&str] = &[",
    ]
    lines += [f"    {rust_str(p)}," for p in defs["ConnectParams"]["properties"]]
    lines += [
        "];",
        "",
        "/// For each method whose `<Name>Params` schema is a closed object: the property names it",
        "/// allows. A request naming any other property is invalid, as in OpenClaw.",
        "pub(crate) const PARAMS_PROPERTIES: &[(&str, &[&str])] = &[",
    ]
    for name in methods:
        d = defs.get(params_definition_name(name))
        if not d or d.get("type") != "object" or d.get("additionalProperties") is not False:
            continue
        props = ", ".join(rust_str(p) for p in d.get("properties", {}))
        lines.append(f"    ({rust_str(name)}, &[{props}]),")
    lines += ["];", ""]
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {OUT} ({len(methods)} methods)")


if __name__ == "__main__":
    main(sys.argv)
