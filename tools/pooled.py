#!/usr/bin/env python
"""Paired verdicts of several numeric environments (demo report.json / ablation table json), each and pooled.

    python tools/pooled.py machineA/report.json machineB/report.json [--out pooled]
"""
from hkd_d2.tools.pooled import main

if __name__ == "__main__":
    main()
