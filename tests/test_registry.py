"""The one registry pattern: decorator registration, duplicates, close-name errors, entry points that break, the off
switch, and a baseline registered at run time being run by the audit's baseline runner."""

from __future__ import annotations

import contextlib
import sys
import textwrap
import warnings
from dataclasses import dataclass

import pytest

from ppp_audit.errors import PPPAuditError, UnknownPaddingError
from ppp_audit.registry import DISABLE_PLUGINS_ENV, OWN_DISTRIBUTION, RUN_TIME, Registry

GROUP = "ppp_audit_test.things"


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(dist, entries, **modules)``: a distribution on sys.path with entry points in :data:`GROUP`."""
    monkeypatch.delenv(DISABLE_PLUGINS_ENV, raising=False)
    imported: list[str] = []

    def install(dist: str, entries: dict[str, str], **modules: str) -> None:
        for module, source in modules.items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            imported.append(module)
        info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entries.items())
        (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")

    monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    for module in imported:
        sys.modules.pop(module, None)


class Named:
    name = "named"


def test_decorator_names_entries_and_keeps_metadata():
    things = Registry("thing", metadata={"cost": 1})

    @things.register("explicit", cost=3)
    def first():
        pass

    @things.register
    def by_function_name():
        pass

    things.register()(Named)
    assert things.names() == ["explicit", "by_function_name", "named"]  # registration order
    assert things.get("explicit") is first and things.get("named") is Named
    assert dict(things.entry("explicit").metadata) == {"cost": 3}
    assert dict(things.entry("named").metadata) == {"cost": 1}  # the default
    assert things.entry("named").distribution == RUN_TIME  # defined outside ppp_audit
    assert "explicit" in things and "nope" not in things and len(things) == 3 and list(things) == things.names()
    with pytest.raises(TypeError, match="unknown thing metadata colour"):
        things.register("x", colour="red")(first)
    with pytest.raises(ValueError, match="without a name"):
        things.add(None, object())


def test_built_ins_registered_in_code_belong_to_ppp_audit():
    from ppp_audit.metrics.baselines import BASELINE_RUNNERS
    from ppp_audit.paddings import PADDINGS

    assert {PADDINGS.entry(name).distribution for name in ("zeros", "partial", "valid")} == {OWN_DISTRIBUTION}
    assert [(e.name, e.distribution, e.metadata["per_scheme"]) for e in BASELINE_RUNNERS.entries()][:3] == [
        ("posenet", OWN_DISTRIBUTION, True), ("fconv", OWN_DISTRIBUTION, True), ("uneven", OWN_DISTRIBUTION, False)]


def test_a_duplicate_replaces_in_place_and_the_same_object_twice_is_harmless():
    things = Registry("thing")
    for name in ("a", "b", "c"):
        things.add(name, name.upper())
    things.add("b", "B2")
    things.add("c", "C")
    assert things.items() == [("a", "A"), ("b", "B2"), ("c", "C")]  # "b" kept its place
    assert things.pop("b") == "B2" and things.names() == ["a", "c"]
    assert Registry("thing", sort_names=True).add("z", 1) == 1


def test_unknown_name_raises_the_registry_error_with_the_closest_name():
    things = Registry("colour", error=UnknownPaddingError, hint="pick one of {available}")
    for name in ("red", "green", "blue"):
        things.add(name, name)
    with pytest.raises(UnknownPaddingError, match=r"unknown colour 'gren' \(did you mean 'green'\?\)") as info:
        things.get("gren")
    assert info.value.hint == "pick one of red, green, blue"
    with pytest.raises(PPPAuditError) as info:
        things.get("purple")
    assert "did you mean" not in info.value.message


def test_entry_points_that_raise_at_import_are_skipped_with_a_warning(install):
    install("ppp-audit-test-things", {
        "good": "things_good:GOOD",
        "raises": "things_raises:THING",
        "exits": "things_exits:THING",
        "missing": "things_no_such_module:THING",
        "not-callable": "things_good:NUMBER",
        "taken": "things_good:GOOD",
    }, things_good="GOOD = lambda: 'good'\nNUMBER = 3\n",
       things_raises="raise RuntimeError('boom at import')\n",
       things_exits="import sys\nsys.exit(3)\n")
    things = Registry("thing", entry_point_group=GROUP, check=lambda obj: None if callable(obj) else 1 / 0)
    things.add("taken", "in code")
    with pytest.warns(RuntimeWarning) as record:
        names = things.names()
    messages = sorted(str(w.message) for w in record)
    assert names == ["taken", "good"]
    assert things.get("taken") == "in code"  # code wins over an entry point of the same name
    assert things.entry("good").distribution == "ppp-audit-test-things"
    assert len(messages) == 5 and all(DISABLE_PLUGINS_ENV in m for m in messages)
    for name, why in (("raises", "boom at import"), ("exits", "SystemExit(3)"), ("missing", "ModuleNotFoundError"),
                      ("not-callable", "ZeroDivisionError"), ("taken", "is skipped: the name is taken")):
        assert any(f"thing plugin '{name}' from distribution 'ppp-audit-test-things'" in m and why in m
                   for m in messages), (name, messages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert things.names() == names  # discovered once, warned once


def test_keyboard_interrupt_at_import_is_not_swallowed(install):
    install("ppp-audit-test-interrupt", {"stop": "things_stop:THING"}, things_stop="raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        Registry("thing", entry_point_group=GROUP).names()


def test_disable_env_loads_no_plugins_and_own_entry_points_are_ignored(install, monkeypatch):
    install("ppp-audit-test-things", {"good": "things_good2:GOOD", "raises": "things_raises2:THING"},
            things_good2="GOOD = 'good'\n", things_raises2="raise RuntimeError('boom')\n")
    install(OWN_DISTRIBUTION, {"stale": "things_stale:THING"}, things_stale="raise RuntimeError('stale')\n")
    things = Registry("thing", entry_point_group=GROUP)
    monkeypatch.setenv(DISABLE_PLUGINS_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert things.names() == []
        assert "things_good2" not in sys.modules  # not even imported
    monkeypatch.setenv(DISABLE_PLUGINS_ENV, "0")
    things.reset_discovery()
    with pytest.warns(RuntimeWarning) as record:
        assert things.names() == ["good"]  # ppp-audit's own entry points are an old install's; never loaded
    assert [str(w.message).split(" from")[0] for w in record] == ["thing plugin 'raises'"]


def test_a_plugin_registering_with_the_decorator_keeps_its_metadata_and_names_its_distribution(install):
    import ppp_audit.registry

    things = Registry("thing", entry_point_group=GROUP, metadata={"per_scheme": True})
    ppp_audit.registry._test_things = things  # where the plugin module finds the registry
    install("ppp-audit-test-decorated", {"once": "things_decorated:run_once"}, things_decorated="""
        from ppp_audit.registry import _test_things

        @_test_things.register("once", per_scheme=False)
        def run_once():
            return 1
    """)
    try:
        entry = things.entry("once")
    finally:
        del ppp_audit.registry._test_things
    assert entry.distribution == "ppp-audit-test-decorated" and entry.metadata["per_scheme"] is False
    assert things.names() == ["once"]


@dataclass
class CountConfig:
    repeats: int = 1


def test_a_baseline_registered_at_run_time_is_run_by_run_baselines():
    from ppp_audit.metrics import baselines
    from ppp_audit.metrics.baselines import (
        BASELINE_RUNNERS,
        BaselineInputs,
        num_steps,
        parse_baseline_options,
        register_baseline,
        run_baselines,
        validate_baselines,
    )

    calls = []
    applied = []

    @contextlib.contextmanager
    def scheme(label):
        applied.append(label)
        yield

    @register_baseline("count_test", config=CountConfig)
    def count(inputs, config, label):
        with inputs.scheme(label):
            calls.append(("count_test", label, config.repeats))
        return {"label": label, "repeats": config.repeats}

    @register_baseline(per_scheme=False)
    def once_test(inputs, config, label):
        calls.append(("once_test", label, config))
        return {"ran": True}

    try:
        assert baselines.BASELINES[-2:] == ("count_test", "once_test")
        options = parse_baseline_options(["count_test.repeats=4"])
        assert validate_baselines(["once_test", "count_test"], options) == ["once_test", "count_test"]
        with pytest.raises(PPPAuditError, match="baseline 'once_test' takes no options"):
            parse_baseline_options(["once_test.repeats=2"])
        inputs = BaselineInputs(model=None, extract=None, images=None, normalize=None, input_size=8, max_stride=1,
                                device=None, schemes=("native", "reflect"), scheme=scheme)
        steps = []
        results = run_baselines(["count_test", "once_test"], options, inputs, on_step=steps.append)
        assert num_steps(["count_test", "once_test", "uneven"], 2) == 4
    finally:
        BASELINE_RUNNERS.pop("count_test")
        BASELINE_RUNNERS.pop("once_test")
    assert results == {"count_test": {"native": {"label": "native", "repeats": 4},
                                      "reflect": {"label": "reflect", "repeats": 4}},
                       "once_test": {"ran": True}}
    assert calls == [("count_test", "native", 4), ("count_test", "reflect", 4), ("once_test", None, None)]
    assert applied == ["native", "reflect"]
    assert steps == ["count_test/native", "count_test/reflect", "once_test"]
    assert "count_test" not in baselines.BASELINES and num_steps(["uneven", "posenet"], 3) == 4
