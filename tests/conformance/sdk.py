"""Importing Huawei's SDK for the conformance tests: importing huaweicloudsdkcore writes
``$HOME/.huaweicloud/application_id``, so it is imported with HOME at a scratch directory."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

__all__ = ["import_sdk"]


def import_sdk(home: Path) -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """(credentials, http_config, exceptions, huaweicloudsdkworkspace.v2), imported with HOME at ``home``."""
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        return (
            importlib.import_module("huaweicloudsdkcore.auth.credentials"),
            importlib.import_module("huaweicloudsdkcore.http.http_config"),
            importlib.import_module("huaweicloudsdkcore.exceptions.exceptions"),
            importlib.import_module("huaweicloudsdkworkspace.v2"),
        )
    finally:
        if saved is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = saved
