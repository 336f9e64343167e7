"""`python -m lowrank_lab.teachers prepare|targets …` (see teachers.cli)."""

import sys

from lowrank_lab.teachers.cli import main

sys.exit(main())
