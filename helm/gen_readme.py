"""Generate the chart's derived files (helm-docs is a Go tool; this is its small Python stand-in).

    .venv/bin/python helm/gen_readme.py           # rewrite them
    .venv/bin/python helm/gen_readme.py --check   # exit 1 when a committed file is stale (tests run this)

- helm/mangaassist/README.md: README.md.gotmpl with `{{ values_table }}` replaced by the table of
  every value documented in values.yaml with a `# -- description` comment (helm-docs syntax: the
  comment may go on over following `#` lines; `# @default -- text` replaces the shown default).
- helm/mangaassist/values.schema.json `$defs`: the schema of `serve.args` is `serve.config.AppArgs`
  itself (pydantic's JSON schema), so the chart rejects at install time what build_app would reject at
  deploy time. The OpenSearch password is left out: with additionalProperties false, a password
  inlined in values is refused (it comes from secrets.opensearch.existingSecret).
  Hand-written `$defs` (lower-case names) are kept.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "mangaassist"
ROOT = CHART.parent.parent
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[^\s#:-][^:]*?):(\s|$)")
DOC = re.compile(r"^\s*# -- (?P<text>.*)$")
DEFAULT = re.compile(r"^\s*# @default -- (?P<text>.*)$")
MORE = re.compile(r"^\s*# (?P<text>.*)$")


def documented_values(text: str) -> list[tuple[str, str, str]]:
    """(dotted key, description, default override or '') for each `# --` comment, in file order."""
    rows, stack, doc, default = [], [], None, ""
    for line in text.splitlines():
        if m := DOC.match(line):
            doc, default = [m["text"]], ""
        elif doc is not None and (m := DEFAULT.match(line)):
            default = m["text"]
        elif doc is not None and (m := MORE.match(line)):
            doc.append(m["text"])
        elif m := KEY.match(line):
            indent = len(m["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m["key"].strip().strip('"')))
            if doc is not None:
                rows.append((".".join(k for _, k in stack), " ".join(doc), default))
            doc = None
        elif line.strip() and not line.lstrip().startswith("- "):
            doc = None  # a comment block that is not a `# --` doc
    return rows


def type_name(value) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object",
            type(None): "string"}[type(value)]


def values_table(values_yaml: str) -> str:
    values = yaml.safe_load(values_yaml)
    lines = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for key, doc, default in documented_values(values_yaml):
        value = values
        for part in key.split("."):
            value = value[part]
        shown = default or f"`{json.dumps(value, separators=(',', ':'))}`"
        lines.append(f"| {key} | {type_name(value)} | {shown.replace('|', '&#124;')} | {doc.replace('|', '&#124;')} |")
    return "\n".join(lines)


def readme() -> str:
    template = (CHART / "README.md.gotmpl").read_text()
    return template.replace("{{ values_table }}", values_table((CHART / "values.yaml").read_text()))


def app_args_defs() -> dict:
    sys.path.insert(0, str(ROOT))
    from serve.config import AppArgs

    schema = AppArgs.model_json_schema()
    defs = schema.pop("$defs")
    del defs["OpenSearchSettings"]["properties"]["password"]
    return {**defs, "AppArgs": schema}


def values_schema() -> str:
    schema = json.loads((CHART / "values.schema.json").read_text())
    kept = {k: v for k, v in schema["$defs"].items() if k[:1].islower()}
    schema["$defs"] = {**kept, **app_args_defs()}
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str]) -> int:
    generated = {CHART / "values.schema.json": values_schema(), CHART / "README.md": readme()}
    stale = [path for path, text in generated.items() if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run .venv/bin/python helm/gen_readme.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(generated[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
