# -*- test-case-name: tests.test_typing -*-
"""Type checking is part of the test suite: ``mypy arvnode`` must be clean.

mypy reads its configuration (the zope plugin included) from the ``[mypy]``
section of setup.cfg, so the check runs from the repository root, exactly as
a developer typing ``mypy arvnode`` there would.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


class MypyTests(SynchronousTestCase):
    def test_arvnode_type_checks(self) -> None:
        """mypy reports no error in the arvnode package.

        The cache goes under this test's own temporary directory, so
        parallel runs and stale caches cannot hide or invent errors.
        """
        cache = Path(self.mktemp()).resolve()
        cache.mkdir(parents=True)
        done = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "setup.cfg"),
             "--cache-dir", str(cache), "arvnode"],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        self.assertEqual(
            done.returncode, 0,
            "mypy found type errors:\n" + done.stdout + done.stderr)
        self.assertIn("Success", done.stdout)
