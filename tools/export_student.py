#!/usr/bin/env python
"""Export the student of an HKD run: plain Detectron2 (student.pth + student.yaml), TorchScript
(student.ts), ONNX (student.onnx; with --int8 also student.int8.onnx and its miss rate before/after).

    python tools/export_student.py --config-file configs/synthetic/hkd_R50_to_R18.yaml \
        --weights output/synthetic/hkd_R50_to_R18/model_final.pth --output student \
        --format pytorch torchscript onnx [--int8 --calib-images 32]
"""
import hkd_d2  # noqa: F401  (registers Distiller, PedestrianROIHeads, PyRoIAlign)
from hkd_d2.tools.export_student import main

if __name__ == "__main__":
    main()
