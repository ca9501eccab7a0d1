"""Errors: built-in bases, one-line text, fields that survive pickling (DataLoader workers), one offline rule."""

from __future__ import annotations

import pickle

import pytest

from ppp_audit import errors
from ppp_audit.errors import (
    ConfigError,
    FeatureError,
    HubPushError,
    GeometryError,
    ImageFolderNotFoundError,
    ImageSourceError,
    NothingToPatchError,
    PaddingShapeError,
    PPPAuditError,
    ReportFileError,
    UnknownModelError,
    UnknownPaddingError,
    WeightsFileNotFoundError,
    WeightsUnavailableError,
)
from ppp_audit.hubenv import is_offline

BUILTIN_BASES = {
    ConfigError: ValueError,
    UnknownModelError: ValueError,
    UnknownPaddingError: ValueError,
    PaddingShapeError: ValueError,
    NothingToPatchError: ValueError,
    WeightsUnavailableError: OSError,
    WeightsFileNotFoundError: FileNotFoundError,
    ImageSourceError: OSError,
    ImageFolderNotFoundError: FileNotFoundError,
    ReportFileError: OSError,
    HubPushError: OSError,
    FeatureError: RuntimeError,
    GeometryError: ValueError,
}
ALL_ERRORS = [PPPAuditError, *BUILTIN_BASES]


def test_every_error_class_is_listed_here():
    defined = {obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, PPPAuditError)}
    assert defined == set(ALL_ERRORS)


@pytest.mark.parametrize("cls", list(BUILTIN_BASES), ids=lambda c: c.__name__)
def test_errors_are_caught_by_their_builtin_base(cls):
    with pytest.raises(BUILTIN_BASES[cls]):
        raise cls("it broke", "fix it")
    assert issubclass(cls, PPPAuditError)


def test_missing_files_are_also_their_parent_kind():
    assert issubclass(WeightsFileNotFoundError, WeightsUnavailableError)
    assert issubclass(ImageFolderNotFoundError, ImageSourceError)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_text_fields_and_args(cls):
    error = cls("it broke", "fix it")
    assert (error.message, error.hint) == ("it broke", "fix it")
    assert str(error) == "it broke (fix it)" and error.args == ("it broke (fix it)",)
    bare = cls("it broke")
    assert str(bare) == "it broke" and bare.hint == "" and bare.args == ("it broke",)
    if issubclass(cls, OSError):  # two arguments must not turn into (errno, strerror)
        assert error.errno is None and error.strerror is None


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_pickling_keeps_class_and_fields(cls):
    error = cls("it broke", "fix it")
    error.extra = 3  # attributes set after construction travel too
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.message, copy.hint, str(copy), copy.args, copy.exit_code, copy.extra) == (
        "it broke", "fix it", "it broke (fix it)", ("it broke (fix it)",), error.exit_code, 3)


def test_padding_shape_error_takes_its_layer_in_the_constructor():
    error = PaddingShapeError("too small", "use a larger input", "layer1.0")
    assert error.layer == "layer1.0" and PaddingShapeError("too small").layer is None
    assert pickle.loads(pickle.dumps(error)).layer == "layer1.0"
    assert str(error) == "too small (use a larger input)"


def test_exit_codes_are_kept():
    assert {cls: cls.exit_code for cls in ALL_ERRORS if cls.exit_code != 2} == {FeatureError: 1, GeometryError: 1, HubPushError: 1}


@pytest.mark.parametrize(("hf_hub_offline", "transformers_offline", "offline"), [
    ("1", None, True), ("ON", None, True), ("yes", None, True), ("True", None, True), (" 1 ", None, False),
    ("0", None, False), ("false", None, False), ("no", None, False), ("", None, False), (None, None, False),
    (None, "1", True), (None, "TRUE", True), ("", "yes", True), (None, "0", False),
])
def test_offline_follows_huggingface_hubs_rule(monkeypatch, hf_hub_offline, transformers_offline, offline):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name, value in (("HF_HUB_OFFLINE", hf_hub_offline), ("TRANSFORMERS_OFFLINE", transformers_offline)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert is_offline() is offline
    assert constants._is_true(hf_hub_offline or transformers_offline) is offline  # the rule huggingface_hub applies


def test_offline_when_huggingface_hub_was_imported_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what is_offline_mode() reports
    assert is_offline()


def test_offline_module_is_torch_free():
    import subprocess
    import sys

    code = "import ppp_audit.hubenv as h, sys; h.is_offline(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
