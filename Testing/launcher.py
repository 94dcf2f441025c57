"""A stand-in for Slicer's ``PythonSlicer``: a launcher that starts the real Python as its own child.

Like the CTK application launcher, it does not forward signals: SIGTERM ends the launcher (the
default action) and leaves its child running. It exits with its child's exit code.
"""

from __future__ import annotations

import subprocess
import sys

if __name__ == "__main__":
    sys.exit(subprocess.Popen(sys.argv[1:]).wait())
