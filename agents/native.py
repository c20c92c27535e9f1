"""The compiled helpers of the first-packet path (``agents/native.c``), if built.

``make setup`` compiles them to ``build/_chainlb_native<EXT_SUFFIX>``; ``native`` is that
module, or None where it is not built (or does not load), and every caller then runs the
same computation in Python (``agents.steering``). ``status`` says which, for the agents'
status and the benchmark's log.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sysconfig
from pathlib import Path

__all__ = ["native", "status", "PATH"]

NAME = "_chainlb_native"
PATH = Path(__file__).resolve().parent.parent / "build" / (
    NAME + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))


def _load():
    if not PATH.exists():
        return None, f"not built ({PATH} missing: make setup builds it)"
    try:
        loader = importlib.machinery.ExtensionFileLoader(NAME, str(PATH))
        spec = importlib.util.spec_from_file_location(NAME, PATH, loader=loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
    except (ImportError, OSError) as e:
        return None, f"not loaded ({PATH}: {e})"
    return mod, f"loaded ({PATH})"


native, status = _load()
