"""Render docs/benchmarks.md from docs/benchmarks.md.in and the latest bench/results/*.json."""

from __future__ import annotations

import json

from bench import lib


def main() -> int:
    from django.conf import settings
    from django.template import Context, Engine

    settings.configure(USE_I18N=False)  # an English page: no translations, so no apps to load for them
    # NAME.json only: scenario.records.json and scenario-shapes.json are the scenario's own files.
    found = {p.stem: json.loads(p.read_text()) for p in sorted(lib.RESULTS.glob("*.json")) if p.stem.isidentifier()}
    for r in found.values():
        r["rendered"] = lib.render(r)
        r["machine_table"] = lib.table(["item", "value"], r.get("machine", {}).items())
        r["checks_table"] = lib.render({"checks": r.get("checks", [])})
        if r.get("shapes"):
            r["shapes_table"] = lib.table(list(r["shapes"][0]), [x.values() for x in r["shapes"]])
    text = (lib.ROOT / "docs" / "benchmarks.md.in").read_text()
    # A benchmark the template describes has a section headed "## NAME:"; the others are appended.
    context = {**found, "others": {k: v for k, v in found.items() if f"\n## {k}:" not in text}}
    page = Engine().from_string(text).render(Context(context, autoescape=False))
    (lib.ROOT / "docs" / "benchmarks.md").write_text(page)
    print("report: docs/benchmarks.md")
    return 0
