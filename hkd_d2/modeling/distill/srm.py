"""SRM: Tran, Gabbouj, Iosifidis 2021, "Knowledge Distillation by Sparse Representation Matching"
(arXiv 2103.17012).

Each pixel of a teacher FPN map, ``x`` (C_t channels), is coded on a dictionary ``D`` (C_t, K) of
``K = CODEWORD_MULTIPLIER * C_t`` codewords with one scalar bias ``b``:

    s = sigmoid(D^T x + b),   s_sparse = s * [s >= k-th largest entry of s],   x_hat = D s_sparse,

``k = max(1, int(K * SPARSITY))`` (entries equal to the k-th largest are all kept).

* **Stage 1** learns ``D, b`` on the frozen teacher by ``mean((x - x_hat)^2)`` (Adam, no weight decay),
  summed over levels: :func:`learn_dictionaries`, run before training by :class:`SRMDictionaryHook`
  for ``DICTIONARY_ITERS`` iterations, or by ``python -m hkd_d2.tools.srm_dictionary`` into a file
  that ``DICTIONARY_FILE`` names.
* **Stage 2** (the term's loss): the student has its own dictionary ``D_s`` (C_s, K) and bias
  ``b_s``; the teacher's sparse codes give pixel labels ``y = argmax s_sparse`` and image labels
  ``g = mean over pixels of s_sparse`` (N, K), and per level

      L = CE(student codes, y)                          (mean over pixels)
        + BCE(mean over pixels of sigmoid(D_s^T x_s + b_s), g)   (mean over N*K),

  summed over levels (the distiller multiplies it by ``WEIGHT``). The reference applies its cross-entropy to the
  student's *sigmoid outputs* as if they were logits; that is the default here too, and
  ``CE_ON_LOGITS`` uses the pre-sigmoid ``D_s^T x_s + b_s`` instead.

Reference: the authors' code (viebboy/SRM, ``cifar100/code``: ``SparseRep``, ``GlobalLocalLabel``,
``GlobalLocalPred``, ``Utility.py``). Matches: the sigmoid coding with one scalar bias, the top-k
mask keeping ties, the MSE reconstruction of stage 1 with Adam 1e-3 and no weight decay, the
pixel labels as the argmax of the sparse codes, the image labels as their spatial mean, CE on
sigmoid outputs plus BCE, summed over levels, the Kaiming-uniform dictionary and U(-1, 1) bias
initialisations. Differs on purpose: the coded maps are FPN levels (P3-P6 by default, P2 costs
four times P3 in codes) rather than three classification-network stages; stage 1 runs for a fixed
number of iterations (or comes from a file) instead of epochs with a best-loss choice; stage 2 is a
loss added to the detector's during the whole training rather than a separate initialisation of
the student followed by KD; the codeword multiplier defaults to 4 (the reference's grid is
1.5-3).
"""
import logging
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.utils import comm

from ...atomic import atomic_output
from .base import DISTILL_TERM_REGISTRY, DistillContext, DistillTerm, Shapes, unwrap_ddp
from .common import check_levels

__all__ = [
    "SRMDistill",
    "SRMDictionaryHook",
    "SparseCoder",
    "TeacherCodebook",
    "code_logits",
    "keep_top_k",
    "sparse_codes",
    "reconstruct",
    "reconstruction_loss",
    "code_targets",
    "code_matching_losses",
    "learn_dictionaries",
    "save_dictionaries",
    "load_dictionaries",
]

logger = logging.getLogger(__name__)

# Marks a dictionary file written by save_dictionaries.
DICTIONARY_FORMAT = "hkd_d2.srm_dictionary.v1"


def code_logits(x: torch.Tensor, dictionary: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) maps, a (C, K) dictionary and a (1,) bias -> (N, K, H, W) pre-sigmoid codes ``D^T x + b``."""
    return torch.einsum("nchw,ck->nkhw", x, dictionary) + bias


class SparseCoder(nn.Module):
    """A dictionary ``D`` (C, K) and one scalar bias ``b``: the codes of a map are
    ``sigmoid(D^T x + b)`` per pixel. Trainable (a student's) or buffers (the teacher's, learnt
    only in stage 1)."""

    def __init__(self, channels: int, num_codewords: int, trainable: bool):
        super().__init__()
        dictionary = torch.empty(channels, num_codewords)
        nn.init.kaiming_uniform_(dictionary)
        bias = torch.empty(1).uniform_(-1.0, 1.0)
        if trainable:
            self.dictionary = nn.Parameter(dictionary)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("dictionary", dictionary)
            self.register_buffer("bias", bias)

    @property
    def num_codewords(self) -> int:
        return self.dictionary.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) maps -> (N, K, H, W) pre-sigmoid codes ``D^T x + b``."""
        return code_logits(x, self.dictionary, self.bias)


def keep_top_k(codes: torch.Tensor, k: int) -> torch.Tensor:
    """Zero every entry of ``codes`` (N, K, H, W) below the k-th largest of its pixel (dim 1);
    entries equal to it are all kept."""
    kth = codes.topk(k, dim=1).values[:, -1:]
    return codes * (codes >= kth).to(codes.dtype)


def sparse_codes(coder: SparseCoder, x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, K, H, W) sparse codes of maps ``x`` (N, C, H, W): the k largest sigmoid codes of each pixel."""
    return keep_top_k(torch.sigmoid(coder(x)), k)


def reconstruct(codes: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """``D s``: (N, K, H, W) codes and a (C, K) dictionary -> (N, C, H, W) maps."""
    return torch.einsum("nkhw,ck->nchw", codes, dictionary)


def reconstruction_loss(coder: SparseCoder, x: torch.Tensor, k: int) -> torch.Tensor:
    """Stage 1: ``mean((x - D s_sparse)^2)`` over all elements of ``x`` (N, C, H, W)."""
    return F.mse_loss(reconstruct(sparse_codes(coder, x, k), coder.dictionary), x)


def code_targets(sparse: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The teacher's labels from its sparse codes (N, K, H, W): pixel labels (N, H, W) int64
    (argmax over codewords) and image labels (N, K) (mean over pixels)."""
    return sparse.argmax(dim=1), sparse.mean(dim=(2, 3))


def code_matching_losses(
    student_codes: torch.Tensor,
    pixel_labels: torch.Tensor,
    image_labels: torch.Tensor,
    ce_on_logits: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stage 2 on one level.

    Args:
        student_codes: (N, K, H, W) pre-sigmoid codes ``D_s^T x_s + b_s``.
        pixel_labels: (N, H, W) int64, the teacher's codeword per pixel.
        image_labels: (N, K) in [0, 1], the teacher's mean sparse code per image.
        ce_on_logits: cross-entropy on the pre-sigmoid codes; False (the reference) applies it to
            the sigmoid outputs.
    Returns:
        the pixel cross-entropy (mean over N*H*W) and the image binary cross-entropy (mean over N*K).
    """
    probabilities = torch.sigmoid(student_codes)
    ce = F.cross_entropy(student_codes if ce_on_logits else probabilities, pixel_labels)
    # BCE is unsafe under autocast: computed in float32.
    with torch.autocast(device_type=student_codes.device.type, enabled=False):
        bce = F.binary_cross_entropy(probabilities.float().mean(dim=(2, 3)), image_labels.float())
    return ce, bce


def _sparsity(num_codewords: int, ratio: float) -> int:
    """k: codes kept per pixel (at least 1)."""
    return max(1, int(num_codewords * ratio))


class TeacherCodebook(nn.Module):
    """The teacher's dictionary of each level (buffers) and ``k``; ``ready`` says whether stage 1
    ran (it is checkpointed with the term, so a resumed training skips it)."""

    def __init__(self, teacher_shapes: Shapes, levels: List[str], multiplier: float, sparsity: float):
        super().__init__()
        self.coders = nn.ModuleDict(
            {f: SparseCoder(teacher_shapes[f].channels, int(multiplier * teacher_shapes[f].channels), False)
             for f in levels}
        )
        self.k = {f: _sparsity(c.num_codewords, sparsity) for f, c in self.coders.items()}
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_config(cls, cfg: CfgNode, teacher_shapes: Shapes) -> "TeacherCodebook":
        c = cfg.MODEL.DISTILL.SRM
        missing = [f for f in c.IN_FEATURES if f not in teacher_shapes]
        if missing:
            raise ValueError(
                f"MODEL.DISTILL.SRM.IN_FEATURES: {missing} not outputs of the teacher {sorted(teacher_shapes)}"
            )
        return cls(teacher_shapes, list(c.IN_FEATURES), c.CODEWORD_MULTIPLIER, c.SPARSITY)

    def sparse_codes(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Level -> (N, K, H, W) sparse codes of the teacher's maps."""
        return {f: sparse_codes(coder, features[f], self.k[f]) for f, coder in self.coders.items()}


def learn_dictionaries(
    teacher_features: Iterator[Dict[str, torch.Tensor]],
    codebook: TeacherCodebook,
    iters: int,
    lr: float = 1e-3,
) -> List[float]:
    """Stage 1: ``iters`` Adam steps (no weight decay) on the summed per-level reconstruction MSE.

    Args:
        teacher_features: yields the teacher's maps of one batch, level -> (N, C, H, W).
        codebook: its dictionaries and biases are replaced by the learnt ones; ``ready`` is set.
    Returns:
        the loss of every step. With several processes the gradients are averaged over them, so
        every process keeps the same dictionaries.
    """
    trainable = nn.ModuleDict()
    for f, coder in codebook.coders.items():
        trainable[f] = SparseCoder(*coder.dictionary.shape, trainable=True).to(coder.dictionary.device)
        trainable[f].load_state_dict(coder.state_dict())
    optimizer = torch.optim.Adam(trainable.parameters(), lr=lr, weight_decay=0.0)
    world = comm.get_world_size()
    losses = []
    for _, features in zip(range(iters), teacher_features):
        loss = sum(reconstruction_loss(coder, features[f], codebook.k[f]) for f, coder in trainable.items())
        optimizer.zero_grad()
        loss.backward()
        if world > 1:
            for p in trainable.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
        optimizer.step()
        losses.append(loss.item())
    for f, coder in trainable.items():
        codebook.coders[f].load_state_dict(coder.state_dict())
    with torch.no_grad():
        codebook.ready.fill_(True)
    return losses


def save_dictionaries(codebook: TeacherCodebook, path: str, teacher_weights: str = "") -> None:
    """Write the codebook's dictionaries (a file ``DICTIONARY_FILE`` can name)."""
    levels = {f: {"dictionary": c.dictionary.detach().cpu(), "bias": c.bias.detach().cpu()}
              for f, c in codebook.coders.items()}
    with atomic_output(path) as tmp:
        torch.save({"format": DICTIONARY_FORMAT, "teacher_weights": teacher_weights, "levels": levels}, tmp)


def load_dictionaries(codebook: TeacherCodebook, path: str) -> None:
    """Load a file of :func:`save_dictionaries` into ``codebook`` (and set ``ready``); a missing,
    foreign or mismatching file is a ValueError / FileNotFoundError naming it and the level."""
    what = f"MODEL.DISTILL.SRM.DICTIONARY_FILE '{path}'"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found") from None
    except Exception as e:  # unreadable, truncated, not a torch file
        raise ValueError(f"{what} cannot be read: {e}") from e
    if not isinstance(data, dict) or data.get("format") != DICTIONARY_FORMAT:
        raise ValueError(f"{what} is not an SRM dictionary file (python -m hkd_d2.tools.srm_dictionary writes them)")
    with torch.no_grad():
        for f, coder in codebook.coders.items():
            level = data["levels"].get(f)
            if level is None:
                raise ValueError(f"{what} has no dictionary of level {f} (it has {sorted(data['levels'])})")
            if level["dictionary"].shape != coder.dictionary.shape:
                raise ValueError(
                    f"{what}, level {f}: dictionary {tuple(level['dictionary'].shape)}, the term needs "
                    f"{tuple(coder.dictionary.shape)} (teacher channels x CODEWORD_MULTIPLIER * channels)"
                )
            coder.dictionary.copy_(level["dictionary"])
            coder.bias.copy_(level["bias"])
        codebook.ready.fill_(True)


def teacher_feature_batches(cfg: CfgNode, teacher) -> Iterator[Dict[str, torch.Tensor]]:
    """The teacher's maps of training batches, as training augments them (this process's shard,
    ``SOLVER.IMS_PER_BATCH`` images over all processes, seeded by ``SEED``)."""
    dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    loader = build_detection_train_loader(
        dataset=dataset,
        mapper=DatasetMapper(cfg, True),
        sampler=TrainingSampler(len(dataset), seed=max(cfg.SEED, 0)),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    for batch in loader:
        yield teacher.features(batch)[1]


class SRMDictionaryHook(HookBase):
    """Stage 1 before training: loads ``DICTIONARY_FILE`` into every SRM term, or learns the
    teacher dictionaries for ``DICTIONARY_ITERS`` iterations; nothing when they are already learnt
    (a resumed training)."""

    def __init__(self, cfg: CfgNode):
        c = cfg.MODEL.DISTILL.SRM
        self.cfg = cfg.clone()
        self.file, self.iters, self.lr = c.DICTIONARY_FILE, c.DICTIONARY_ITERS, c.DICTIONARY_LR
        if not self.file and self.iters <= 0:
            raise ValueError(
                "SRMDistill needs teacher dictionaries: set MODEL.DISTILL.SRM.DICTIONARY_FILE or "
                "MODEL.DISTILL.SRM.DICTIONARY_ITERS > 0"
            )

    def before_train(self) -> None:
        model = unwrap_ddp(self.trainer.model)
        for term in model.distill_terms:
            if SRMDictionaryHook in type(term).hooks:
                self._prepare(term.codebook, model.teacher)

    def _prepare(self, codebook: TeacherCodebook, teacher) -> None:
        if bool(codebook.ready):
            logger.info("SRM: teacher dictionaries already learnt (resumed); stage 1 skipped")
        elif self.file:
            load_dictionaries(codebook, self.file)
            logger.info("SRM: teacher dictionaries loaded from %s", self.file)
        else:
            losses = learn_dictionaries(teacher_feature_batches(self.cfg, teacher), codebook, self.iters, self.lr)
            logger.info("SRM stage 1: %d iterations, reconstruction MSE %.4g -> %.4g",
                        len(losses), losses[0], losses[-1])


@DISTILL_TERM_REGISTRY.register()
class SRMDistill(DistillTerm):
    """Sparse representation matching on FPN levels (see the module docstring).

    Loss: ``loss_srm`` = sum over levels of (pixel CE + image BCE), times WEIGHT by the distiller;
    stats ``distill/srm_ce``, ``distill/srm_bce`` (sums over levels).
    """

    CONFIG_NODE = "MODEL.DISTILL.SRM"
    teacher_needs = frozenset({"features"})
    hooks = (SRMDictionaryHook,)

    class Defaults:
        # Weight of the sum over levels of the pixel-label CE and the image-label BCE.
        WEIGHT = 1.0
        # FPN levels coded (P2 is left out: its codes cost four times P3's).
        IN_FEATURES = ["p3", "p4", "p5", "p6"]
        # m: codewords per level K = int(m * teacher channels).
        CODEWORD_MULTIPLIER = 4.0
        # Fraction of the K codes kept per pixel, k = max(1, int(K * SPARSITY)) (reference: 0.02).
        SPARSITY = 0.02
        # Cross-entropy on the student's pre-sigmoid codes (False: on its sigmoid outputs, as the reference).
        CE_ON_LOGITS = False
        # Teacher dictionaries written by "python -m hkd_d2.tools.srm_dictionary" ("" = learn them before training).
        DICTIONARY_FILE = ""
        # Stage 1: Adam iterations learning the teacher dictionaries before training (when DICTIONARY_FILE is "").
        DICTIONARY_ITERS = 200
        # Stage 1: Adam learning rate (no weight decay).
        DICTIONARY_LR = 1e-3

    def __init__(self, cfg: CfgNode, student_shapes: Shapes, teacher_shapes: Shapes):
        super().__init__(cfg)
        c = cfg.MODEL.DISTILL.SRM
        self.in_features = list(c.IN_FEATURES)
        check_levels("MODEL.DISTILL.SRM.IN_FEATURES", self.in_features, student_shapes, teacher_shapes)
        self.ce_on_logits = c.CE_ON_LOGITS
        self.codebook = TeacherCodebook.from_config(cfg, teacher_shapes)
        self.student_coders = nn.ModuleDict(
            {f: SparseCoder(student_shapes[f].channels, self.codebook.coders[f].num_codewords, True)
             for f in self.in_features}
        )

    def losses(self, ctx: DistillContext) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            teacher = self.codebook.sparse_codes(ctx.teacher.features)
        ce_total, bce_total = 0.0, 0.0
        for f in self.in_features:
            pixel_labels, image_labels = code_targets(teacher[f])
            ce, bce = code_matching_losses(
                self.student_coders[f](ctx.student.features[f]), pixel_labels, image_labels, self.ce_on_logits
            )
            ce_total, bce_total = ce_total + ce, bce_total + bce
        ctx.stats["distill/srm_ce"] = ce_total.detach()
        ctx.stats["distill/srm_bce"] = bce_total.detach()
        return {"loss_srm": ce_total + bce_total}
