"""Broken search spaces, made by mutating the shipped ``spaces/*.yaml``.

Each mutation changes one thing in a parsed space (deletes a key, gives a value the
wrong type, an out-of-range or huge number, an unknown name, a bad ``when:`` or
constraint, a non-mapping section) or in its text (truncation, binary garbage, YAML
tags that would construct Python objects). :func:`search.space.load_space` must end
every one in either a valid space or a :class:`search.space.SpaceError` naming the
file, never another exception. Used by ``test_space_fuzz.py`` and
``benchmarks/robustness.py``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SPACES = sorted((Path(__file__).resolve().parents[2] / "spaces").glob("*.yaml"))

WEIRD_VALUES: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    1,
    2**64,
    10**400,
    -(10**400),
    1e308,
    math.inf,
    -math.inf,
    math.nan,
    0.5,
    "",
    "x",
    "nope",
    "1e-4",
    "NaN",
    "é😀",
    "a" * 5000,
    [],
    [1],
    [1, 2, 3],
    ["a", 1, True],
    [None, None],
    {},
    {"type": "range"},
    {"type": "choice", "values": []},
    {"when": {"nope": 1}},
    {"nested": {"deeper": [1, {"x": None}]}},
    b"\x00\xff",
)

UNSAFE_YAML = (
    "!!python/object/apply:os.system ['echo pwned > {marker}']\n",
    "name: !!python/object/apply:os.system ['echo pwned > {marker}']\n",
    "parameters:\n  lr: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
    "budget: !!python/name:os.system\n",
    "seed: !!python/object:collections.OrderedDict {{}}\n",
    "data: !!binary aGVsbG8=\n",
    "tracking: !<tag:yaml.org,2002:python/tuple> [1, 2]\n",
)


def _paths(d: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path into nested dicts and lists."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _get_parent(d: Any, path: tuple) -> tuple[Any, Any]:
    node = d
    for key in path[:-1]:
        node = node[key]
    return node, path[-1]


def _dump(d: Any) -> bytes:
    """YAML text; values plain YAML cannot hold (bytes, nan) go through their repr."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {clean(k) if isinstance(k, bytes) else k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        if isinstance(x, bytes):
            return x.decode("latin-1")
        return x

    return yaml.safe_dump(clean(d), sort_keys=False, allow_unicode=True).encode("utf-8")


def mutations(n: int = 300, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` broken spaces as (description, file bytes), the same for a seed."""
    rng = np.random.default_rng(seed)
    bases = [
        (p.stem, p.read_bytes(), yaml.safe_load(p.read_text(encoding="utf-8"))) for p in SPACES
    ]
    out: list[tuple[str, bytes]] = []
    kinds = (
        "delete",
        "retype",
        "rename",
        "bounds",
        "when",
        "constraint",
        "section",
        "truncate",
        "garbage",
        "document",
    )
    while len(out) < n:
        stem, text, base = bases[int(rng.integers(len(bases)))]
        d = copy.deepcopy(base)
        kind = kinds[len(out) % len(kinds)]
        paths = list(_paths(d))
        path = paths[int(rng.integers(len(paths)))]
        where = ".".join(map(str, path))
        if kind == "delete":
            parent, key = _get_parent(d, path)
            del parent[key]
            out.append((f"{stem}: delete {where}", _dump(d)))
        elif kind == "retype":
            parent, key = _get_parent(d, path)
            value = WEIRD_VALUES[int(rng.integers(len(WEIRD_VALUES)))]
            parent[key] = copy.deepcopy(value)
            out.append((f"{stem}: {where} = {str(value)[:30]!r}", _dump(d)))
        elif kind == "rename":
            parent, key = _get_parent(d, path)
            if isinstance(parent, dict):
                parent[f"{key}x" if isinstance(key, str) else 12345] = parent.pop(key)
            else:
                parent.append("unknown_name")
            out.append((f"{stem}: rename {where}", _dump(d)))
        elif kind == "bounds":
            params = d.get("parameters") or {}
            ranged = [k for k, v in params.items() if isinstance(v, dict) and "bounds" in v]
            if not ranged:
                continue
            name = ranged[int(rng.integers(len(ranged)))]
            choices = (
                [1, 0],
                [0, 0],
                [-1, 1],
                [10**400, 1],
                [math.nan, 1],
                [1],
                [1, 2, 3],
                "1,2",
                [0, math.inf],
            )
            bounds = choices[int(rng.integers(len(choices)))]
            params[name]["bounds"] = bounds
            out.append((f"{stem}: parameters.{name}.bounds = {bounds!r}", _dump(d)))
        elif kind == "when":
            params = d.get("parameters") or {}
            names = list(params)
            name = names[int(rng.integers(len(names)))]
            conditions = (
                {"nope": "x"},
                {"loss": "not_a_loss"},
                {name: "x"},
                {"loss": None},
                "loss == focal",
                [{"loss": "focal"}],
                {"loss": "focal", "sampler": "ratio"},
                {"lr": 0.1},
                {},
                {None: None},
            )
            cond = conditions[int(rng.integers(len(conditions)))]
            spec = params[name]
            params[name] = (
                {**spec, "when": cond} if isinstance(spec, dict) else {"value": spec, "when": cond}
            )
            out.append((f"{stem}: parameters.{name}.when = {cond!r}", _dump(d)))
        elif kind == "constraint":
            constraints = (
                ["lr + weight_decay <= 1"],
                ["nope <= 1"],
                ["lr <= "],
                ["<= >= <="],
                [1],
                "lr <= 1",
                [None],
                ["lr * lr <= 1"],
                ["import os"],
                ["x" * 10000 + " <= 1"],
            )
            which = int(rng.integers(len(constraints)))
            if rng.random() < 0.5:
                d["parameter_constraints"] = constraints[which]
                where = "parameter_constraints"
            else:
                d.setdefault("objective", {})["constraints"] = constraints[which]
                where = "objective.constraints"
            out.append((f"{stem}: {where} = {str(constraints[which])[:30]!r}", _dump(d)))
        elif kind == "section":
            section = ("data", "objective", "parameters", "budget", "tracking", "name", "seed")[
                int(rng.integers(7))
            ]
            value = ([1, 2], "text", 3, None, True, {"x": 1}, 10**400, -5)[int(rng.integers(8))]
            d[section] = value
            out.append((f"{stem}: {section} = {str(value)[:30]!r}", _dump(d)))
        elif kind == "truncate":
            cut = int(rng.integers(1, len(text)))
            out.append((f"{stem}: truncated at byte {cut}", text[:cut]))
        elif kind == "garbage":
            data = bytearray(text)
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
            out.append((f"{stem}: {len(data)} bytes with flipped bytes", bytes(data)))
        else:  # a document that is not a mapping
            docs = (
                b"",
                b"- a\n- b\n",
                b"42\n",
                b"'just text'\n",
                b"~\n",
                b"---\nname: a\n---\nname: b\n",
                b"\xff\xfe\x00\x00",
                np.random.default_rng(len(out)).integers(0, 256, 512, dtype=np.uint8).tobytes(),
                b"a: &x [*x]\n",
                b"[" * 5000,
                b"key: " + b"9" * 5000 + b"\n",
                b"x: &a [1]\ny: &b [*a, *a]\nz: &c [*b, *b]\nw: [*c, *c, *c]\n",
            )
            pick = int(rng.integers(len(docs)))
            out.append((f"document #{pick}", docs[pick]))
    return out[:n]
