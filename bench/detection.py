"""Detection and false-positive rates of the shipped rails, per source and stage: tuned-on sources apart from
held-out ones (AgentDojo's injection texts, PyRIT's jailbreak templates, bench/corpus/holdout_*, a benign set
harvested from files on this machine), a leave-one-source-out threshold, and another revision's rails side by
side. The code is in bench/detection/ (run.py); the report goes to bench/results/detection.md (+ .json) and the
harvested dev half's false positives to bench/results/detection_dev_fp.md.

    .venv/bin/python bench/detection.py --baseline a025851 [--now HEAD|worktree] [--show 5]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the `detection` package beside this file

from detection.run import main

if __name__ == "__main__":
    main()
