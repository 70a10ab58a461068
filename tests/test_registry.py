"""The one registry class: decorator, create, option checking, names and the unknown-name error
every family (encoders, fusion methods, decoders, heads, schedules, executors) shares."""

from __future__ import annotations

import sys
import types

import pytest

from mmlab.core.registry import Registry, RegistryError


def fresh() -> Registry:
    reg = Registry("widget")

    @reg.register("plain")
    def plain(size: int = 1, *, colour: str = "red"):
        return ("plain", size, colour)

    @reg.register("a", "b")
    def named(name: str, size: int = 1):
        return (name, size)

    @reg.register()
    def loose(*args, **options):
        return (args, options)

    return reg


def test_decorator_registers_under_names_or_the_factory_name():
    reg = fresh()
    assert reg.names() == ["a", "b", "loose", "plain"]
    assert "plain" in reg and "nope" not in reg
    assert reg.get("plain")() == ("plain", 1, "red")


def test_create_passes_args_options_and_the_name_asked_for():
    reg = fresh()
    assert reg.create("plain", 3, colour="blue") == ("plain", 3, "blue")
    assert reg.create("b", size=2) == ("b", 2)
    assert reg.create("loose", 1, anything=2) == ((1,), {"anything": 2})


def test_an_unknown_option_is_rejected_by_name():
    reg = fresh()
    with pytest.raises(RegistryError, match="widget 'plain' takes no option 'shape'; its options"):
        reg.create("plain", shape="round")
    assert reg.options("plain") == ["size", "colour"]
    assert reg.options("a") == ["size"]  # `name` is the registry's, not an option
    assert reg.options("loose") is None  # takes any


def test_an_unknown_name_lists_the_valid_ones():
    reg = fresh()
    with pytest.raises(RegistryError) as caught:
        reg.create("nope")
    assert str(caught.value) == "unknown widget 'nope'; valid names: a, b, loose, plain"
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)


def test_registering_another_factory_under_a_taken_name_fails():
    reg = fresh()
    with pytest.raises(ValueError, match="widget 'plain' is registered twice"):
        reg.register("plain")(lambda: None)


def test_a_custom_error_type_is_raised():
    class Mine(RegistryError):
        pass

    reg = Registry("gadget", error=Mine)
    with pytest.raises(Mine, match="unknown gadget 'x'; valid names: $"):
        reg.get("x")


def test_member_modules_are_imported_on_first_lookup_and_retried_after_a_failure(monkeypatch):
    reg = Registry("gizmo", modules=["_mmlab_test_gizmos"])
    with pytest.raises(ModuleNotFoundError):
        reg.names()
    module = types.ModuleType("_mmlab_test_gizmos")
    monkeypatch.setitem(sys.modules, "_mmlab_test_gizmos", module)
    reg.register("spring")(lambda: "boing")  # what importing the module would do
    assert reg.names() == ["spring"]


def test_every_family_reads_the_same_for_an_unknown_name():
    from mmlab import captioning, features, fusion
    from mmlab.batch import executors
    from mmlab.retrieval import heads
    from mmlab.train.optim import check_schedule

    cases = [
        (lambda: features.create("text", "x"), "unknown text encoder 'x'; valid names: "),
        (lambda: features.create("smell", "x"), "unknown modality 'smell'; valid names: "),
        (lambda: fusion.create("x", {"image": 4}), "unknown fusion method 'x'; valid names: "),
        (lambda: captioning.create_decoder("x"), "unknown caption decoder 'x'; valid names: "),
        (lambda: heads.create("x", (4,), 2), "unknown retrieval head 'x'; valid names: "),
        (lambda: check_schedule("x"), "unknown schedule 'x'; valid names: "),
        (lambda: executors.create("x", 1), "unknown executor 'x'; valid names: "),
    ]
    for call, start in cases:
        with pytest.raises((RegistryError, executors.ExecutorError)) as caught:
            call()
        assert str(caught.value).startswith(start), str(caught.value)
