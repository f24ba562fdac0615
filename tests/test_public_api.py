"""Every public module promises its ``__all__``: each name there must exist."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import cfwf_async


def _public_modules() -> list[str]:
    names = ["cfwf_async"]
    for info in pkgutil.walk_packages(cfwf_async.__path__, "cfwf_async."):
        parts = info.name.split(".")
        if any(part.startswith("_") for part in parts):
            continue
        names.append(info.name)
    return names


PUBLIC_MODULES = _public_modules()


def test_the_public_modules_are_found() -> None:
    # A walk that found nothing would make the tests below pass vacuously.
    assert {"cfwf_async", "cfwf_async.session", "cfwf_async.models"} <= set(PUBLIC_MODULES)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if name.endswith("pytest_plugin") and exported is None:
        pytest.skip("a pytest plugin module exports fixtures, not names")
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_the_package_exports_every_public_name_of_its_core_modules() -> None:
    for name in ("cfwf_async.models", "cfwf_async.errors"):
        module = importlib.import_module(name)
        for exported in module.__all__:
            if exported in {"Envelope", "ResultInfo"}:  # wire wrappers, not user values
                continue
            assert hasattr(cfwf_async, exported), f"cfwf_async does not export {exported}"
