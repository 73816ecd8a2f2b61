"""Generated street scenes with pedestrians, written in the real CityPersons, Caltech, CrowdHuman
and EuroCity Persons formats.

No pedestrian data set can be downloaded where this project is developed, so the data
pipeline is exercised on scenes drawn with OpenCV: articulated walking figures (head,
torso, arms, legs; clothing colours and stripes), Caltech-like heights (log-normal, many
30-80 px at 480 px image height, a few up to ~300 px), the 0.41 width/height box aspect,
occluders (cars/fences from below, walls from the side) with visible boxes, groups,
riders, sitting people, posters of people, far-away crowds as ignore regions, and clutter
that looks like people to a detector (poles, trees, bins, signs).

Output tree (``--format all``; ``both`` = CityPersons + Caltech)::

    <out>/citypersons/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
    <out>/citypersons/annotations/anno_{train,val}.mat
    <out>/citypersons/ground_truth_{train,val}.json   (file names relative to leftImg8bit/<split>)
    <out>/caltech/setXX/VYYY.seq, <out>/caltech/annotations/setXX/VYYY.vbb
    <out>/caltech/ground_truth_{train,test}.json      (file names as prepare_caltech extracts them)
    <out>/crowdhuman/Images/<split>_<n>.jpg, <out>/crowdhuman/annotation_{train,val}.odgt
    <out>/ecp/day/{img,labels}/{train,val}/<city>/<city>_<n>.{png,json}

Every image is drawn from its own generator seeded by (seed, split, index): the output
depends only on the arguments, not on the number of worker processes. Box coordinates are
integers, so every format stores them exactly.

Modules: :mod:`.drawing` (OpenCV drawing), :mod:`.layout` (scene layout, one planner per object
kind), :mod:`.writing` (the formats, :func:`generate_synthetic` and the command line
``python -m hkd_d2.data.synthetic --out DIR --num-train N --num-val M``).
"""
from .drawing import PERSON_ASPECT, draw_figure
from .layout import PLANNERS, SceneObject, SyntheticConfig, render_scene
from .writing import FORMATS, KIND_LABELS, generate_synthetic, main

__all__ = [
    "FORMATS",
    "KIND_LABELS",
    "PERSON_ASPECT",
    "PLANNERS",
    "SceneObject",
    "SyntheticConfig",
    "draw_figure",
    "generate_synthetic",
    "main",
    "render_scene",
]
