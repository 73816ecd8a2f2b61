"""docs/config.md's table of config keys lists exactly the keys add_hkd_config adds, with their defaults."""
import ast
import re

from detectron2.config import CfgNode, get_cfg

from hkd_d2 import config as config_module
from hkd_d2.modeling.distill import DISTILL_TERM_REGISTRY

from ..conftest import REPO

CONFIG_DOC = REPO / "docs" / "config.md"
SECTION = "## Keys and defaults"
ROW = re.compile(r"^\| `(?P<key>[A-Z0-9_.]+)` \| `(?P<default>.*)` \| .+ \|$")


def _flatten(node: CfgNode, prefix: str = ""):
    for k, v in node.items():
        if isinstance(v, CfgNode):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _documented_table():
    section = CONFIG_DOC.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [ROW.match(line) for line in section.splitlines() if line.startswith("| `")]
    assert all(rows), "every table row is | `KEY` | `DEFAULT` | what it does |"
    return {m["key"]: ast.literal_eval(m["default"]) for m in rows}


def test_documented_key_table_equals_config_keys_and_defaults(monkeypatch):
    # Only the package's own terms (tests may register toy terms with keys of their own).
    own = {k: v for k, v in DISTILL_TERM_REGISTRY if v.__module__.startswith("hkd_d2.")}
    monkeypatch.setattr(DISTILL_TERM_REGISTRY, "_obj_map", own)
    base = dict(_flatten(get_cfg()))
    added = {k: v for k, v in _flatten(config_module.add_hkd_config(get_cfg())) if k not in base}
    table = _documented_table()
    assert sorted(table) == sorted(added)
    for key, default in added.items():
        expected = list(default) if isinstance(default, tuple) else default
        assert table[key] == expected, key
