#!/usr/bin/env python3
"""Validates MQTT messages captured from a real run against docs/asyncapi.yaml and docs/schemas/.

Usage: validate_messages.py DOCS_DIR MESSAGES.jsonl [--require KIND,KIND...]

Each line of MESSAGES.jsonl is {"topic": str, "json": value or null, "jpeg": bool}. Every topic must
match a channel address of the AsyncAPI document; a JSON payload must validate against the schema
its channel's message references, a JPEG payload must be declared image/jpeg. --require names the
channels (status, events, ...) that must have been seen at least once. Exits 1 on any problem.
"""
import base64
import json
import re
import sys
from pathlib import Path

import jsonschema
import yaml


def resolve(document, ref):
    node = document
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def main():
    docs = Path(sys.argv[1])
    messages_file = Path(sys.argv[2])
    required = []
    if "--require" in sys.argv:
        required = sys.argv[sys.argv.index("--require") + 1].split(",")
    api = yaml.safe_load((docs / "asyncapi.yaml").read_text())
    problems = []
    if not str(api.get("asyncapi", "")).startswith("3."):
        problems.append(f"asyncapi.yaml declares version {api.get('asyncapi')!r}; expected 3.x")

    channels = []
    for name, channel in api["channels"].items():
        pattern = "^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(channel["address"])) + "$"
        message = next(iter(channel["messages"].values()))
        if "$ref" in message:
            message = resolve(api, message["$ref"])
        schema_path = docs / message["payload"]["$ref"]
        if not schema_path.is_file():
            problems.append(f"channel {name}: schema {schema_path} does not exist")
            continue
        schema = json.loads(schema_path.read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
        content_type = message.get("contentType", api.get("defaultContentType"))
        # A signed command's envelope carries the command itself, base64, in `signed`.
        inner = None
        if "x-signed-payload" in message:
            inner_path = docs / message["x-signed-payload"]["$ref"]
            inner_schema = json.loads(inner_path.read_text())
            jsonschema.Draft7Validator.check_schema(inner_schema)
            inner = (jsonschema.Draft7Validator(inner_schema, format_checker=jsonschema.FormatChecker()), inner_path.name)
        channels.append((name, re.compile(pattern), validator, content_type, schema_path.name, inner))
    for operation, spec in api.get("operations", {}).items():
        if resolve(api, spec["channel"]["$ref"]) is None:
            problems.append(f"operation {operation} points at no channel")

    seen = {}
    count = 0
    for line_number, line in enumerate(messages_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        message = json.loads(line)
        topic = message["topic"]
        matches = [c for c in channels if c[1].match(topic)]
        if not matches:
            problems.append(f"line {line_number}: topic {topic} matches no channel of asyncapi.yaml")
            continue
        name, _, validator, content_type, schema_name, inner = matches[0]
        count += 1
        seen[name] = seen.get(name, 0) + 1
        if content_type == "image/jpeg":
            if not message.get("jpeg"):
                problems.append(f"line {line_number}: {topic} should carry a JPEG")
            continue
        if message.get("json") is None:
            problems.append(f"line {line_number}: {topic} is not JSON")
            continue
        for error in validator.iter_errors(message["json"]):
            path = "/".join(str(p) for p in error.absolute_path) or "(root)"
            problems.append(f"line {line_number}: {topic} fails {schema_name} at {path}: {error.message}")
        if inner is not None and isinstance(message["json"], dict) and isinstance(message["json"].get("signed"), str):
            inner_validator, inner_name = inner
            try:
                command = json.loads(base64.b64decode(message["json"]["signed"], validate=True))
            except ValueError as e:
                problems.append(f"line {line_number}: {topic}: `signed` is not base64 of JSON: {e}")
                continue
            for error in inner_validator.iter_errors(command):
                path = "/".join(str(p) for p in error.absolute_path) or "(root)"
                problems.append(f"line {line_number}: {topic} signed command fails {inner_name} at {path}: {error.message}")

    for name in required:
        if not seen.get(name):
            problems.append(f"no message seen on channel {name}")
    print(f"{count} messages on {len(seen)} channels checked against {len(channels)} channel schemas: "
          + ", ".join(f"{k} {v}" for k, v in sorted(seen.items())))
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
