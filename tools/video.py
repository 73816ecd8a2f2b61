#!/usr/bin/env python
"""Run a detector on a video file and write the annotated video plus its frames per second.

    python tools/video.py --config-file X.yaml --weights W.pth --input vtest.avi --output out.mp4 \
        [--max-frames N]
"""
import hkd_d2  # noqa: F401  (registers datasets, models, evaluators)
from hkd_d2.tools.video import main

if __name__ == "__main__":
    main()
