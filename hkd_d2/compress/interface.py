"""The stage interface: fixed linear 1x1 maps between the teacher's stage outputs and the
student's narrower ones.

Teacher stage ``k`` (res2..res5) writes ``T_k`` channels, the student's ``S_k <= T_k``. The
student's stage ``k`` is trained to output the code ``E_k x_k``: the projection of the teacher's
output ``x_k`` onto its ``S_k`` leading principal directions ``P_k`` (eigenvectors of the
uncentred second moment ``E[x x^T]`` over pixels, the best rank-``S_k`` linear reconstruction of
``x_k``), divided by the codes' RMS ``sigma_k`` so every stage learns targets of unit scale:
``E_k = P_k / sigma_k``. Stage ``k + 1`` reads that same code. Decoding is ``D_k = sigma_k P_k^T``
(``D_k E_k x = P_k^T P_k x``) and bias-free, so a teacher 1x1 conv ``W`` reading ``x_k`` (an
FPN lateral) becomes ``W D_k`` reading the code, exactly. The stem's output is read as it is:
the student's stem is the teacher's.
"""
from typing import Iterable, List, Sequence

import torch

__all__ = ["StageInterface", "fit_interface", "second_moment"]


def second_moment(x: torch.Tensor) -> torch.Tensor:
    """Sum over pixels of ``x x^T``: (N, T, H, W) -> (T, T), float64."""
    flat = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()
    return flat @ flat.T


class StageInterface:
    """Encoders ``E_k`` (S_k, T_k) and decoders ``D_k`` (T_k, S_k) of the stem output (identity)
    and of res2..res5."""

    def __init__(self, encoders: Sequence[torch.Tensor], decoders: Sequence[torch.Tensor]):
        self.encoders = [e.float() for e in encoders]
        self.decoders = [d.float() for d in decoders]

    @property
    def channels(self) -> List[int]:
        """``[C_stem, S_2, ..., S_5]``."""
        return [int(e.shape[0]) for e in self.encoders]

    def encode(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Teacher maps ``[stem, res2..res5]`` (N, T_k, H, W) -> codes (N, S_k, H, W)."""
        return [torch.einsum("st,nthw->nshw", e.to(x), x) for e, x in zip(self.encoders, features)]

    def decode(self, codes: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Codes (N, S_k, H, W) -> their reconstruction in the teacher's channels (N, T_k, H, W)."""
        return [torch.einsum("ts,nshw->nthw", d.to(c), c) for d, c in zip(self.decoders, codes)]

    def decode_conv(self, weight: torch.Tensor, index: int) -> torch.Tensor:
        """A 1x1 conv weight (C, T_k, 1, 1) reading teacher maps -> (C, S_k, 1, 1) reading codes."""
        return torch.einsum("ct,ts->cs", weight[:, :, 0, 0], self.decoders[index].to(weight))[:, :, None, None]


def fit_interface(batches: Iterable[Sequence[torch.Tensor]], channels: Sequence[int]) -> StageInterface:
    """Fit the encoders and decoders on teacher maps.

    Args:
        batches: per batch, the teacher's ``[stem, res2..res5]`` maps (N, T_k, H, W).
        channels: the student's ``[S_2, ..., S_5]``; each at most the teacher's ``T_k``.
    """
    moments, pixels, stem = None, None, 0
    for features in batches:
        batch = [second_moment(x) for x in features[1:]]
        counts = [x.shape[0] * x.shape[2] * x.shape[3] for x in features[1:]]
        moments = batch if moments is None else [m + b for m, b in zip(moments, batch)]
        pixels = counts if pixels is None else [p + c for p, c in zip(pixels, counts)]
        stem = features[0].shape[1]
    if moments is None:
        raise ValueError("fit_interface needs at least one batch of teacher maps")
    encoders, decoders = [torch.eye(stem, dtype=torch.float64)], [torch.eye(stem, dtype=torch.float64)]
    for index, (moment, count, s) in enumerate(zip(moments, pixels, channels)):
        t = moment.shape[0]
        if not 1 <= s <= t:
            raise ValueError(f"Interface res{index + 2} of {s} channels: the teacher writes {t}; choose 1..{t} "
                             "(--interface-channels)")
        _, vectors = torch.linalg.eigh(moment)  # ascending eigenvalues
        p = torch.eye(t, dtype=torch.float64) if s == t else vectors[:, -s:].flip(1).T.contiguous()
        # RMS of the codes over pixels and channels (a floor keeps an all-zero map finite).
        sigma = max(float(torch.trace(p @ moment @ p.T)) / (count * s), 1e-12) ** 0.5
        encoders.append(p / sigma)
        decoders.append(p.T * sigma)
    return StageInterface(encoders, decoders)
