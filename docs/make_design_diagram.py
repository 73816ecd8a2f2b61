"""Draw docs/design.png: one distillation training step and the extension points (docs/design.md).

    python docs/make_design_diagram.py [--out docs/design.png]
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

# Box colours by role.
STUDENT, TEACHER, DISTILL, ENGINE, DATA = "#dbe9f6", "#fde2cf", "#e2f0d9", "#ece2f4", "#f2f2f2"

# name -> (x, y, width, height, colour, text); coordinates in a 104 x 64 canvas.
BOXES = {
    "data": (2, 50, 18, 9, DATA, "Data loader\nPedestrianDatasetMapper\n(ignore regions kept)"),
    "student": (25, 42, 30, 17, STUDENT,
                "Student (GeneralizedRCNN)\nbackbone -> PedestrianRPN\n-> label_and_sample_proposals\n"
                "-> pool_and_predict -> box losses"),
    "teacher": (25, 17, 30, 15, TEACHER,
                "FrozenTeacher (no_grad, eval)\nown preprocess + backbone;\nRPN head on the student's anchors,\n"
                "box head on the student's RoIs"),
    "recorders": (2, 22, 18, 20, DISTILL,
                  "Recorders\nRECORDER_REGISTRY\n\"features\" \"rpn\" \"roi\"\n(hooks on the student,\n"
                  "teacher on the\nstudent's terms)"),
    "ctx": (60, 36, 17, 12, DISTILL, "DistillContext\nstudent, teacher:\nModelOutputs\n+ proposals, stats"),
    "terms": (60, 17, 17, 14, DISTILL, "Terms\nDISTILL_TERM_REGISTRY\nlosses(ctx) -> raw L\n(HKD, Chen 2017,\nFGFI, PKD, GKD)"),
    "schedule": (81, 17, 15, 14, DISTILL, "Distiller weighs:\nWEIGHT x factor x L\nDistillSchedule\n(warm-up, start,\nattenuation)"),
    "steplosses": (81, 38, 15, 16, DISTILL,
                   "StepLosses\n(last_losses)\ndetection,\ndistillation,\nraw, scales, stats"),
    "trainer": (60, 53, 17, 9, ENGINE, "SimpleTrainer\nsum -> backward\n-> optimizer step"),
    "hooks": (60, 1, 36, 12, ENGINE,
              "Hooks (engine/)\nDistillationHook: distill_iter before the step,\n"
              "distill/scale_<loss> + stats after it; RunawayDistillationGuard,\n"
              "LossBalanceHook (calibration), term hooks (PrototypeHook)"),
    "outside": (2, 1, 53, 12, DATA,
                "Outside the module tree: the teacher is no submodule of the Distiller,\n"
                "so it is not in state_dict(), the optimizer or the DDP wrapper;\n"
                "adapters live under distill_terms. (dropped at export)"),
}

# (from, to, label, where along the arrow the label sits, curvature)
ARROWS = [
    ("data", "student", "images, gt", 0.5, 0.0),
    ("data", "teacher", "same inputs", 0.7, 0.0),
    ("student", "recorders", "recorded", 0.35, 0.0),
    ("recorders", "teacher", "needs", 0.5, 0.0),
    ("student", "ctx", "student", 0.5, 0.0),
    ("teacher", "ctx", "teacher", 0.5, 0.0),
    ("ctx", "terms", "", 0.5, 0.0),
    ("terms", "schedule", "raw", 0.5, 0.0),
    ("schedule", "steplosses", "weighted", 0.5, 0.0),
    ("student", "trainer", "detection", 0.5, 0.0),
    ("steplosses", "trainer", "loss dict", 0.5, 0.0),
    ("steplosses", "hooks", "read", 0.5, -0.3),
    ("hooks", "schedule", "iteration", 0.5, 0.0),
]


def _anchor(box, towards):
    """The point of ``box``'s border nearest to the centre of ``towards``."""
    x, y, w, h = box[:4]
    tx, ty = towards[0] + towards[2] / 2, towards[1] + towards[3] / 2
    cx, cy = x + w / 2, y + h / 2
    dx, dy = tx - cx, ty - cy
    scale = min(w / 2 / abs(dx) if dx else float("inf"), h / 2 / abs(dy) if dy else float("inf"))
    return cx + dx * scale, cy + dy * scale


def draw(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(16, 10.5))
    ax.set_xlim(0, 104)
    ax.set_ylim(0, 64)
    ax.axis("off")
    for x, y, w, h, colour, text in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.3", fc=colour, ec="#555555"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9.5)
    for start, end, label, where, rad in ARROWS:
        a, b = BOXES[start], BOXES[end]
        p, q = _anchor(a, b), _anchor(b, a)
        if rad:  # a curved arrow leaves and enters on the right, around the boxes between
            p, q = (a[0] + a[2], a[1] + a[3] / 2), (b[0] + b[2], b[1] + b[3] / 2)
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=14, color="#333333", lw=1.2,
                                     connectionstyle=f"arc3,rad={rad}"))
        if label:
            x = p[0] + where * (q[0] - p[0]) + (3.0 if rad else 0.0)
            y = p[1] + where * (q[1] - p[1]) + 0.6
            ax.text(x, y, label, ha="center", fontsize=8.5, color="#333333", bbox={"fc": "white", "ec": "none", "pad": 0.5})
    ax.set_title("One distillation training step (hkd_d2.modeling.Distiller) and its extension points", fontsize=13)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("design.png")), help="PNG to write")
    draw(Path(parser.parse_args().out))


if __name__ == "__main__":
    main()
