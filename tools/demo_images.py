#!/usr/bin/env python
"""Detect pedestrians on images, folders and videos (as Detectron2's demo/demo.py; = ``hkd-detect``).

    python tools/demo_images.py --config-file student/student.yaml --input 'photos/*.jpg' --output out/
"""
import hkd_d2  # noqa: F401  (registers datasets, models, evaluators)
from hkd_d2.tools.detect import main

if __name__ == "__main__":
    main()
