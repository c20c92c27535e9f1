"""Only one testbed run per machine: a second one is refused with a clear message."""
import os

import pytest

from scenarios.testbed import Lock, TestbedFailure


def test_second_run_is_refused_while_the_first_holds_the_lock(tmp_path):
    path = tmp_path / "lock"
    with Lock(path):
        assert path.read_text() == str(os.getpid())
        with pytest.raises(TestbedFailure, match=f"another testbed run is in progress \\(pid {os.getpid()}\\)"):
            with Lock(path):
                pass
    with Lock(path):            # released on exit: the next run goes ahead
        pass
