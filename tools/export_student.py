#!/usr/bin/env python
"""Export the student of an HKD run as a plain Detectron2 detector (student.pth + student.yaml).

    python tools/export_student.py --config-file configs/synthetic/hkd_R50_to_R18.yaml \
        --weights output/synthetic/hkd_R50_to_R18/model_final.pth --output output/student_export
"""
import hkd_d2  # noqa: F401  (registers HKDDistiller, PedestrianROIHeads, PyRoIAlign)
from hkd_d2.tools.export_student import main

if __name__ == "__main__":
    main()
