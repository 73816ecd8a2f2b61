#!/usr/bin/env python
"""Train or evaluate a pedestrian detector (teacher, student, or HKD-distilled student).

    python train_net.py --config-file configs/synthetic/hkd_R50_to_R18.yaml
    python train_net.py --config-file X.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python train_net.py --config-file X.yaml --resume SOLVER.MAX_ITER 600
    python train_net.py --config-file X.yaml --num-gpus 8
"""
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results

import hkd_d2  # noqa: F401  (registers datasets, models, poolers, evaluators)
from hkd_d2.checkpoint import HKDCheckpointer
from hkd_d2.engine import Trainer, setup_config


def main(args):
    cfg = setup_config(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        HKDCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
