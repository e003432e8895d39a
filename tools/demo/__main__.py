"""`python -m tools.demo`: run the example workflow through a real ComfyUI (see run.py)."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
