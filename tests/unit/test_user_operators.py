"""A team's own operators (streams/dag/definition.py): the `pit.operators` entry points and
PIT_OPERATOR_MODULES are loaded the first time the default registry is asked for a name it
does not know, so pit up, a runner and a client all find them; a module that cannot be
imported is one clear error naming it."""

from __future__ import annotations

import sys

import pytest

from streams.dag.definition import OPERATORS, WorkflowBuilder, check, load_operator_modules
from streams.errors import PitError

MODULE = '''
from streams.dag.definition import register_operator

@register_operator("{name}", inputs={{"text": "str"}}, output="str")
def shout(text):
    return text.upper() + "!"
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """A fresh lazy load against a directory of the test's own modules and dist-infos."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(OPERATORS, "_plugins", True)
    monkeypatch.delenv("PIT_OPERATOR_MODULES", raising=False)
    added = set(OPERATORS.names())
    yield tmp_path
    for name in set(OPERATORS.names()) - added:
        del OPERATORS._operators[name]
    for module in [m for m in sys.modules if m.startswith("team_ops")]:
        del sys.modules[module]


def test_a_module_named_in_the_environment_is_loaded_on_the_first_unknown_name(
        plugins, monkeypatch) -> None:
    (plugins / "team_ops_env.py").write_text(MODULE.format(name="shout_env"))
    monkeypatch.setenv("PIT_OPERATOR_MODULES", "team_ops_env")
    flow = WorkflowBuilder("loud").operator("a", "shout_env", constants={"text": "hi"}).build()
    assert check(flow) is flow  # validation found it: loaded on the first unknown name
    assert OPERATORS["shout_env"].fn("hi") == "HI!"


def test_an_entry_point_of_an_installed_package_brings_its_operators(plugins) -> None:
    (plugins / "team_ops_ep.py").write_text(MODULE.format(name="shout_ep"))
    info = plugins / "team_ops-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-ops\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pit.operators]\nteam = team_ops_ep\n")
    assert "shout_ep" in OPERATORS
    assert OPERATORS["shout_ep"].fn("a") == "A!"


def test_a_module_that_cannot_be_imported_is_one_error_naming_it(plugins) -> None:
    (plugins / "team_ops_bad.py").write_text("raise RuntimeError('needs a GPU')\n")
    with pytest.raises(PitError, match="operators module team_ops_bad cannot be imported:"
                                       " RuntimeError: needs a GPU"):
        load_operator_modules(["team_ops_bad"])
