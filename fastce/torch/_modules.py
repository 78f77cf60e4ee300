"""``torch.nn`` loss modules computed by fastce: subclasses of their torch namesakes.

Each takes its namesake's constructor arguments (so ``state_dict``, buffers, ``repr`` and
``isinstance`` checks carry over), plus fastce's extensions as keywords, and replaces only
``forward``.
"""
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _functional as F

__all__ = ["CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "LinearCrossEntropyLoss"]


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` computed by :func:`fastce.torch.cross_entropy`.

    Parameters
    ----------
    weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As torch's.
    z_loss, softcap, logit_scale, n_threads
        fastce's extensions (see :func:`fastce.torch.cross_entropy`).

    ``forward(input, target, *, num_items=None, return_lse=False)``: ``num_items`` is the
    per-batch 'mean' divisor for gradient accumulation.
    """

    def __init__(self, weight: Optional[Tensor] = None, size_average: Optional[bool] = None,
                 ignore_index: int = -100, reduce: Optional[bool] = None, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, z_loss: float = 0.0,
                 softcap: Optional[float] = None, logit_scale: float = 1.0,
                 n_threads: Optional[int] = None) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.z_loss, self.softcap, self.logit_scale, self.n_threads = z_loss, softcap, logit_scale, n_threads

    def forward(self, input: Tensor, target: Tensor, *, num_items: Optional[float] = None,
                return_lse: bool = False) -> Any:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing,
                               z_loss=self.z_loss, softcap=self.softcap, logit_scale=self.logit_scale,
                               num_items=num_items, return_lse=return_lse, n_threads=self.n_threads)


class NLLLoss(torch.nn.NLLLoss):
    """``torch.nn.NLLLoss`` computed by :func:`fastce.torch.nll_loss` (same arguments)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """``torch.nn.BCEWithLogitsLoss`` computed by :func:`fastce.torch.binary_cross_entropy_with_logits`.

    Parameters
    ----------
    weight, size_average, reduce, reduction, pos_weight
        As torch's.
    n_threads : int, optional
        fastce's threads; default ``torch.get_num_threads()``.
    """

    def __init__(self, weight: Optional[Tensor] = None, size_average: Optional[bool] = None,
                 reduce: Optional[bool] = None, reduction: str = "mean",
                 pos_weight: Optional[Tensor] = None, *, n_threads: Optional[int] = None) -> None:
        super().__init__(weight, size_average, reduce, reduction, pos_weight)
        self.n_threads = n_threads

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight, reduction=self.reduction,
                                                  pos_weight=self.pos_weight, n_threads=self.n_threads)


class LinearCrossEntropyLoss(torch.nn.LinearCrossEntropyLoss):
    """``torch.nn.LinearCrossEntropyLoss`` computed by :func:`fastce.torch.linear_cross_entropy`.

    Owns its linear layer (``self.linear``, ``in_features -> num_classes``) like torch's.
    ``out_features`` (K-dimensional outputs) must stay ``()``; ``options`` is accepted and
    ignored (fastce chunks by ``chunk_size`` or a 64 MiB budget).

    Parameters
    ----------
    in_features, num_classes, out_features, bias, device, dtype, reduction, weight,
    ignore_index, label_smoothing, options
        As torch's.
    z_loss, softcap, logit_scale, chunk_size, n_threads
        fastce's extensions (see :func:`fastce.torch.linear_cross_entropy`).
    """

    def __init__(self, in_features: int, num_classes: int, *, out_features: Sequence[int] = (),
                 bias: bool = False, device: Union[torch.device, str, None] = None,
                 dtype: Optional[torch.dtype] = None, reduction: str = "mean",
                 weight: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                 label_smoothing: float = 0.0, options: Any = None, z_loss: float = 0.0,
                 softcap: Optional[float] = None, logit_scale: float = 1.0,
                 chunk_size: Optional[int] = None, n_threads: Optional[int] = None) -> None:
        if tuple(out_features) != ():
            raise NotImplementedError("fastce.torch.LinearCrossEntropyLoss: out_features must be (); "
                                      "K-dimensional outputs are not supported")
        super().__init__(in_features, num_classes, out_features=(), bias=bias, device=device,
                         dtype=dtype, reduction=reduction, weight=weight, ignore_index=ignore_index,
                         label_smoothing=label_smoothing, options=options)
        self.z_loss, self.softcap, self.logit_scale = z_loss, softcap, logit_scale
        self.chunk_size, self.n_threads = chunk_size, n_threads

    def forward(self, input: Tensor, target: Tensor, *, num_items: Optional[float] = None,
                return_lse: bool = False) -> Any:
        return F.linear_cross_entropy(input, self.linear.weight, target, self.linear.bias,
                                      weight=self.weight, reduction=self.reduction,
                                      ignore_index=self.ignore_index,
                                      label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                                      softcap=self.softcap, logit_scale=self.logit_scale,
                                      num_items=num_items, return_lse=return_lse,
                                      chunk_size=self.chunk_size, n_threads=self.n_threads)
