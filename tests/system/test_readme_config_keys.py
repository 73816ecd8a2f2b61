"""The README's table of config keys lists exactly the keys add_hkd_config adds, with their defaults."""
import ast
import re

from detectron2.config import CfgNode, get_cfg

from hkd_d2 import config as config_module

from ..conftest import REPO

ROW = re.compile(r"^\| `(?P<key>[A-Z0-9_.]+)` \| `(?P<default>.*)` \| .+ \|$")


def _flatten(node: CfgNode, prefix: str = ""):
    for k, v in node.items():
        if isinstance(v, CfgNode):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _readme_table():
    text = (REPO / "README.md").read_text()
    section = text.split("## Config keys added by hkd_d2", 1)[1].split("\n## ", 1)[0]
    rows = [ROW.match(line) for line in section.splitlines() if line.startswith("| `")]
    assert all(rows), "every table row is | `KEY` | `DEFAULT` | what it does |"
    return {m["key"]: ast.literal_eval(m["default"]) for m in rows}


def test_readme_key_table_equals_config_keys_and_defaults(monkeypatch):
    # Only the package's own key groups (tests may register toy terms with keys of their own).
    own = {k: v for k, v in config_module.DISTILL_TERM_CONFIGS.items() if getattr(v, "__self__", v).__module__.startswith("hkd_d2.")}
    monkeypatch.setattr(config_module, "DISTILL_TERM_CONFIGS", own)
    base = dict(_flatten(get_cfg()))
    added = {k: v for k, v in _flatten(config_module.add_hkd_config(get_cfg())) if k not in base}
    table = _readme_table()
    assert sorted(table) == sorted(added)
    for key, default in added.items():
        expected = list(default) if isinstance(default, tuple) else default
        assert table[key] == expected, key
